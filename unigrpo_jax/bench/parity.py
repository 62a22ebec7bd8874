"""Parity against reference fixtures computed by the original Bagel PyTorch code.

A fixture directory (format of ``tests/fixtures/bagel_tiny``: a tiny Bagel checkpoint in the
real layout plus ``cases.npz``) is loaded with the project's own converter and every case is
recomputed by the port. Every size and token id is read from the fixture; only the sampler
settings the fixture format fixes in its README (shift, CFG scales and intervals of the
generation loops) are constants here.

Tolerances (fixture README): ``max|port - ref| <= rel * max(1, max|ref|)`` with rel 1e-4 for
single forward passes and 3e-4 for CFG-combined or multi-step outputs; integer arrays must be
equal; uint8 images may differ by 1 at rounding boundaries.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unigrpo_jax.loading.bagel import load_bagel
from unigrpo_jax.model import autoencoder, context, guidance, latents, packing, posembed, vit
from unigrpo_jax.model.bagel import Bagel
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.kv_cache import KVCache, init_cache
from unigrpo_jax.rollout import eval_sampler

FORWARD_TOL = 1e-4
COMBINED_TOL = 3e-4
# Sampler settings of the fixture format's generation loops (fixture README, case 4).
GEN_LOOP_SAMPLER = dict(shift=3.0, text_scale=4.0, img_scale=1.0, interval=(0.4, 1.0))
GEN_LOOP_THINK_SAMPLER = dict(shift=3.0, text_scale=4.0, img_scale=1.5, interval=(0.8, 1.0))


@dataclasses.dataclass(frozen=True)
class Check:
    case: str
    name: str
    error: float
    tolerance: float
    kind: str = 'close'  # 'close' (float arrays), 'equal' (integers), 'image' (uint8)

    @property
    def passed(self) -> bool:
        return bool(self.error <= self.tolerance)


@dataclasses.dataclass
class Fixture:
    config: BagelConfig
    params: dict
    ae_params: dict
    cases: dict[str, np.ndarray]

    def case(self, name: str) -> dict[str, np.ndarray]:
        prefix = name + '.'
        return {k[len(prefix):]: v for k, v in self.cases.items() if k.startswith(prefix)}


def load_fixture(directory: str) -> Fixture:
    """Converts the fixture's checkpoint (float32) and loads its cases."""
    config, params, ae_params = load_bagel(directory, dtype=np.float32)
    with np.load(os.path.join(directory, 'cases.npz')) as f:
        cases = {k: f[k] for k in f.files}
    return Fixture(config, jax.device_put(params), jax.device_put(ae_params), cases)


def close(case: str, name: str, ours, ref, rel: float = FORWARD_TOL) -> Check:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Check(case, f'{name} (shape {ours.shape} != {ref.shape})', np.inf, 0.0)
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    return Check(case, name, err, rel * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0))


