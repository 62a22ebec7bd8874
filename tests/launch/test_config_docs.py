"""docs/configuration.md is current, documents every config field, and comes from the sources."""

import os
import subprocess
import sys

import pytest

from unigrpo_jax import config_files
from unigrpo_jax import config_reference as ref


@pytest.fixture(scope='module')
def text():
    return ref.render()


def test_the_committed_reference_is_current(text):
    assert not ref.stale(ref.DOC, text), (
        'docs/configuration.md is stale: run python launch/config_docs.py')


def test_a_known_field_has_its_type_default_and_meaning(text):
    rl = ref.Sources.of(ref.RL)
    meaning = ref.meaning(rl, ('rollout', 'group_size'))
    assert meaning.source == 'configs/bagel_grpo.py' and 'chains per prompt' in meaning.text
    assert f'| `rollout.group_size` | int | `24` | {meaning.text} |' in text
    # the SFT config's own field wins over the RL config's of the same name
    sft = ref.Sources.of(ref.SFT)
    assert ref.meaning(sft, ('eval_prompts',)).source == 'configs/shapes_sft.py'
    assert ref.meaning(sft, ('optimizer', 'lr_gen')) == ref.meaning(rl, ('optimizer', 'lr_gen'))
    # a copy means what its original means; model.random's fields come from the dataclasses
    assert ref.meaning(rl, ('eval_reward', 'options', 'url')).text.startswith(
        'as `reward.options.url`: ')
    assert ref.meaning(sft, ('model', 'random', 'llm', 'hidden_size')).source == (
        'unigrpo_jax/model/config.py')


def test_every_leaf_of_every_variant_is_documented(text):
    for family in ref.FAMILIES:
        assert ref.undocumented(ref.Sources.of(family)) == {}
        for variant in family.variants:  # a row in the fields' tables or the variants' table
            for path, _, _ in ref.leaves(variant.load()):
                assert f'| `{ref.dotted(path)}` |' in text, (variant.name, path)


def test_every_config_file_belongs_to_a_family():
    files = {f for f in os.listdir(config_files.CONFIGS) if f.endswith('.py')}
    assert files == {f for family in ref.FAMILIES for f in family.files}


SOURCE = '''
def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0  # the seed
    # Two lines
    # above.
    config.opt = ml_collections.ConfigDict(dict(
        lr=1.0,  # the rate
        # a block above b1
        b1=0.9,
        b2=0.99,
        nested=dict(x=1),
    ))
    config.copy = config.opt.copy_and_resolve_references()
    config.opt.update(lr=2.0)  # why the variant changes it
    return config
'''


def test_comments_attach_to_the_field_they_describe():
    found = ref.config_definitions(SOURCE, 'x.py')
    first = {}
    for d in found:
        first.setdefault(d.path, d)
    assert first[('seed',)].comment == 'the seed'
    assert first[('opt',)].comment == 'Two lines above.'
    assert first[('opt', 'lr')].comment == 'the rate'
    assert first[('opt', 'b1')].comment == 'a block above b1'
    assert first[('opt', 'b2')].comment == '' and first[('opt', 'nested', 'x')].comment == ''
    assert first[('copy',)].alias == ('opt',)
    assert [d.comment for d in found if d.path == ('opt', 'lr')] == [
        'the rate', 'why the variant changes it']


@pytest.mark.parametrize('old, new', [
    ('        b1=0.9,\n        b2=0.99,', '        b1=0.9, b2=0.99,  # which one?'),
    ('        b1=0.9,\n        b2=0.99,', '        b1=0.9, b2=0.99,'),  # the block above b1
    ('    config.seed = 0  # the seed', '    config.a, config.b = 1, 2  # which one?'),
    ('    config.opt.update(lr=2.0)', '    config.opt.update(lr=2.0, b1=0.5)')])
def test_a_comment_two_fields_could_own_is_refused(old, new):
    assert old in SOURCE
    with pytest.raises(ref.SourceError, match=r'x.py:\d+: one comment for the fields'):
        ref.config_definitions(SOURCE.replace(old, new), 'x.py')


def test_check_names_the_stale_file(tmp_path, text):
    stale = tmp_path / 'configuration.md'
    stale.write_text(text.replace('chains per prompt', 'chains per pompt'))
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    out = subprocess.run([sys.executable, 'launch/config_docs.py', f'--out={stale}', '--check'],
                         cwd=config_files.ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f'{stale} is stale: run python launch/config_docs.py --out={stale}' in out.stderr
    assert 'Traceback' not in out.stderr
