"""notebooks/*.ipynb executed top to bottom in a Jupyter kernel (nbclient), as a user runs them.

Each kernel is its own process started from the repository root: it gets the environment a user's
machine has (one CPU device: none of conftest's emulated devices or thread-pool settings), plus
the CPU platform (CI has libtpu installed but no TPU) and conftest's persistent compilation cache.
A cell that raises fails the test with that cell's source and error.
"""

import json
import os
import re
import shutil

import nbclient
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from unigrpo_jax import config_files
from unigrpo_jax.bench import targets
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.data import prompts as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = os.path.join(REPO, 'notebooks')
_ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _kernel_env(extra: dict) -> dict:
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5',
               JAX_COMPILATION_CACHE_DIR=os.environ.get('JAX_TEST_CACHE_DIR',
                                                        '/tmp/unigrpo_jax_test_compile_cache'))
    for name in ('XLA_FLAGS', 'PJRT_NPROC', 'MPLBACKEND'):  # set by conftest / the test runner
        env.pop(name, None)
    env.update(extra)
    return env


def execute(name: str, env: dict | None = None, timeout: int = 600):
    """Runs ``notebooks/<name>`` in a fresh kernel; returns ``(notebook, error)``: the executed
    notebook and the ``CellExecutionError`` of the cell that raised (None if none did)."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name='python3',
                                     resources={'metadata': {'path': REPO}})
    try:
        client.execute(env=_kernel_env(env or {}))
    except CellExecutionError as e:
        return nb, e
    return nb, None


def run(name: str, env: dict | None = None):
    """``execute`` that fails the test when a cell raises, with that cell's source and error."""
    nb, error = execute(name, env)
    if error is not None:  # the cell's source, its printed output, then the error
        message = _ANSI.sub('', str(error))
        if len(message) > 8000:
            message = message[:2000] + '\n[...]\n' + message[-6000:]
        pytest.fail(f'notebooks/{name}: a cell raised\n{message}', pytrace=False)
    return nb


def outputs_of(cell, kind: str) -> list:
    """The outputs of a cell whose ``output_type`` (or mime type) is ``kind``."""
    return [o for o in cell.get('outputs', [])
            if o.output_type == kind or kind in o.get('data', {})]


def outputs(nb, kind: str) -> list:
    """``outputs_of`` every cell of ``nb``."""
    return [o for cell in nb.cells for o in outputs_of(cell, kind)]


def text(nb) -> str:
    return ''.join(o.text for o in outputs(nb, 'stream') if o.name == 'stdout')


