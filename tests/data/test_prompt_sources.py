"""Prompt sources as TFDS builders: named by content, prepared once, and in a multi-process run
a bad or differing file on any host stops every process with its message."""

import json
import os
import textwrap

import pytest

from unigrpo_jax.data import prompts

_LINES = [{'tag': 'single_object', 'prompt': 'a photo of a circle'},
          {'tag': 'single_object', 'prompt': 'a photo of a square'}]


def _write(path, items, text=None):
    path.write_text(text if text is not None else ''.join(json.dumps(x) + '\n' for x in items))
    return str(path)


def test_builder_names_follow_the_content_not_the_path_or_time(tmp_path):
    a = _write(tmp_path / 'a.jsonl', _LINES)
    os.makedirs(tmp_path / 'host2')
    b = _write(tmp_path / 'host2' / 'a.jsonl', _LINES)
    os.utime(b, (1e9, 1e9))  # another host's copy: another path, another modification time
    assert prompts.builder_name(a) == prompts.builder_name(b)
    edited = _write(tmp_path / 'host2' / 'a.jsonl', _LINES[:1])
    assert prompts.builder_name(edited) != prompts.builder_name(a)
    assert prompts.builder_name('shapes_eval') != prompts.builder_name('geneval')


def test_an_edited_file_is_prepared_again(tmp_path):
    path = _write(tmp_path / 'p.jsonl', _LINES)
    data_dir = str(tmp_path / 'tfds')
    got = prompts.load_prompts(path, data_dir)
    assert [(e['index'], e['prompt']) for e in got] == [(0, 'a photo of a circle'),
                                                        (1, 'a photo of a square')]
    _write(tmp_path / 'p.jsonl', _LINES[1:])
    assert [e['prompt'] for e in prompts.load_prompts(path, data_dir)] == ['a photo of a square']
    with pytest.raises(prompts.DataError, match=r'p.jsonl:1 is not valid JSON'):
        prompts.load_prompts(_write(tmp_path / 'p.jsonl', [], text='{oops\n'), data_dir)


_WORKER = textwrap.dedent('''
    import sys
    port, pid, path, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from unigrpo_jax.parallel import distributed
    distributed.initialize('auto', f'127.0.0.1:{port}', 2, pid, timeout_s=60)
    from unigrpo_jax.data import prompts
    try:
        got = prompts.load_prompts(path, data_dir)
    except prompts.DataError as e:
        print('DATA ERROR:', e)
        sys.exit(3)
    print('LOADED', [e['prompt'] for e in got])
''')


def test_every_process_stops_when_one_copy_is_bad_or_differs(tmp_path, processes):
    data_dir = str(tmp_path / 'tfds')  # shared by both processes, as on a shared file system
    good = [_write(tmp_path / f'good{i}.jsonl', _LINES) for i in range(2)]
    os.utime(good[1], (1e9, 1e9))
    for rc, out in processes(_WORKER, [[good[0], data_dir], [good[1], data_dir]]):
        assert rc == 0 and "LOADED ['a photo of a circle', 'a photo of a square']" in out, out
    bad = _write(tmp_path / 'bad.jsonl', [], text='{oops\n')
    for rc, out in processes(_WORKER, [[good[0], data_dir], [bad, data_dir]]):
        assert rc == 3 and 'failed on 1 of 2 processes; process 1: DataError' in out, out
        assert 'bad.jsonl:1 is not valid JSON' in out, out
    other = _write(tmp_path / 'other.jsonl', _LINES[:1])
    for rc, out in processes(_WORKER, [[good[0], data_dir], [other, data_dir]]):
        assert rc == 3 and 'the processes read different prompts' in out, out


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / 'p.jsonl'
    path.write_bytes(json.dumps(_LINES[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(prompts.DataError, match=r'p.jsonl:2 is not UTF-8 text'):
        prompts.read_jsonl_lines(str(path))
    assert prompts.where(_write(tmp_path / 'q.jsonl', [], text='\n' + json.dumps(_LINES[0])
                                + '\n\n' + json.dumps(_LINES[1]) + '\n'), 1).endswith('q.jsonl:4')
    assert prompts.where('shapes_eval', 7) == 'shapes_eval prompt 7'


def _tagged(counts: dict) -> list[dict]:
    return [{'prompt': f'{tag} {i}', 'tag': tag, 'index': i}
            for tag, n in counts.items() for i in range(n)]


def test_tag_weights_scale_each_tags_share_and_keep_the_order():
    examples = _tagged({'easy': 40, 'hard': 40, 'rare': 8})
    out = prompts.weight_by_tag(examples, {'easy': 0.25, 'hard': 1.0, 'rare': 0.0})
    tags = [item['tag'] for item in out]
    assert tags.count('easy') == 10 and tags.count('hard') == 40 and 'rare' not in tags
    assert out == [item for item in examples if item in out]  # a subsequence, in order
    assert prompts.weight_by_tag(examples, {}) is examples  # no weights: the source as it is


@pytest.mark.parametrize('weights, message', [
    ({'easy': 1.0, 'hard': 1.0}, 'the prompts have'),            # a tag of the prompts unnamed
    ({'easy': 1.0, 'hard': 1.0, 'rare': 1.0, 'hrad': 1.0}, "'hrad'"),  # a misspelt tag
    ({'easy': 0.0, 'hard': 0.0, 'rare': 0.0}, 'not all 0'),
    ({'easy': -1.0, 'hard': 1.0, 'rare': 1.0}, '>= 0'),
])
def test_tag_weights_that_do_not_fit_the_prompts_are_an_error(weights, message):
    with pytest.raises(prompts.DataError, match=message):
        prompts.weight_by_tag(_tagged({'easy': 4, 'hard': 4, 'rare': 4}), weights)


def test_named_sources_are_found_in_their_packages_and_a_wrong_name_lists_them():
    """``shapes_train``/``shapes_eval`` come from ``unigrpo_jax.shapes.prompt_source``, found
    on disk by the registry (the prompt layer imports nothing of ShapesEval)."""
    assert {'geneval', 'shapes_train', 'shapes_eval'} <= set(prompts.source_names())
    train = prompts.source_examples('shapes_train')
    assert len(train) == 20000 and all(item.get('tag') and item.get('include') for item in train)
    assert prompts.source_examples('shapes_train') == train  # seeded: the same every time
    assert len(prompts.source_examples('shapes_eval')) == 240
    assert prompts.where('shapes_train', 7) == 'shapes_train prompt 7'
    with pytest.raises(prompts.DataError,
                       match=r"unknown prompt source 'shapes_trian'.*shapes_train"):
        prompts.source_examples('shapes_trian')


def test_a_registered_source_is_read_and_a_name_cannot_be_taken_twice():
    @prompts.register_source('test_two_prompts')
    def two():
        return [{'prompt': 'a photo of a cat'}, {'prompt': 'a photo of a dog'}]

    assert prompts.is_named('test_two_prompts')
    assert [item['prompt'] for item in prompts.source_examples('test_two_prompts')] == [
        'a photo of a cat', 'a photo of a dog']
    with pytest.raises(ValueError, match='already registered'):
        prompts.register_source('test_two_prompts')(lambda: [])
    with pytest.raises(ValueError, match='not a .jsonl path'):
        prompts.register_source('mine.jsonl')
