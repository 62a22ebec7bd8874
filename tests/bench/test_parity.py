"""Every case of the shipped reference fixture, through the same code as check_fixture.py."""

import numpy as np
import pytest

from unigrpo_jax.bench import parity


@pytest.fixture(scope='module')
def fixture(fixture_dir):
    return parity.load_fixture(fixture_dir)


@pytest.mark.parametrize('case', sorted(parity.CASES))
def test_case_matches_reference(fixture, case):
    checks = parity.CASES[case](fixture)
    assert checks, f'case {case} compared nothing'
    failed = [(c.name, c.error, c.tolerance) for c in checks if not c.passed]
    assert not failed, failed


def test_run_all_covers_every_case_of_the_fixture(fixture):
    cases = {c.case for c in parity.run_all(fixture)}
    assert cases == {k.split('.', 1)[0] for k in fixture.cases}


def test_a_wrong_port_fails(fixture):
    """The checks can fail: perturb one weight and the text case must report FAIL."""
    import jax
    params = jax.tree.map(lambda x: x, fixture.params)
    emb = params['language_model']['embed_tokens']['embedding']
    params['language_model']['embed_tokens']['embedding'] = emb * 1.01
    broken = parity.Fixture(fixture.config, params, fixture.ae_params, fixture.cases)
    assert not all(c.passed for c in parity.check_text_forward(broken))


def test_checks_say_their_kind():
    assert parity.close('c', 'x', [1.0, 2.0], [1.0, 2.0 + 1e-5]).kind == 'close'
    assert parity.equal('c', 'ids', [1, 2], [1, 3]) == parity.Check('c', 'ids', 1.0, 0.0, 'equal')
    image = parity.image_close('c', 'img', np.array([3], np.uint8), np.array([5], np.uint8))
    assert (image.kind, image.error, image.passed) == ('image', 2.0, False)
