"""LoRA adapters and the adapters-only train step on a random tiny Bagel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.loading.checkpoint import flatten
from unigrpo_jax.model import bagel
from unigrpo_jax.parallel import sharding
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.rl import advantages, objective, replay
from unigrpo_jax.train import lora as lora_lib
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train import settings
from unigrpo_jax.train import rl_step
from unigrpo_jax.train import step as step_lib

SPEC = lora_lib.LoraSpec(rank=4, alpha=8.0, targets=lora_lib.TARGETS, experts=lora_lib.EXPERTS)
Q = ('language_model', 'layers', 'gen', 'q_proj')
O = ('language_model', 'layers', 'gen', 'o_proj')


def _loss_with_reference(params, ref_params, batch, config, obj):
    """The loss of ``batch`` with ``ref_params``' reference outputs."""
    return objective.loss_fn(params, objective.prepare(ref_params, config, batch, obj,
                                                       jax.random.key(0)),
                             config, obj)


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


@pytest.fixture(scope='module')
def model():
    cfg = bagel_grpo.get_config('tiny')
    config, params, ae = factory.build_model(cfg.model)
    return cfg, config, params, ae


@pytest.fixture(scope='module')
def setup(model, tiny_rollout):
    cfg, config, params, ae = model
    rc = settings.rollout_config(cfg)
    out, system = tiny_rollout(cfg, config, params, ae)
    rewards = jnp.linspace(0.0, 1.0, 2 * rc.group_size)
    adv, informative = advantages.group_advantages(rewards, rc.group_size)
    batch = replay.train_batch(out, system, adv, informative.astype(jnp.float32))
    return cfg, config, params, batch


def test_spec_from_config():
    c = ml_collections.ConfigDict(dict(enabled=False, rank=64, alpha=128, targets=('q_proj',),
                                       experts=('gen',)))
    assert settings.lora_spec(c) is None
    c.enabled = True
    assert settings.lora_spec(c) == lora_lib.LoraSpec(64, 128.0, ('q_proj',), ('gen',))
    assert settings.lora_spec(c).scale == 2.0
    c.targets = ('q_proj', 'qkv')
    with pytest.raises(ValueError, match='lora.targets.*qkv'):
        settings.lora_spec(c)


