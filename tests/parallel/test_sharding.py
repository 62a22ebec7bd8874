"""Activation placement inside a traced program (``parallel.sharding.constrain_batch``)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from unigrpo_jax.loading.bagel import load_bagel
from unigrpo_jax.model import bagel, context
from unigrpo_jax.model.kv_cache import init_cache
from unigrpo_jax.parallel import sharding
from unigrpo_jax.parallel.mesh import make_mesh


def test_constrain_batch_splits_the_batch_over_the_batch_axes_that_divide_it():
    """Logits of a head sharded along its contracting dim (fsdp's ``embed``) come out split
    over the chains, not as every chain's partial sums on every device; a batch the fsdp axis
    does not divide is split over the axes that do; outside a traced program nothing
    changes."""
    mesh = make_mesh((2, 4, 1))
    hidden = jax.device_put(jnp.ones((8, 3, 16)), NamedSharding(mesh, P(('data', 'fsdp'))))
    head = jax.device_put(jnp.ones((16, 32)), NamedSharding(mesh, P('fsdp', None)))

    def logits(h, w):
        return sharding.constrain_batch(sharding.constrain_batch(h) @ w)

    out = jax.jit(sharding.traced_on(mesh, logits))(hidden, head)
    assert out.sharding.spec == P(('data', 'fsdp'))
    np.testing.assert_allclose(out, 16.0)
    odd = jax.jit(sharding.traced_on(mesh, sharding.constrain_batch))(
        jax.device_put(jnp.ones((6, 5)), sharding.replicated(mesh)))
    assert odd.sharding.spec == P(('data',))  # 6 splits over data (2), not also over fsdp (4)
    x = jnp.ones((8, 2))
    assert sharding.constrain_batch(x) is x


def test_prefilled_context_stays_split_over_the_chains(fixture_dir):
    """A text segment prefilled under fsdp params keeps its chains split over the batch axes
    (the reference program rebuilt every chain's context on every device before, its memory
    growing with the slice: docs/performance.md)."""
    config, params, _ = load_bagel(fixture_dir, dtype=np.float32)
    mesh = make_mesh((1, 8, 1))
    params = jax.device_put(params, sharding.param_shardings(
        bagel.abstract_params(config), mesh, sharding.strategy_rules('fsdp')))
    ids = np.full((8, 6), config.tokens.bos, np.int32)

    def prefill(p, tokens):
        cache = init_cache(config.llm, tokens.shape[0], 8)
        return context.prefill_text(p, config, cache, tokens)[1]

    hidden = jax.jit(sharding.traced_on(mesh, prefill))(
        params, jax.device_put(ids, sharding.batch_sharding(mesh)))
    assert hidden.sharding.spec == P(('fsdp',))
    np.testing.assert_allclose(hidden, context.prefill_text(
        jax.device_get(params), config, init_cache(config.llm, 8, 8), ids)[1], rtol=1e-5, atol=1e-5)
