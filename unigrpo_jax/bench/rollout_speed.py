"""Speed of the rollout's two phases and of the whole rollout on a config's model
(``launch/bench_rollout.py``; docs/performance.md has the results).

After a warm-up (compiling) call, the median of timed calls of

* think decoding: the jitted ``generate_think`` loop at batch 1 and at the group size (the G
  chains of one prompt, its prefilled context repeated): sampled tokens/s and time per step;
* denoising: one ``context.image_velocity`` step over the image block attending to the cache
  left by thinking, at batch 1 and at the group size: steps/s;
* the whole rollout (``make_rollout_fn``, one prompt per device): images/s;

and the XLA compilations of the first and of a second call with new inputs (the second must
compile nothing). On a GPU it adds the fraction of the HBM-bandwidth roofline reached by a
decode step and of the peak bf16 FLOP/s reached by a denoising step (``bench.perf``).
"""

import jax
import jax.numpy as jnp

from unigrpo_jax.bench import perf
from unigrpo_jax.loading import factory
from unigrpo_jax.model import autoencoder, context, latents
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.rollout import rollout
from unigrpo_jax.train import settings

_THINK = jax.jit(rollout.generate_think, static_argnames=('config', 'sampler', 'max_tokens'))
_VELOCITY = jax.jit(context.image_velocity, static_argnames=('config',))


def model(cfg, shapes: str = 'config', layers: int | None = None):
    """``(BagelConfig, params, ae_params)``: the config's model, or (``shapes='7b'``) random
    bf16 weights of Bagel-7B's sizes with ``layers`` LLM layers (default 28)."""
    if shapes == 'config':
        return factory.build_model(cfg.model, cfg.seed)
    config = perf.bagel_7b_config(layers or 28)
    key_model, key_ae = jax.random.split(jax.random.key(cfg.seed))
    return (config, perf.random_params(config, key_model),
            autoencoder.init_params(config.ae, key_ae))


def _segments(key, config, batch: int, length: int) -> jax.Array:
    """``[batch, length]`` random ``[bos] ids [eos]`` segments (ids below the special tokens)."""
    t = config.tokens
    ids = jax.random.randint(key, (batch, length), 0, min(t.bos, t.eos, t.start_of_image,
                                                           t.end_of_image))
    return ids.at[:, 0].set(t.bos).at[:, -1].set(t.eos)


def think_context(params, config, rc, key, chains: int, system_len: int, prompt_len: int):
    """One prompt's prefilled think context (random system + prompt segments of these
    lengths), repeated ``chains`` times."""
    key_system, key_prompt = jax.random.split(key)
    system = _segments(key_system, config, 1, system_len)[0] if rc.think else None
    prompt = _segments(key_prompt, config, 1, prompt_len)
    size = rollout.cache_size(0 if system is None else system.shape[0], prompt.shape[1],
                              rc.max_think_tokens if rc.think else 0)
    _, cache = rollout.build_context(params, config, system, prompt,
                                     jnp.full((1,), prompt.shape[1]), size)
    return rollout.repeat_chains(cache, chains)


def _first_and_second(call, inputs_a, inputs_b):
    """Compiles of a first and of a second call (new inputs); returns them and the first result."""
    with perf.count_compiles() as first:
        out = jax.block_until_ready(call(*inputs_a))
    with perf.count_compiles() as second:
        jax.block_until_ready(call(*inputs_b))
    return out, first, second


def _compile_row(name, batch, first, second):
    note = f'first call {len(first)}, second call (new inputs) {len(second)}'
    if second:
        note += ': recompiled ' + ', '.join(second)
    return dict(name=f'compiles {name}', batch=batch, value=len(second), unit='recompiles',
                note=note)


