"""launch/convert_bagel.py on the tiny fixture: Bagel -> Orbax -> Bagel is bit-exact."""

import os
import shutil
import subprocess
import sys

import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unigrpo_jax.loading import orbax_io, pipeline
from unigrpo_jax.loading.checkpoint import CheckpointError
from unigrpo_jax.loading.tokenizer import load_tokenizer
from unigrpo_jax.model.config import SpecialTokens, load_config

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SCRIPT = os.path.join(_ROOT, 'launch', 'convert_bagel.py')


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    result = subprocess.run([sys.executable, _SCRIPT, *args], capture_output=True, text=True,
                            env=env, cwd=_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_same_tensors(path_a, path_b):
    a, b = load_file(path_a), load_file(path_b)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def test_script_round_trip_is_bit_exact(fixture_dir, tmp_path):
    orbax_dir, bagel_dir = str(tmp_path / 'orbax'), str(tmp_path / 'bagel')
    result = _run(f'--src={fixture_dir}', f'--dst={orbax_dir}')
    assert 'no tokenizer' in result.stderr and 'saved the Orbax checkpoint' in result.stderr
    assert not os.path.exists(os.path.join(orbax_dir, pipeline.TOKENIZER_DIR))
    _run('--export', f'--src={orbax_dir}', f'--dst={bagel_dir}')
    _assert_same_tensors(os.path.join(fixture_dir, 'model.safetensors'),
                         os.path.join(bagel_dir, 'ema.safetensors'))
    _assert_same_tensors(os.path.join(fixture_dir, 'ae.safetensors'),
                         os.path.join(bagel_dir, 'ae.safetensors'))
    assert load_config(bagel_dir) == load_config(fixture_dir)


def test_script_refuses_to_overwrite(fixture_dir, tmp_path):
    _run(f'--src={fixture_dir}', f'--dst={tmp_path}')
    result = subprocess.run([sys.executable, _SCRIPT, f'--src={fixture_dir}', f'--dst={tmp_path}'],
                            capture_output=True, text=True, cwd=_ROOT,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert result.returncode != 0 and 'exists already' in result.stderr


def _tokenizer_with(directory, ids):
    """A 512-token WordLevel tokenizer with Bagel's special tokens at ``ids`` (token -> id)."""
    vocab = {f'w{i}': i for i in range(512)}
    for token, i in ids.items():
        del vocab[f'w{i}']
        vocab[token] = i
    model = Tokenizer(models.WordLevel(vocab, unk_token='w0'))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.add_special_tokens(list(ids))
    PreTrainedTokenizerFast(tokenizer_object=model, extra_special_tokens=list(ids),
                            unk_token='w0').save_pretrained(directory)


def test_tokenizer_ids_and_copy(fixture_dir, tmp_path):
    src, dst, back = str(tmp_path / 'src'), str(tmp_path / 'dst'), str(tmp_path / 'back')
    shutil.copytree(fixture_dir, src)
    _tokenizer_with(src, {'<|im_start|>': 500, '<|im_end|>': 501, '<|vision_start|>': 504,
                          '<|vision_end|>': 505})
    summary = pipeline.convert_release(src, dst, log=lambda _: None)
    want = SpecialTokens(bos=500, eos=501, start_of_image=504, end_of_image=505)
    assert summary.config.tokens == want
    _, tokens, num_new = load_tokenizer(os.path.join(dst, pipeline.TOKENIZER_DIR))
    assert (tokens, num_new) == (want, 0)
    assert orbax_io.load_params(dst)[0].tokens == want
    pipeline.export_release(dst, back, log=lambda _: None)
    assert load_tokenizer(back)[1] == want


def test_tokenizer_disagreeing_with_config_json(fixture_dir, tmp_path):
    src = str(tmp_path / 'src')
    shutil.copytree(fixture_dir, src)
    _tokenizer_with(src, {'<|im_start|>': 1, '<|im_end|>': 2, '<|vision_start|>': 3,
                          '<|vision_end|>': 4})
    with pytest.raises(CheckpointError, match='differ from the tokenizer ids'):
        pipeline.convert_release(src, str(tmp_path / 'dst'), log=lambda _: None)


def test_launchers_name_a_wrong_directory_in_one_line(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    cases = [(['launch/convert_bagel.py', f'--src={tmp_path}', f'--dst={tmp_path / "out"}'],
              f'launch/convert_bagel.py: {tmp_path} is not a Bagel release directory: it has no '
              'llm_config.json, ae.safetensors, ema.safetensors or model.safetensors'),
             (['launch/sample.py', f'--workdir={tmp_path}', '--prompts=data/geneval/'
               'evaluation_metadata.jsonl', f'--out={tmp_path / "s"}'],
              f'launch/sample.py: {tmp_path} is not a run directory'),
             (['launch/evaluate.py', f'--workdir={tmp_path}'],
              f'launch/evaluate.py: {tmp_path} is not a run directory')]
    for args, message in cases:
        out = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True,
                             env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
        assert out.returncode == 1 and message in out.stderr, out.stderr[-2000:]
        assert 'Traceback' not in out.stderr, out.stderr[-2000:]
