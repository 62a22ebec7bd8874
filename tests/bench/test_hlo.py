"""The collective parser of unigrpo_jax/bench/hlo.py on hand-written HLO text."""

from unigrpo_jax.bench import hlo


def test_collectives_of_hlo_text():
    """Sizes from shapes (operands looked up by name), the larger side of each op, while bodies
    times their trip count, async -done halves not counted again."""
    hlo_text = '\n'.join([
        'HloModule m, entry_computation_layout={(f32[8]{0})->f32[64]{0}}',
        '%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {',
        '  %p = (s32[], f32[8]{0}) parameter(0)',
        '  %x = f32[8]{0} get-tuple-element(%p), index=1',
        '  %ag = f32[64]{0} all-gather(%x), channel_id=1, dimensions={0}',
        '  %y = bf16[16]{0} broadcast(%c), dimensions={}',
        '  %rs = bf16[2]{0} reduce-scatter(%y), channel_id=2, dimensions={0}',
        '  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %x)',
        '}',
        'ENTRY %main (a: f32[8]) -> f32[64] {',
        '  %a = f32[8]{0} parameter(0)',
        '  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, '
        'backend_config={"known_trip_count":{"n":"3"}}',
        '  %ars = f32[8]{0} all-reduce-start(%a), channel_id=3, to_apply=%add',
        '  %ard = f32[8]{0} all-reduce-done(%ars)',
        '  %cps = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%a)',
        '  %a2a = (f32[4]{0}, f32[4]{0}) all-to-all(%a, %a), channel_id=4',
        '  ROOT %r = f32[64]{0} all-gather(%a), channel_id=5, dimensions={0}',
        '}'])
    by_kind, ops = hlo.collectives(hlo_text)
    assert by_kind == {'all-reduce': 32, 'all-gather': 3 * 256 + 256, 'reduce-scatter': 3 * 32,
                       'all-to-all': 64, 'collective-permute': 32 + 8}
    assert ops == 3 * 2 + 4