def bench_think(params, config, rc, key, chains, peak, repeats: int, system_len: int,
                prompt_len: int):
    """Rows of the think decode loop at ``chains`` (median of ``repeats`` timed calls;
    ``peak``: the GPU's, for the roofline row); returns them and the cache after thinking."""
    key_a, key_b, key_sample = jax.random.split(key, 3)
    call = lambda cache, keys: _THINK(params, config, cache, keys, rc.schedule.tokens,  # noqa: E731
                                      rc.max_think_tokens)
    inputs_a = (think_context(params, config, rc, key_a, chains, system_len, prompt_len),
                jax.random.split(key_sample, chains))
    inputs_b = (think_context(params, config, rc, key_b, chains, system_len, prompt_len),
                jax.random.split(jax.random.fold_in(key_sample, 1), chains))
    (cache, _, _, mask, _), first, second = _first_and_second(call, inputs_a, inputs_b)
    seconds = perf.median_seconds(lambda: call(*inputs_a), repeats)
    steps = int(jnp.max(cache.length - inputs_a[0].length))  # loop iterations (rows fed)
    tokens = int(jnp.sum(mask))
    rows = [dict(name='think decode', batch=chains, value=tokens / seconds, unit='tokens/s',
                 note=f'{steps} steps, {1e3 * seconds / steps:.3f} ms/step, {tokens} tokens'),
            _compile_row('think decode', chains, first, second)]
    if peak is not None:
        # Valid rows attended, averaged over the steps: the context, then one more per step.
        rows_read = float(inputs_a[0].length[0]) + (steps + 1) / 2
        step_bytes = perf.decode_step_bytes(config.llm, chains, rows_read, _itemsize(params),
                                            cache.k.dtype.itemsize)
        buffer_bytes = perf.kv_cache_bytes(config.llm, chains, cache.size, cache.k.dtype.itemsize)
        bandwidth = step_bytes * steps / seconds
        rows.append(dict(
            name='decode roofline', batch=chains, value=bandwidth / peak.bandwidth,
            unit='of peak BW',
            note=f'{step_bytes / 1e9:.4g} GB/step ({rows_read:.0f} KV rows; the whole '
                 f'{cache.size}-row buffer is {buffer_bytes / 1e9:.4g} GB), '
                 f'{bandwidth / 1e12:.4g} TB/s of {peak.name} {peak.bandwidth / 1e12:.4g} TB/s'))
    return rows, cache


def bench_denoise(params, config, rc, key, cache, peak, repeats: int):
    """Rows of one ``image_velocity`` step of ``cache.batch`` images over ``cache``."""
    b = cache.batch
    h, w = rc.schedule.token_grid(config)
    pos = jnp.asarray(latents.position_ids(h, w, config.max_latent_size))
    x_a, x_b = jax.random.normal(key, (2, b, h * w, config.latent_token_dim))
    call = lambda x, t: _VELOCITY(params, config, cache, x, t, pos)  # noqa: E731
    inputs_a, inputs_b = (x_a, jnp.full((b,), 0.7)), (x_b, jnp.full((b,), 0.3))
    _, first, second = _first_and_second(call, inputs_a, inputs_b)
    seconds = perf.median_seconds(lambda: call(*inputs_a), repeats)
    context_rows = float(jnp.mean(cache.length))
    rows = [dict(name='denoise step', batch=b, value=1 / seconds, unit='steps/s',
                 note=f'{h * w} latent tokens, {context_rows:.0f} context rows, '
                 f'{1e3 * seconds:.3f} ms/step'),
            _compile_row('denoise step', b, first, second)]
    if peak is not None:
        flops = perf.block_forward_flops(config, b, h * w, context_rows) / seconds
        rows.append(dict(name='denoise MFU', batch=b, value=flops / peak.bf16_flops,
                         unit='of peak FLOP/s', note=f'{flops / 1e12:.4g} TFLOP/s of {peak.name} '
                         f'{peak.bf16_flops / 1e12:.4g} TFLOP/s bf16 (compute dtype '
                         f'{config.dtype})'))
    return rows


