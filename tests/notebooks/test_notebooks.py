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
    if error is not None:
        pytest.fail(f'notebooks/{name}: a cell raised\n{_ANSI.sub("", str(error))[-6000:]}',
                    pytrace=False)
    return nb


def outputs(nb, kind: str) -> list:
    """Every output of the code cells whose ``output_type`` (or mime type) is ``kind``."""
    found = []
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            if out.output_type == kind or kind in out.get('data', {}):
                found.append(out)
    return found


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
