"""Analytic counts of unigrpo_jax/bench/programs.py (train step FLOPs and tokens) and its
model sizes, against hand counts."""

import dataclasses

from configs import bagel_grpo
from unigrpo_jax.bench import perf, programs
from unigrpo_jax.train import settings


def test_train_step_flops_by_hand():
    """Tiny model, 2 chains, S = P = 4, T = 2, W = 1, 32x32 px = 64 latent tokens of 16."""
    cfg = bagel_grpo.get_config('tiny')
    config = programs.model_config('tiny', cfg)
    obj = settings.objective_config(cfg, settings.schedule(cfg))
    w = programs.Workload(batch=2, system_len=4, prompt_len=4, think_tokens=2, image_blocks=1,
                          image_size=(32, 32))
    assert w.context == 4 + 4 + 4 and w.latent_tokens(config) == 64
    p, hd = 36864, 4 * 16  # matmul params per expert layer; heads x head_dim

    def text(n, before):  # 2 layers; query i sees `before` + i rows
        return 2 * (2 * n * p + 4 * (n * before + n * (n + 1) // 2) * hd)

    ctx = text(4, 0) + text(4, 4) + text(4, 8)
    logits = 2 * 2 * 64 * 128
    image = 2 * (2 * 66 * p + 4 * 66 * (12 + 66) * hd) + 2 * 64 * 2 * 16 * 64 + 2 * (
        256 * 64 + 64 * 64)
    # unigrpo, velocity_mse: policy context, logits and image with gradients; the reference's
    # outputs come with the batch (prepared once per rollout batch), no FLOPs of the step.
    expected = 2 * 3 * (ctx + logits + image)
    assert programs.train_step_flops(config, obj, w) == expected
    assert programs.train_step_tokens(config, w) == 2 * (12 + 66)
    assert perf.decode_step_flops(config.llm, 2, 12) == 2 * (text(1, 12) + 2 * 64 * 128)
    flow = dataclasses.replace(obj, mode='flowgrpo', regularizer='none',
                               image_grad_to_context=False)
    w_flow = programs.Workload(batch=2, system_len=0, prompt_len=4, think_tokens=0,
                               image_blocks=1, image_size=(32, 32))
    image_flow = image - 2 * 4 * 66 * 8 * hd  # the context is the 4 prompt rows, not 12
    assert programs.train_step_flops(config, flow, w_flow) == 2 * (3 * image_flow + text(4, 0))


def test_1b_proxy_size():
    llm = perf.bagel_1b_config().llm
    assert (llm.hidden_size, llm.num_hidden_layers, llm.head_dim) == (2048, 16, 128)
    matmuls = 2048 * 2048 * 2 + 2 * 2048 * 512 + 3 * 2048 * 5504
    layer = matmuls + 2048 + 2 * 512 + 2 * 128 + 2 * 2048  # biases, q/k norms, RMSNorms
    assert perf.decoder_param_count(llm) == 2 * 16 * layer + 2 * 32000 * 2048 + 2 * 2048
    assert round(perf.decoder_param_count(llm) / 1e9, 2) == 1.55