def equal(case: str, name: str, ours, ref) -> Check:
    """Integer arrays: error = number of differing entries, tolerance 0."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        return Check(case, f'{name} (shape {ours.shape} != {ref.shape})', np.inf, 0.0, 'equal')
    return Check(case, name, float(np.sum(ours != ref)), 0.0, 'equal')


def image_close(case: str, name: str, ours, ref) -> Check:
    """uint8 images: error = max |difference|, tolerance 1 (rounding boundaries)."""
    diff = np.abs(np.asarray(ours, np.int32) - np.asarray(ref, np.int32))
    return Check(case, name, float(diff.max()), 1.0, 'image')


# --- helpers over the context API ---------------------------------------------------------

def _cache(fx: Fixture, rows: int) -> KVCache:
    return init_cache(fx.config.llm, 1, max(rows, 1))


def _prefill(fx: Fixture, cache: KVCache, *segments: np.ndarray) -> KVCache:
    for ids in segments:
        cache, _ = context.prefill_text(fx.params, fx.config, cache, jnp.asarray(ids)[None])
    return cache


def _greedy(fx: Fixture, case: str, cache: KVCache, ref: dict, steps: int) -> list[Check]:
    """Greedy decoding from bos; compares fed tokens, positions and logits with the reference."""
    token = jnp.array([fx.config.tokens.bos])
    fed, positions, logits = [], [], []
    for _ in range(steps):
        fed.append(int(token[0]))
        positions.append(int(cache.rope[0]))
        cache, step_logits = context.decode_step(fx.params, fx.config, cache, token)
        logits.append(np.asarray(step_logits[0]))
        token = jnp.argmax(step_logits, axis=-1)
    checks = [equal(case, 'decode_input_ids', fed, ref['decode_input_ids']),
              equal(case, 'decode_position_ids', positions, ref['decode_position_ids']),
              close(case, 'decode_logits', np.stack(logits), ref['decode_logits'])]
    if 'greedy_next_ids' in ref:
        checks.append(equal(case, 'greedy_next_ids', np.argmax(np.stack(logits), -1),
                            ref['greedy_next_ids']))
    return checks


def _kv_checks(case: str, cache: KVCache, ref: dict, prefix: str = '') -> list[Check]:
    checks = []
    for layer in range(cache.k.shape[0]):
        for kind, buf in (('k', cache.k), ('v', cache.v)):
            name = f'{prefix}{kind}_cache_layer{layer}'
            want = ref[name]
            checks.append(close(case, name, buf[layer, 0, :want.shape[0]], want))
    return checks


def _velocity(fx: Fixture, cache: KVCache, x_t: np.ndarray, t, h: int, w: int):
    pos = latents.position_ids(h, w, fx.config.max_latent_size)
    v, hidden = context.image_velocity(fx.params, fx.config, cache, jnp.asarray(x_t)[None],
                                       jnp.full((1,), t, jnp.float32), jnp.asarray(pos))
    return np.asarray(v[0]), np.asarray(hidden[0])


_CFG_NAME = re.compile(r'v_text(?P<st>[\d.]+)(?:_img(?P<si>[\d.]+))?_(?P<mode>global|channel|'
                       r'textchannel|renorm_off)')


def _cfg_checks(case: str, ref: dict, v_cond, v_text, v_img) -> list[Check]:
    """Every ``v_text{st}[_img{si}]_{mode}`` CFG combination of a case, parsed from its name."""
    checks = []
    for name in sorted(ref):
        m = _CFG_NAME.fullmatch(name)
        if not m:
            continue
        mode = m['mode']
        renorm = {'textchannel': 'text_channel', 'renorm_off': 'global'}.get(mode, mode)
        v = guidance.combine(v_cond[None], v_text[None], v_img[None],
                             text_scale=float(m['st']), img_scale=float(m['si'] or 1.0),
                             renorm=renorm, renorm_min=1.0 if mode == 'renorm_off' else 0.0)
        checks.append(close(case, name, v[0], ref[name], COMBINED_TOL))
    return checks


def _chw_to_hwc(x):
    return np.moveaxis(np.asarray(x), -3, -1)


# --- the cases -------------------------------------------------------------------------------

def check_text_forward(fx: Fixture) -> list[Check]:
    c, ref = 'text_forward', fx.case('text_forward')
    ids = ref['input_ids']
    cache, hidden = context.prefill_text(fx.params, fx.config, _cache(fx, len(ids)),
                                         jnp.asarray(ids)[None])
    logits = context.text_logits(fx.params, fx.config, hidden)
    return [equal(c, 'position_ids', np.arange(len(ids)), ref['position_ids']),
            close(c, 'hidden', hidden[0], ref['hidden']),
            close(c, 'logits', logits[0], ref['logits']),
            *_kv_checks(c, cache, ref)]


def check_prefill_decode(fx: Fixture) -> list[Check]:
    c, ref = 'prefill_decode', fx.case('prefill_decode')
    steps = len(ref['decode_input_ids'])
    cache = _prefill(fx, _cache(fx, len(ref['seg1_ids']) + len(ref['seg2_ids']) + steps),
                     ref['seg1_ids'])
    positions = np.asarray(cache.rope[0]) + np.arange(len(ref['seg2_ids']))
    cache, hidden = context.prefill_text(fx.params, fx.config, cache,
                                         jnp.asarray(ref['seg2_ids'])[None])
    logits = context.text_logits(fx.params, fx.config, hidden)
    return [equal(c, 'seg2_position_ids', positions, ref['seg2_position_ids']),
            close(c, 'seg2_hidden', hidden[0], ref['seg2_hidden']),
            close(c, 'seg2_logits', logits[0], ref['seg2_logits']),
            *_greedy(fx, c, cache, ref, steps)]


def _think_contexts(fx: Fixture, rows: int):
    """cond = sys + user + think, cfg_text = sys, cfg_img = sys + user (case 3's contexts)."""
    ref = fx.case('gen_velocity')
    sys_ids, user, think = ref['seg_sys_ids'], ref['seg_user_ids'], ref['seg_think_ids']
    text = _prefill(fx, _cache(fx, rows), sys_ids)
    img = _prefill(fx, text, user)
    cond = _prefill(fx, img, think)
    return cond, text, img


def check_gen_velocity(fx: Fixture) -> list[Check]:
    c, ref = 'gen_velocity', fx.case('gen_velocity')
    h, w = (int(n) for n in ref['latent_token_hw'])
    rows = sum(len(ref[k]) for k in ('seg_sys_ids', 'seg_user_ids', 'seg_think_ids'))
    cond, text, img = _think_contexts(fx, rows)
    checks = [equal(c, 'latent_token_hw',
                    latents.token_grid(*ref['image_hw'], fx.config.latent_downsample), (h, w)),
              equal(c, 'cond.packed_vae_position_ids',
                    latents.position_ids(h, w, fx.config.max_latent_size),
                    ref['cond.packed_vae_position_ids'])]
    out = {}
    for name, cache in (('cond', cond), ('text_uncond', text), ('img_uncond', img)):
        out[name] = _velocity(fx, cache, ref['x_t'], ref['t'], h, w)
        checks += [close(c, f'v_{name}', out[name][0], ref[f'v_{name}']),
                   close(c, f'hidden_{name}', out[name][1], ref[f'hidden_{name}'])]
    for name, cache in (('cond', cond), ('cfg_text', text), ('cfg_img', img)):
        checks.append(equal(c, f'{name}.packed_position_ids',
                            np.full(h * w + 2, int(cache.rope[0])),
                            ref[f'{name}.packed_position_ids']))
        checks.append(equal(c, f'{name}.key_values_lens', cache.length,
                            ref[f'{name}.key_values_lens']))
    checks += _cfg_checks(c, ref, out['cond'][0], out['text_uncond'][0], out['img_uncond'][0])
    return checks + _kv_checks(c, cond, ref, 'cond_ctx.')


def _gen_loop(fx: Fixture, c: str, cond, text, img, settings: dict) -> list[Check]:
    ref = fx.case(c)
    p = fx.config.latent_patch_size
    h, w = ref['final_latent'].shape[1] // p, ref['final_latent'].shape[2] // p
    sampler = eval_sampler.SamplerConfig(
        num_timesteps=len(ref['t_steps']) + 1, shift=settings['shift'],
        cfg=eval_sampler.GuidanceConfig(text_scale=settings['text_scale'],
                                        img_scale=settings['img_scale'],
                                        interval=settings['interval']))
    pos = jnp.asarray(latents.position_ids(h, w, fx.config.max_latent_size))
    traj = eval_sampler.sample_ode(fx.params, fx.config, sampler,
                                   jnp.asarray(ref['init_noise'])[None], pos, cond, text, img)
    final = latents.unpatchify(traj.final, h, w, p)  # [1, 2h, 2w, C]
    decoded = autoencoder.decode(fx.ae_params, fx.config.ae, final)
    return [close(c, 't_steps', traj.t, ref['t_steps']),
            equal(c, 'cfg_active', traj.cfg_active, ref['cfg_active']),
            close(c, 'v_steps', traj.v[:, 0], ref['v_steps'], COMBINED_TOL),
            close(c, 'x_traj', traj.x[:, 0], ref['x_traj'], COMBINED_TOL),
            close(c, 'final_latent', np.moveaxis(np.asarray(final[0]), -1, 0),
                  ref['final_latent'], COMBINED_TOL),
            close(c, 'decoded', np.moveaxis(np.asarray(decoded[0]), -1, 0), ref['decoded'],
                  COMBINED_TOL),
            image_close(c, 'decoded_uint8', autoencoder.to_uint8(decoded)[0],
                        ref['decoded_uint8'])]


def check_gen_loop(fx: Fixture) -> list[Check]:
    ids = fx.case('gen_loop')['prompt_ids']
    cond = _prefill(fx, _cache(fx, len(ids)), ids)
    empty = _cache(fx, len(ids))
    return _gen_loop(fx, 'gen_loop', cond, empty, cond, GEN_LOOP_SAMPLER)


def check_gen_loop_think(fx: Fixture) -> list[Check]:
    ref = fx.case('gen_velocity')
    rows = sum(len(ref[k]) for k in ('seg_sys_ids', 'seg_user_ids', 'seg_think_ids'))
    return _gen_loop(fx, 'gen_loop_think', *_think_contexts(fx, rows), GEN_LOOP_THINK_SAMPLER)


def check_ae(fx: Fixture) -> list[Check]:
    c, ref, ae = 'ae', fx.case('ae'), fx.config.ae
    image = jnp.asarray(_chw_to_hwc(ref['encode_in_img']))
    decoded = autoencoder.decode(fx.ae_params, ae, jnp.asarray(_chw_to_hwc(ref['decode_in_z'])))
    moments = autoencoder.encoder_moments(fx.ae_params, ae, image)
    mean = autoencoder.encode(fx.ae_params, ae, image)
    return [close(c, 'decode_out', np.moveaxis(np.asarray(decoded), -1, 1), ref['decode_out']),
            close(c, 'encoder_raw', np.moveaxis(np.asarray(moments), -1, 1), ref['encoder_raw']),
            close(c, 'encode_mean', np.moveaxis(np.asarray(mean), -1, 1), ref['encode_mean'])]


def _vit_inputs(fx: Fixture, *images_chw):
    return vit.pack_images([_chw_to_hwc(im) for im in images_chw], fx.config.vit.patch_size,
                           fx.config.vit_max_num_patch_per_side)


def check_vit(fx: Fixture) -> list[Check]:
    c, ref = 'vit', fx.case('vit')
    patches, pos, seg = _vit_inputs(fx, ref['image0'], ref['image1'])
    seqlens = np.bincount(seg)
    siglip = vit.siglip_features(fx.params, fx.config, patches, pos, seg)
    embeds = vit.vit_embeddings(fx.params, fx.config, patches, pos, seg)
    connector = embeds - posembed.sincos_2d(pos, fx.config.vit_max_num_patch_per_side,
                                            fx.config.llm.hidden_size)
    return [close(c, 'packed_patches', patches, ref['packed_patches']),
            equal(c, 'position_ids', pos, ref['position_ids']),
            equal(c, 'seqlens', seqlens, ref['seqlens']),
            close(c, 'siglip_out', siglip, ref['siglip_out']),
            close(c, 'connector_out', connector, ref['connector_out']),
            close(c, 'llm_input_embeds', embeds, ref['llm_input_embeds'])]


def _prefill_vit(fx: Fixture, cache: KVCache, image_chw) -> tuple[KVCache, jax.Array]:
    patches, pos, _ = _vit_inputs(fx, image_chw)
    return context.prefill_vit_image(fx.params, fx.config, cache, jnp.asarray(patches)[None],
                                      jnp.asarray(pos))


def check_vlm(fx: Fixture) -> list[Check]:
    c, ref = 'vlm', fx.case('vlm')
    steps = len(ref['decode_input_ids'])
    n_vit = len(_vit_inputs(fx, ref['image'])[0])
    cache = _cache(fx, n_vit + 2 + len(ref['prompt_ids']) + steps)
    cache, image_hidden = _prefill_vit(fx, cache, ref['image'])
    cache, hidden = context.prefill_text(fx.params, fx.config, cache,
                                         jnp.asarray(ref['prompt_ids'])[None])
    logits = context.text_logits(fx.params, fx.config, hidden)
    return [close(c, 'image_block_hidden', image_hidden[0], ref['image_block_hidden']),
            close(c, 'prompt_hidden', hidden[0], ref['prompt_hidden']),
            close(c, 'prompt_logits', logits[0], ref['prompt_logits']),
            equal(c, 'kv_len_rope_after_image_and_prompt',
                  [int(cache.length[0]), int(cache.rope[0])],
                  ref['kv_len_rope_after_image_and_prompt']),
            *_greedy(fx, c, cache, ref, steps)]


def check_edit(fx: Fixture) -> list[Check]:
    c, ref, cfg = 'edit', fx.case('edit'), fx.config
    image = jnp.asarray(_chw_to_hwc(ref['vae_image']))[None]
    mean = autoencoder.encode(fx.ae_params, cfg.ae, image)[0]  # [2h, 2w, C]
    p = cfg.latent_patch_size
    h, w = mean.shape[0] // p, mean.shape[1] // p
    pos = jnp.asarray(latents.position_ids(h, w, cfg.max_latent_size))
    n_vit = len(_vit_inputs(fx, ref['vit_image'])[0])
    rows = h * w + 2 + n_vit + 2 + len(ref['prompt_ids'])
    cache, vae_hidden = context.prefill_vae_image(fx.params, cfg, _cache(fx, rows),
                                                  latents.patchify(mean, p)[None], pos)
    text_uncond, vit_hidden = _prefill_vit(fx, cache, ref['vit_image'])
    cond = _prefill(fx, text_uncond, ref['prompt_ids'])
    img_uncond = _prefill(fx, _cache(fx, rows), ref['prompt_ids'])
    v = {name: _velocity(fx, cache, ref['x_t'], ref['t'], h, w)[0]
         for name, cache in (('cond', cond), ('text_uncond', text_uncond),
                             ('img_uncond', img_uncond))}
    lens = [[int(x.length[0]), int(x.rope[0])] for x in (cond, text_uncond, img_uncond)]
    return [close(c, 'vae_latent_mean', np.moveaxis(np.asarray(mean), -1, 0),
                  ref['vae_latent_mean']),
            close(c, 'vae_block_hidden', vae_hidden[0], ref['vae_block_hidden']),
            close(c, 'vit_block_hidden', vit_hidden[0], ref['vit_block_hidden']),
            *(close(c, f'v_{n}', v[n], ref[f'v_{n}']) for n in v),
            *_cfg_checks(c, ref, v['cond'], v['text_uncond'], v['img_uncond']),
            equal(c, 'kv_lens_rope', lens, ref['kv_lens_rope']),
            equal(c, 'cond.packed_position_ids', np.full(h * w + 2, lens[0][1]),
                  ref['cond.packed_position_ids'])]


def check_train_forward(fx: Fixture) -> list[Check]:
    c, ref, cfg = 'train_forward', fx.case('train_forward'), fx.config
    p, total = cfg.latent_patch_size, int(ref['packed_position_ids'].shape[0])
    mask = packing.packed_mask(ref['sample_lens'], ref['split_lens'], list(ref['attn_modes']))
    blocks, start = [], 0
    for length in ref['sample_lens']:
        blocks.append(mask[start:start + length, start:start + length])
        start += length
    # Clean latents -> tokens, flow times, noisy tokens (bagel.md §5.9).
    x0 = np.concatenate([latents.patchify(_chw_to_hwc(lat)[:2 * h, :2 * w], p)
                         for lat, (h, w) in zip(ref['padded_latent'],
                                                ref['patchified_vae_latent_shapes'])])
    t = 1.0 / (1.0 + np.exp(-ref['packed_timesteps'].astype(np.float64)))
    s = cfg.timestep_shift
    t = (s * t / (1.0 + (s - 1.0) * t)).astype(np.float32)
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * ref['noise']
    # Packed embeddings: text and ViT tokens on the und expert (first), latents on gen.
    model = Bagel(cfg)
    text = model.apply({'params': fx.params}, jnp.asarray(ref['packed_text_ids'])[None],
                       method=Bagel.embed_text)[0]
    vit_seg = np.repeat(np.arange(len(ref['vit_token_seqlens'])), ref['vit_token_seqlens'])
    vit_emb = vit.vit_embeddings(fx.params, cfg, ref['packed_vit_tokens'],
                                 ref['packed_vit_position_ids'], vit_seg)
    lat = model.apply({'params': fx.params}, jnp.asarray(x_t)[None], jnp.asarray(t)[None],
                      jnp.asarray(ref['packed_latent_position_ids'])[None],
                      method=Bagel.embed_latents)[0]
    und_idx = np.concatenate([ref['packed_text_indexes'], ref['packed_vit_token_indexes']])
    order = np.concatenate([und_idx, ref['packed_vae_token_indexes']])
    x = jnp.concatenate([text, vit_emb, lat])[None]
    pos = jnp.asarray(ref['packed_position_ids'][order])[None]
    hidden = context.packed_forward(fx.params, cfg, x, pos, jnp.asarray(mask[order][:, order])[None],
                                    n_und=len(und_idx))
    last = np.zeros((total, hidden.shape[-1]), np.float32)
    last[order] = np.asarray(hidden[0])
    preds = model.apply({'params': fx.params}, jnp.asarray(last[ref['mse_loss_indexes']]),
                        method=Bagel.velocity)
    noisy = np.isin(ref['packed_vae_token_indexes'], ref['mse_loss_indexes'])
    mse = (np.asarray(preds) - (ref['noise'][noisy] - x0[noisy])) ** 2
    logits = model.apply({'params': fx.params}, jnp.asarray(last[ref['ce_loss_indexes']]),
                         method=Bagel.lm_logits)
    ce = -jax.nn.log_softmax(logits)[np.arange(len(logits)), ref['packed_label_ids']]
    checks = [close(c, 'noisy_latent_tokens', x_t, ref['noisy_latent_tokens'])]
    for i, block in enumerate(blocks):
        name = f'attention_mask_sample{i}'
        if name in ref:
            checks.append(equal(c, name, block, ref[name] == 0))
    return checks + [close(c, 'last_hidden', last, ref['last_hidden']),
                     close(c, 'mse_preds', preds, ref['mse_preds']),
                     close(c, 'mse', mse, ref['mse']),
                     close(c, 'ce_logits', logits, ref['ce_logits']),
                     close(c, 'ce', ce, ref['ce'])]


CASES: dict[str, Callable[[Fixture], list[Check]]] = {
    'text_forward': check_text_forward,
    'prefill_decode': check_prefill_decode,
    'gen_velocity': check_gen_velocity,
    'gen_loop': check_gen_loop,
    'gen_loop_think': check_gen_loop_think,
    'ae': check_ae,
    'vit': check_vit,
    'vlm': check_vlm,
    'edit': check_edit,
    'train_forward': check_train_forward,
}


def run_all(fx: Fixture) -> list[Check]:
    """Every case whose arrays the fixture holds."""
    present = {k.split('.', 1)[0] for k in fx.cases}
    return [check for name, fn in CASES.items() if name in present for check in fn(fx)]