def test_zero_b_merges_to_the_base_exactly(model):
    params = model[2]
    merged = lora_lib.merge(params, lora_lib.init_lora(params, SPEC, jax.random.key(1)), SPEC)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_merge_adds_the_scaled_product(model):
    """q_proj ``[L, E, H, D]`` and o_proj ``[L, H, D, E]``: the merged kernel is the kernel plus
    ``scale * A @ B`` reshaped, and applying it equals ``x W + scale * (x_flat A) B``."""
    params = model[2]
    spec = lora_lib.LoraSpec(rank=3, alpha=6.0, targets=('q_proj', 'o_proj'), experts=('gen',))
    rng = np.random.default_rng(0)
    lora = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        lora_lib.init_lora(params, spec, jax.random.key(0)))
    merged = lora_lib.merge(params, lora, spec)
    for path in (Q, O):
        w = np.asarray(_at(params, path)['kernel'])
        a, b = (np.asarray(_at(lora, path)[k]) for k in 'ab')
        want = w + 2.0 * np.einsum('lir,lro->lio', a, b).reshape(w.shape)
        np.testing.assert_allclose(_at(merged, path)['kernel'], want, rtol=1e-6, atol=1e-6)
    w_q, w_o = np.asarray(_at(params, Q)['kernel']), np.asarray(_at(params, O)['kernel'])
    L, E, H, D = w_q.shape
    x = rng.normal(size=E).astype(np.float32)
    a, b = _at(lora, Q)['a'], _at(lora, Q)['b']
    got = np.einsum('e,lehd->lhd', x, _at(merged, Q)['kernel'])
    want = np.einsum('e,lehd->lhd', x, w_q) + 2.0 * np.einsum('e,ler,lro->lo', x, a, b).reshape(
        L, H, D)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    attn = rng.normal(size=(H, D)).astype(np.float32)
    a, b = _at(lora, O)['a'], _at(lora, O)['b']
    got = np.einsum('hd,lhde->le', attn, _at(merged, O)['kernel'])
    want = np.einsum('hd,lhde->le', attn, w_o) + 2.0 * np.einsum(
        'i,lir,lro->lo', attn.reshape(H * D), a, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    und = ('language_model', 'layers', 'und', 'q_proj')
    np.testing.assert_array_equal(_at(merged, und)['kernel'], _at(params, und)['kernel'])


def test_adapters_are_few_and_named_for_sharding(model):
    _, config, params, _ = model
    lora = lora_lib.init_lora(params, SPEC, jax.random.key(0))
    c = config.llm
    hd, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    e, m = c.hidden_size, c.intermediate_size
    per_layer = SPEC.rank * (2 * (e + hd) + 2 * (e + kv) + 3 * (e + m))
    n_lora = sum(x.size for x in jax.tree.leaves(lora))
    assert n_lora == 2 * c.num_hidden_layers * per_layer
    assert n_lora < 0.1 * sum(x.size for x in jax.tree.leaves(params))

    boxed = lora_lib.abstract_lora(bagel.abstract_params(config), SPEC)
    assert jax.tree.map(lambda s: s.shape, nn.unbox(boxed)) == jax.tree.map(jnp.shape, lora)
    names = nn.get_partition_spec(boxed)
    assert _at(names, Q) == {'a': P('layers', 'embed', 'lora_rank'),
                             'b': P('layers', 'lora_rank', 'heads')}
    assert _at(names, O) == {'a': P('layers', 'heads', 'lora_rank'),
                             'b': P('layers', 'lora_rank', 'embed')}
    sh = sharding.param_shardings(boxed, make_mesh((1, 4, 2)),
                                  sharding.strategy_rules('fsdp_tp'))
    assert _at(sh, Q)['a'].spec == P(None, 'fsdp', None)
    assert _at(sh, Q)['b'].spec == P(None, None, 'tensor')


def test_lora_step_trains_only_the_adapters_against_the_base(setup):
    """Step 0: the loss is the full model's (B = 0) and the velocity MSE to the reference is ~0;
    only B moves (dL/dA = dL/dW B^T = 0). Step 1: the reference is still the base, so the MSE is
    that of the merged model against the base."""
    cfg, config, params, batch = setup
    obj = settings.objective_config(cfg, settings.schedule(cfg))
    optimizer = opt_lib.make_optimizer(cfg.optimizer, 2)
    prepared = jax.eval_shape(  # the placed batch is a prepared one (objective.prepare)
        lambda b: objective.prepare(params, config, b, obj, jax.random.key(0)), batch)
    place = lora_lib.lora_placement(config, SPEC, optimizer, make_mesh((1, 1, 1),
                                    jax.devices()[:1]), sharding.strategy_rules('dp'), prepared)
    lora0 = lora_lib.init_lora(params, SPEC, jax.random.key(0))
    state = step_lib.init_state(lora0, optimizer, place)
    base = step_lib.reference_params(params, place, jnp.float32)
    batch = rl_step.make_reference_fn(config, obj, place, 1)(  # the base's outputs
        base, batch, jax.random.key(0))
    fn = step_lib.make_train_step(lora_lib.adapter_loss(rl_step.rl_loss(config, obj), SPEC),
                                  optimizer, place)
    full_loss, full_m = jax.jit(_loss_with_reference, static_argnums=(3, 4))(
        params, params, batch, config, obj)

    state, m = fn(state, base, batch)
    assert float(m['skipped']) == 0.0 and int(state.step) == 1
    np.testing.assert_allclose(m['loss'], full_loss, rtol=1e-6, atol=1e-7)
    # The policy's forward (kept for the backward) and the reference's compile differently.
    assert float(m['image/velocity_mse']) < 1e-12
    assert float(full_m['image/velocity_mse']) == 0.0
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    lora1 = jax.tree.map(np.asarray, state.params)
    for path, ab in flatten(lora1).items():
        before = flatten(lora0)[path]
        if path.endswith('/a'):
            np.testing.assert_array_equal(ab, before, err_msg=path)
        else:
            assert np.abs(ab).max() > 0, path

    state, m = fn(state, base, batch)
    merged = lora_lib.merge(params, lora1, SPEC)
    _, want = jax.jit(_loss_with_reference, static_argnums=(3, 4))(
        merged, params, batch, config, obj)
    assert float(m['image/velocity_mse']) > 0
    np.testing.assert_allclose(m['image/velocity_mse'], want['image/velocity_mse'], rtol=1e-4)
    np.testing.assert_allclose(m['loss'], want['loss'], rtol=1e-4, atol=1e-7)