@pytest.mark.parametrize('name', sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith('.ipynb')))
def test_notebooks_are_saved_without_outputs(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == 'code':
            assert not cell.outputs and cell.execution_count is None, (name, cell.source[:80])


def test_algorithm_notebook_plots_every_section():
    nb = run('algorithm.ipynb')
    assert len(outputs(nb, 'image/png')) == 6  # schedule, SDE steps, chains, ratios, KL, group
    out = text(nb)
    assert 'paper window: steps 0..4' in out and 'RatioNorm' in out and 'advantages' in out


def test_quickstart_thinks_draws_trains_and_draws_again(tmp_path):
    workdir = tmp_path / 'quickstart'
    nb = run('quickstart.ipynb', {'QUICKSTART_WORKDIR': str(workdir)})
    with open(workdir / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [1, 2, 3, 4]
    assert all(0 <= r['reward/mean'] <= 1 for r in rows)
    assert len(outputs(nb, 'image/png')) == 3  # before, the reward curve, before and after
    out = text(nb)
    assert 'strict accuracy of the SFT model' in out
    assert re.search(r'after 4 UniGRPO steps \d+%; \d+ of 12 plans changed', out), out


def _word_tokenizer(directory: str, special_ids: dict, size: int) -> None:
    """A whitespace word-level tokenizer of ``size`` ids: Bagel's special tokens at
    ``special_ids``, every word of the GenEval prompts and of Bagel's think system prompt, then
    filler words (the tiny fixture ships no tokenizer; the release ships Qwen2.5's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(config_files.load(os.path.join(REPO, 'configs', 'bagel_grpo.py')).system_prompt
                .split())
    for _, item in data_lib.read_jsonl_lines(data_lib.GENEVAL_FILE):
        words.update(item['prompt'].split())
    free = [i for i in range(size) if i not in special_ids.values()]
    names = ['<unk>', *sorted(words), *(f'w{i}' for i in range(size))]
    vocab = {**dict(zip(names, free)), **special_ids}
    model = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.decoder = decoders.WordPiece(prefix='##', cleanup=False)  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=model, unk_token='<unk>',
                            extra_special_tokens=list(special_ids)).save_pretrained(directory)


@pytest.fixture
def tiny_release(tmp_path, fixture_dir):
    """``tests/fixtures/bagel_tiny`` laid out as the release is: its weights and configs with a
    tokenizer beside them."""
    release = tmp_path / 'release'
    release.mkdir()
    for name in os.listdir(fixture_dir):
        if name.endswith(('.safetensors', '.json')):
            shutil.copy(os.path.join(fixture_dir, name), release)
    with open(os.path.join(fixture_dir, 'config.json')) as f:
        ids = json.load(f)['new_token_ids']
    _word_tokenizer(str(release), dict(zip(tokenizer_lib.BAGEL_TOKENS, (
        ids['bos_token_id'], ids['eos_token_id'], ids['start_of_image'], ids['end_of_image']))),
        size=512)
    return release


def _bagel_env(tmp_path, checkpoint) -> dict:
    return {'BAGEL_CHECKPOINT': str(checkpoint), 'BAGEL_CONVERTED': str(tmp_path / 'converted'),
            'BAGEL_WORKDIR': str(tmp_path / 'work'), 'REWARD_URL': '', 'BAGEL_TARGET': 'v5p-8',
            'BAGEL_COMPILE_PROGRAMS': 'policy,reference', 'BAGEL_IMAGE_SIZE': '32',
            'BAGEL_THINK_TOKENS': '8'}


def test_bagel_notebook_end_to_end_on_the_tiny_release(tmp_path, tiny_release):
    nb = run('bagel_7b.ipynb', _bagel_env(tmp_path, tiny_release))
    converted, work = tmp_path / 'converted', tmp_path / 'work'
    assert orbax_io.is_converted(str(converted)) and (converted / 'tokenizer').is_dir()
    with open(work / 'prompts.jsonl') as f:
        assert sorted(json.loads(line)['tag'] for line in f) == sorted(
            {'single_object', 'two_object', 'counting', 'colors', 'position', 'color_attr'})
    assert len(outputs(nb, 'image/png')) == 1  # the six images with their thinking
    with open(work / 'unigrpo' / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [1, 2]
    assert all(0 < r['reward/mean'] < 1 and r['reward/std'] > 0 for r in rows)  # brightness
    out = text(nb)
    assert re.search(r'step 2: reward 0\.\d+ \+- 0\.\d+, loss', out), out
    if targets.compiler_installed('tpu') or os.environ.get('CI') == 'true':
        report = (work / 'compile_check' / 'compile_check.md').read_text()
        assert '| v5p-8 | policy | ok |' in report and '| v5p-8 | reference | ok |' in report
        assert 'every program fits' in out
    else:
        assert "pip install -e '.[tpu-compile]'" in out and 'nothing compiled' in out


def test_bagel_notebook_without_weights_says_what_to_download(tmp_path):
    empty = tmp_path / 'no_weights'
    empty.mkdir()
    nb, error = execute('bagel_7b.ipynb', _bagel_env(tmp_path, empty))
    assert error is not None and error.ename == 'SystemExit', error
    assert f'No Bagel weights in {empty}' in error.evalue
    assert 'huggingface.co/ByteDance-Seed/BAGEL-7B-MoT' in error.evalue
    assert f'--local-dir={empty}' in error.evalue
    code = [c for c in nb.cells if c.cell_type == 'code']
    failed = next(i for i, c in enumerate(code) if outputs_of(c, 'error'))
    assert 'pipeline.convert_release' in code[failed].source  # the conversion cell stopped it,
    assert all(c.execution_count is None for c in code[failed + 1:])  # nothing ran after it
    error_output, = outputs_of(code[failed], 'error')
    assert len(error_output.traceback) <= 3  # a message, not a traceback
    assert not (tmp_path / 'converted').exists()

