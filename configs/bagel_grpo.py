r"""UniGRPO on Bagel-7B-MoT with the paper's hyper-parameters (algorithm.md §7).

    python launch/train.py --config=configs/bagel_grpo.py --config.model.checkpoint=/path/to/converted
    python launch/bench_rollout.py --config=configs/bagel_grpo.py:tiny

``:tiny`` runs the same code path with a random tiny Bagel on a CPU.
"""

import ml_collections

# Bagel's think system prompt for generation (inferencer.py:15-19, note the space before \n).
GEN_THINK_SYSTEM_PROMPT = (
    'You should first think about the planning process in the mind and then generate the image. '
    '\nThe planning process is enclosed within <think> </think> tags, i.e. <think> planning '
    'process here </think> image here')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        # A converted checkpoint (launch/convert_bagel.py) or a Bagel release directory.
        checkpoint='',
        dtype='bfloat16',  # compute dtype; params f32 master copies, log-probs/SDE float32
        # 'flash': image blocks through a fused kernel (Pallas on TPU, cuDNN on GPUs); 'xla':
        # the float32 parity path (model/attention.py).
        attention='flash',
        random=ml_collections.FieldReference(None, field_type=ml_collections.ConfigDict),
    ))
    config.tokenizer = ''  # Bagel's tokenizer dir; launch/convert_bagel.py writes <dst>/tokenizer
    config.system_prompt = GEN_THINK_SYSTEM_PROMPT

    config.total_steps = 1000  # RL iterations (rollout batches)
    # Prompts: 'geneval' | 'shapes_train' | 'shapes_eval' | a GenEval-format .jsonl path.
    # GenEval ships only its 553 evaluation prompts: train on your own prompt file.
    config.data = ml_collections.ConfigDict(dict(
        train='geneval', eval='geneval', data_dir='', max_prompt_tokens=64))
    config.reward = ml_collections.ConfigDict(dict(
        name='geneval_remote',
        options=ml_collections.ConfigDict(dict(url='http://127.0.0.1:18085', threshold=16.0))))
    config.eval_reward = config.reward.copy_and_resolve_references()
    config.truncated_think = 'keep'  # a chain that never closed its reasoning: keep|zero|drop
    config.eval_every = 50
    config.eval_prompts = 64
    config.checkpoint_every = 25
    config.checkpoint_max_to_keep = 3
    config.checkpoint_keep_period = 250
    config.max_skipped_updates = 3  # non-finite steps in a row before the run stops
    # Largest |log-prob| difference, text or image, between the rollout and the first update's
    # replay of the same samples under the same params, before the run stops (ParityError).
    config.parity_bound = 0.05
    config.distributed = 'auto'  # jax.distributed.initialize(): auto (launcher env) | on | off

    # Rollout (training data): temperature 1, 25 steps, shift 3, SDE window of 3 starting in
    # {0, 1, 2} (range [0, 5]), noise level 0.8, 1024 px, group size 24. Whether the policy
    # thinks and whether there is a window follow from objective.mode (train/settings.py):
    # flowgrpo draws without reasoning, textgrpo draws by the ODE alone (no window).
    config.rollout = ml_collections.ConfigDict(dict(
        group_size=24,
        max_think_tokens=1024,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_timesteps=25,
        shift=3.0,
        noise_level=0.8,
        window_size=3,
        window_max_start=2,
        window_min_start=0,  # the window's start is drawn from [window_min_start, window_max_start]
        # 'chain': each chain draws its own initial noise (the paper's); 'group': the chains of a
        # prompt share it, so a group's rewards differ only by what its chains sampled.
        initial_noise='chain',
        image_size=(1024, 1024),
    ))
    config.batch_size = 32  # prompts per rollout batch

    # Objective (algorithm.md §2-§6): modes unigrpo | flowgrpo | textgrpo.
    config.objective = ml_collections.ConfigDict(dict(
        mode='unigrpo',
        advantage_std='group',  # or 'global'
        advantage_eps=1e-4,
        advantage_clip=5.0,
        skip_zero_variance_groups=True,
        text_clip=0.2,
        flow_clip=1e-6,
        text_aggregation='seq_mean_token_mean',  # or 'token_mean'
        flow_weight=1.0,
        regularizer='velocity_mse',  # 'velocity_mse' | 'latent_kl' | 'none'
        velocity_mse_weight=1.5e-5,
        latent_kl_weight=0.0,
        text_kl_weight=0.0,
        dt_reweight=False,
        image_grad_to_context=True,
    ))
    config.ppo_epochs = 2
    config.num_minibatches = 1  # per rollout batch and epoch
    config.optimizer = ml_collections.ConfigDict(dict(
        lr_und=1e-6, lr_gen=3e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
        warmup_steps=0,  # linear warm-up updates (0: none)
        final_lr_fraction=1.0))  # 1: constant rates (the paper); < 1: cosine decay to it

    # LoRA on both experts' projections (the reference is then the base: adapters off).
    config.lora = ml_collections.ConfigDict(dict(
        enabled=False, rank=64, alpha=128.0,
        targets=('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'),
        experts=('und', 'gen')))

    # Mesh (data, fsdp, tensor); -1 = the remaining devices. Strategies: dp | fsdp | fsdp_tp |
    # tp, or a name from `rules` (a table {logical axis: mesh axis} of your own).
    config.parallelism = ml_collections.ConfigDict(dict(
        mesh=(1, -1, 1), strategy='fsdp',
        num_devices=-1,  # -1: all devices; N: the first N (e.g. tests, a slice of a host)
        rules=ml_collections.ConfigDict(),
        remat_policy='nothing_saveable',
        # Memory settings (the algorithm is unchanged): chains per device per gradient
        # micro-step (and per reference-forward piece; 0 = a whole minibatch at once), prompts
        # per device per rollout call (0 = all), and the strategy placing the compute-dtype copy
        # of the policy the rollout samples from ('dp': replicated; 'fsdp': sharded).
        micro_batch_per_device=1,
        rollout_prompts_per_device=1,
        rollout_strategy='dp',
    ))

    # Evaluation: Bagel defaults, 50 steps, text CFG 4.0 on (0.4, 1.0].
    config.eval = ml_collections.ConfigDict(dict(
        num_timesteps=50,
        shift=3.0,
        cfg_text_scale=4.0,
        cfg_img_scale=1.0,
        cfg_interval=(0.4, 1.0),
        cfg_renorm_type='global',
        cfg_renorm_min=0.0,
        greedy_think=True,
    ))

    if arg == 'tiny':
        config.model.update(dtype='float32', attention='xla')
        config.model.random = ml_collections.ConfigDict(dict(
            llm=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0),
            ae=dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, groupnorm_groups=4,
                    downsample=2),
            tokens=dict(bos=120, eos=121, start_of_image=122, end_of_image=123),
            latent_patch_size=2, max_latent_size=8, vit_max_num_patch_per_side=8,
        ))
        config.rollout.update(group_size=4, max_think_tokens=8, num_timesteps=6, window_size=2,
                              image_size=(32, 32))
        config.batch_size = 8
        config.eval.num_timesteps = 6
        config.optimizer.update(lr_und=1e-3, lr_gen=1e-3)
        config.tokenizer = 'data/shapes_eval/tokenizer'
        config.system_prompt = ''
        config.total_steps = 3
        config.data.update(train='shapes_train', eval='shapes_eval', max_prompt_tokens=16)
        config.reward = ml_collections.ConfigDict(dict(name='shapes',
                                                       options=ml_collections.ConfigDict()))
        config.eval_reward = config.reward.copy_and_resolve_references()
        config.eval_every = 3
        config.eval_prompts = 8
        config.checkpoint_every = 2
        config.distributed = 'off'
        config.parallelism.update(mesh=(-1, 1, 1), strategy='dp', remat_policy=None,
                                  micro_batch_per_device=0, rollout_prompts_per_device=0)
    elif arg:
        raise ValueError(f'unknown config argument {arg!r}; expected nothing or "tiny"')
    return config
