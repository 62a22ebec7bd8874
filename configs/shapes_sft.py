r"""SFT of the tiny pixel-space Bagel on ShapesEval (shapes_eval.md), two arms.

    python launch/train_sft.py --config=configs/shapes_sft.py:think --workdir=runs/sft_think
    python launch/train_sft.py --config=configs/shapes_sft.py:nothink --workdir=runs/sft_nothink
    python launch/evaluate.py --workdir=runs/sft_think

``:think`` trains ``[bos] prompt [eos] [bos] <think> plan </think> [eos] [soi] image [eoi]`` (CE on
the plan, flow matching on the image); ``:nothink`` trains ``[bos] prompt [eos] [soi] image
[eoi]``. No system segment (the rollout's ``system_ids=None``). ``:test`` (or ``think,test`` /
``nothink,test``) shrinks the same code path for tests. Sequence layout: ``unigrpo_jax/shapes/sft/samples.py``.
"""

import ml_collections

from unigrpo_jax.shapes import tokenizer as shapes_tokenizer

# Pixels in [-1, 1] of SFT images: mean 0.944, std 0.283 (4000 samples, mostly white canvas).
# Latents scale * (x - shift): centred, std ~0.42; the spec's prototype learnt at std 0.28.
PIXEL_SCALE = 1.5
PIXEL_SHIFT = 0.9


def _model(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int) -> dict:
    vocab = shapes_tokenizer.vocabulary()
    bos, eos, soi, eoi = (vocab[t] for t in shapes_tokenizer.bagel_tokenizer.BAGEL_TOKENS)
    return dict(
        llm=dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=mlp,
                 num_hidden_layers=layers, num_attention_heads=heads,
                 num_key_value_heads=kv_heads, rope_theta=10000.0),
        ae=dict(kind='identity', in_channels=3, z_channels=3, scale_factor=PIXEL_SCALE,
                shift_factor=PIXEL_SHIFT, resolution=32),
        tokens=dict(bos=bos, eos=eos, start_of_image=soi, end_of_image=eoi),
        latent_patch_size=4, max_latent_size=8, vit_max_num_patch_per_side=8,
        timestep_shift=1.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = set((arg or 'think').split(','))
    unknown = args - {'think', 'nothink', 'test', 'stage1', 'stage2'}
    if unknown or {'think', 'nothink'} <= args or {'stage1', 'stage2'} <= args:
        raise ValueError(f'unknown config argument {arg!r}; expected think | nothink, '
                         'optionally with ,stage1 | ,stage2 and ,test (or test alone)')
    config = ml_collections.ConfigDict()
    config.seed = 0  # seed of the model's init, the training samples, the flow times and noise
    config.think = 'nothink' not in args  # the :think layout (a plan before the image) or not
    config.tokenizer = 'data/shapes_eval/tokenizer'  # the ShapesEval word-level tokenizer
    config.eval_prompts = 'data/shapes_eval/eval_prompts.jsonl'  # the evaluation prompts' file

    config.model = ml_collections.ConfigDict(dict(
        dtype='float32',
        attention='xla',
        # The sizes of the model (model/config.py config_from_dict), drawn at random unless
        # init_from is set.
        random=_model(hidden=128, layers=4, heads=4, kv_heads=4, mlp=512),
    ))

    # Sequence layout: fixed padded segment lengths (tokens incl. bos/eos) for a static shape.
    config.data = ml_collections.ConfigDict(dict(
        batch_size=64,           # samples per SFT step
        # Prompt segment: "a photo of a red circle and a blue square" + bos/eos.
        max_prompt_tokens=12,
        # Plan tokens incl. eos (the RL rollout's max_think_tokens): a 4-object plan is 21
        # words + eos.
        max_think_tokens=22,
        text_dropout=0.1,        # drop all text (empty context) for classifier-free guidance
        image_size=(32, 32),     # (height, width) in pixels
        num_examples=0,          # 0: fresh samples every step; N: a fixed TFDS dataset of N
        data_dir='',             # where that dataset is prepared ('': <workdir>/tfds)
    ))
    config.loss = ml_collections.ConfigDict(dict(
        ce_weight=1.0,   # weight of the plan tokens' cross-entropy
        mse_weight=1.0,  # weight of the flow-matching velocity MSE on the image
    ))
    # The RL optimizer (train/optimizer.py) with one rate for both experts.
    config.optimizer = ml_collections.ConfigDict(dict(
        lr_und=1e-3, lr_gen=1e-3, warmup_steps=50 if 'stage2' in args else 100,
        final_lr_fraction=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=1e-4, grad_clip=1.0,
        ema_decay=0.0))

    # The RL train step's mesh and strategies (configs/bagel_grpo.py); one device by default
    # (the shipped models were trained on one; -1: all devices, batch split over them).
    config.parallelism = ml_collections.ConfigDict(dict(
        mesh=(-1, 1, 1), strategy='dp', num_devices=1, rules=ml_collections.ConfigDict()))

    config.init_from = ''  # a checkpoint directory to start from (fresh optimizer), or ''
    # Steps of the learning-rate schedule (and of the run, unless stop_after). Batch 64 takes
    # 0.56 s/step on 2 idle cores: 1000 steps ~10 min (59% with thinking: a drawer that cannot
    # yet put two colours where planned, which RL does not teach); 3500 steps reach 97.5%
    # (checkpoints/shapes_sft_think_long), which leaves RL nothing to measure.
    config.steps = 1000
    # End at this step of the `steps`-long schedule (an intermediate model, the learning rate not
    # yet decayed); 0: train all `steps`.
    config.stop_after = 0
    # The shipped RL starting points (checkpoints/README.md) are 2000 SFT steps in two stages:
    # `stage1` = 500 steps of a 3500-step schedule; `stage2` = 1500 steps of a 3000-step
    # continuation from it (fresh optimizer, pass --config.init_from=<stage 1>/final). Run to
    # its end, the same 2000-step budget solves the world (98.8%) and leaves RL nothing to do.
    if 'stage1' in args:
        config.steps, config.stop_after = 3500, 500
    if 'stage2' in args:
        config.steps, config.stop_after = 3000, 1500
    config.log_every = 50  # steps between the logged (averaged) training metrics
    config.checkpoint_every = 500  # steps between params-only checkpoints step_{k}/, 0 = off
    config.eval_every = 500        # steps between quick evals (eval.quick_per_tag per tag), 0 = off

    # Evaluation: greedy think, Euler ODE (24 steps, shift 3), text CFG on the empty context.
    config.eval = ml_collections.ConfigDict(dict(
        num_timesteps=25,
        shift=3.0,
        cfg_text_scale=2.0,
        cfg_img_scale=1.0,
        cfg_interval=(0.0, 1.0),
        cfg_renorm_type='global',
        cfg_renorm_min=0.0,
        batch_size=80,        # prompts per evaluation batch
        quick_per_tag=10,     # prompts per tag of the evaluations during training
        final_per_tag=0,      # prompts per tag of the final evaluation (0: all 40)
        seed=0,               # seed of the evaluation's noise
    ))

    if 'test' in args:
        config.model.random = _model(hidden=32, layers=2, heads=2, kv_heads=1, mlp=64)
        config.data.batch_size = 8
        config.optimizer.update(lr_und=3e-3, lr_gen=3e-3, warmup_steps=2)
        config.steps = 20
        config.stop_after = 10 if config.stop_after else 0
        config.log_every = 5
        config.checkpoint_every = 10
        config.eval_every = 0
        config.eval.update(num_timesteps=4, batch_size=12, quick_per_tag=2, final_per_tag=2)
    return config