def bench_rollout(params, ae_params, config, rc, key, repeats: int, system_len: int,
                  prompt_len: int):
    """Rows of the whole rollout, one prompt per device."""
    mesh = make_mesh()
    prompts = mesh.size
    fn = rollout.make_rollout_fn(config, rc, mesh)

    def inputs(k):
        key_system, key_prompt, key_run = jax.random.split(k, 3)
        system = _segments(key_system, config, 1, system_len)[0]
        ids = _segments(key_prompt, config, prompts, prompt_len)
        return system, ids, jnp.full((prompts,), ids.shape[1]), key_run

    key_a, key_b = jax.random.split(key)
    call = lambda *a: fn(params, ae_params, *a)  # noqa: E731
    inputs_a = inputs(key_a)
    _, first, second = _first_and_second(call, inputs_a, inputs(key_b))
    seconds = perf.median_seconds(lambda: call(*inputs_a), repeats)
    images = prompts * rc.group_size
    return [dict(name='rollout', batch=images, value=images / seconds, unit='images/s',
                 note=f'{prompts} prompt(s) x {rc.group_size} chains on {mesh.size} device(s), '
                 f'{seconds:.3f} s/rollout'),
            _compile_row('rollout', images, first, second)]


def _itemsize(params) -> int:
    return params['language_model']['layers']['und']['q_proj']['kernel'].dtype.itemsize


def _header(config, rc, device, peak, shapes: str, system_len: int, prompt_len: int) -> dict:
    llm = config.llm
    return dict(
        backend=jax.default_backend(), device_kind=device.device_kind,
        devices=jax.device_count(), jax=jax.__version__, peak=peak.name if peak else None,
        shapes=shapes, layers=llm.num_hidden_layers, hidden=llm.hidden_size,
        vocab=llm.vocab_size, llm_params=perf.decoder_param_count(llm), dtype=config.dtype,
        group_size=rc.group_size, max_think_tokens=rc.max_think_tokens if rc.think else 0,
        num_timesteps=rc.schedule.num_timesteps, image_size=list(rc.schedule.image_size),
        system_len=system_len, prompt_len=prompt_len)


def table(header: dict, rows: list[dict]) -> str:
    """The header line and one line per row, as ``launch/bench_rollout.py`` prints them."""
    lines = [' '.join(f'{k}={v}' for k, v in header.items()),
             f'{"measurement":<24} {"batch":>5} {"value":>12}  {"unit":<15} notes']
    for r in rows:
        value = f'{r["value"]:.4g}' if isinstance(r['value'], float) else str(r['value'])
        lines.append(f'{r["name"]:<24} {r["batch"]:>5} {value:>12}  {r["unit"]:<15} {r["note"]}')
    return '\n'.join(lines)


def measure(cfg, shapes: str = 'config', layers: int | None = None, repeats: int = 5,
            rollout_repeats: int = 3, system_len: int = 32, prompt_len: int = 32
            ) -> tuple[dict, list[dict]]:
    """``(header, rows)``: every measurement of the module docstring on ``cfg``'s rollout."""
    config, params, ae_params = model(cfg, shapes, layers)
    rc = settings.rollout_config(cfg)
    device = jax.devices()[0]
    peak = perf.peak_for(device.device_kind) if jax.default_backend() == 'gpu' else None
    key = jax.random.key(cfg.seed)
    rows = []
    for chains in sorted({1, rc.group_size}):
        key_think, key_denoise = jax.random.split(jax.random.fold_in(key, chains))
        if rc.think:
            think_rows, cache = bench_think(params, config, rc, key_think, chains, peak,
                                            repeats, system_len, prompt_len)
            rows += think_rows
        else:
            cache = think_context(params, config, rc, key_think, chains, system_len,
                                  prompt_len)
        rows += bench_denoise(params, config, rc, key_denoise, cache, peak, repeats)
    rows += bench_rollout(params, ae_params, config, rc, jax.random.fold_in(key, 0),
                          rollout_repeats, system_len, prompt_len)
    header = _header(config, rc, device, peak, shapes, system_len, prompt_len)
    if jax.default_backend() == 'gpu' and peak is None:
        header['note'] = (f'no peak numbers for device_kind {device.device_kind!r}: add it to '
                          'unigrpo_jax.bench.perf.PEAKS for the roofline rows')
    return header, rows
