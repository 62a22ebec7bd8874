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
    # Seed of everything random: a random model's params, the prompt order, the rollout noise,
    # the minibatch order, LoRA's initial adapters, the evaluation noise.
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        # A converted checkpoint (launch/convert_bagel.py) or a Bagel release directory.
        checkpoint='',
        dtype='bfloat16',  # compute dtype; params f32 master copies, log-probs/SDE float32
        # 'flash': image blocks through a fused kernel (Pallas on TPU, cuDNN on GPUs); 'xla':
        # the float32 parity path (model/attention.py).
        attention='flash',
        # A random model of these sizes (model/config.py config_from_dict) when checkpoint is
        # '' (tests, the tiny config); None: the checkpoint's.
        random=ml_collections.FieldReference(None, field_type=ml_collections.ConfigDict),
    ))
    config.tokenizer = ''  # Bagel's tokenizer dir; launch/convert_bagel.py writes <dst>/tokenizer
    # The system segment before every prompt of a thinking run ('': none).
    config.system_prompt = GEN_THINK_SYSTEM_PROMPT

    config.total_steps = 1000  # RL iterations (rollout batches)
    # Prompts (data/prompts.py): TFDS builders over the named sources, prepared once.
    config.data = ml_collections.ConfigDict(dict(
        # Prompts to train on: 'geneval' | 'shapes_train' | 'shapes_eval' | a GenEval-format
        # .jsonl path. GenEval ships only its 553 evaluation prompts: train on your own file.
        train='geneval',
        # {tag: weight} over the training prompts' GenEval tags: a tag's share is scaled by
        # its weight (0 drops it; data/prompts.weight_by_tag). {}: the source as it is.
        # From the command line as a dict: --config.data.tag_weights="{'position': 1.0, ...}".
        tag_weights=ml_collections.ConfigDict(),
        eval='geneval',  # prompts of the evaluations (the same choices)
        data_dir='',  # where the prompt builders are prepared ('': <workdir>/tfds)
        max_prompt_tokens=64,  # prompt segment length incl. bos/eos (a longer prompt stops the run)
    ))
    config.reward = ml_collections.ConfigDict(dict(
        # A registered reward (unigrpo_jax/rewards, ShapesEval's 'shapes') or 'module:name'.
        name='geneval_remote',
        # The reward's options; geneval_remote: the fields of rewards/remote.py ServerSettings
        # (url, batch_size, timeout_s, retries, ...), threshold and strict.
        options=ml_collections.ConfigDict(dict(
            url='http://127.0.0.1:18085',  # the reward server (launch/reward_server.py)
            threshold=16.0,  # GenEval's position margin in pixels (rewards/geneval.py)
            strict=False,  # GenEval graded with FlowGRPO's partial credit (True: 0/1 strict)
        ))))
    # The reward of the evaluations (a copy of the training reward unless set).
    config.eval_reward = config.reward.copy_and_resolve_references()
    # Seconds a reward call may take before the step fails (its state kept to retry); a
    # remote reward's own per-request timeout and retries are in its options.
    config.reward_timeout_s = 600.0
    config.truncated_think = 'keep'  # a chain that never closed its reasoning: keep|zero|drop
    config.eval_every = 50  # RL steps between evaluations (and one before the first; 0: off)
    config.eval_prompts = 64  # the first N prompts of data.eval
    config.checkpoint_every = 25  # RL steps between checkpoints (also at the end, on SIGTERM)
    config.checkpoint_max_to_keep = 3  # the latest checkpoints kept
    config.checkpoint_keep_period = 250  # also keep every N-th step's checkpoint (0: none)
    config.max_skipped_updates = 3  # non-finite steps in a row before the run stops
    # The largest disagreement between the rollout and the update's replay of the same samples
    # under the same params before the run stops (ParityError), per term on its own ratio's
    # scale (the term's parity_metric). NFT has no likelihood to compare.
    config.parity_bounds = ml_collections.ConfigDict(dict(
        text=0.05,  # |log-prob difference| of a think token (the PPO clip 0.2: 0.18 in logs)
        # |RatioNorm log-ratio| of a FlowGRPO window step (the flow clip is 1e-6; bfloat16
        # rounding gives ~2e-6 on the tiny model, float32 ~1e-7)
        image=1e-4,
    ))
    config.distributed = 'auto'  # jax.distributed.initialize(): auto (launcher env) | on | off

    # Rollout (training data): temperature 1, 25 steps, shift 3, SDE window of 3 starting in
    # {0, 1, 2} (range [0, 5]), noise level 0.8, 1024 px, group size 24. Whether the policy
    # thinks and whether there is a window follow from objective.mode (train/settings.py):
    # flowgrpo draws without reasoning, textgrpo draws by the ODE alone (no window).
    config.rollout = ml_collections.ConfigDict(dict(
        group_size=24,  # chains per prompt (G), the group of the advantages
        max_think_tokens=1024,  # reasoning tokens sampled at most (incl. the closing eos)
        temperature=1.0,  # of the reasoning tokens (0: greedy)
        top_k=0,  # sample among the k likeliest tokens (0: off)
        top_p=1.0,  # nucleus sampling (1: off)
        num_timesteps=25,  # denoising grid points: N points, N - 1 steps
        shift=3.0,  # timestep shift s: t <- s t / (1 + (s - 1) t)
        noise_level=0.8,  # SDE noise level a of the window steps
        window_size=3,  # consecutive SDE steps, the trained ones (the others are ODE steps)
        window_max_start=2,  # the latest step the window starts at
        window_min_start=0,  # the window's start is drawn from [window_min_start, window_max_start]
        # 'chain': each chain draws its own initial noise (the paper's); 'group': the chains of a
        # prompt share it, so a group's rewards differ only by what its chains sampled.
        initial_noise='chain',
        image_size=(1024, 1024),  # (height, width) in pixels
    ))
    config.batch_size = 32  # prompts per rollout batch

    # Objective (algorithm.md §2-§6): modes unigrpo | flowgrpo | textgrpo.
    config.objective = ml_collections.ConfigDict(dict(
        # unigrpo: both terms, thinking; flowgrpo: image term, no thinking; textgrpo: text
        # term, thinking, images by the ODE (algorithm.md §8).
        mode='unigrpo',
        # The image term of the modes that train the image (rl/terms.py registers them):
        # 'flow_grpo' (the paper's FlowGRPO-Fast on the SDE window) or 'nft' (DiffusionNFT on
        # the forward process of the final images, docs/nft.md; no window: images by the ODE).
        image_term='flow_grpo',
        advantage_std='group',  # std of A = (R - mean) / (std + eps): 'group' or 'global' (batch)
        advantage_eps=1e-4,  # the eps of the advantage's denominator
        advantage_clip=5.0,  # advantages clipped to [-clip, clip]
        skip_zero_variance_groups=True,  # a group whose rewards are all equal leaves the loss
        text_clip=0.2,  # PPO clip range of the reasoning tokens' ratio (eps_t)
        flow_clip=1e-6,  # clip range of the window steps' RatioNorm ratio (eps_f)
        # 'seq_mean_token_mean': each chain's token mean, then the mean over chains (GRPO);
        # 'token_mean': the mean over all reasoning tokens of the minibatch.
        text_aggregation='seq_mean_token_mean',
        flow_weight=1.0,  # lambda, the image term's weight
        regularizer='velocity_mse',  # 'velocity_mse' | 'latent_kl' | 'none'
        velocity_mse_weight=1.5e-5,  # w of the window velocities' MSE to the frozen reference
        latent_kl_weight=0.0,  # beta of FlowGRPO's latent KL (regularizer='latent_kl')
        text_kl_weight=0.0,  # k3 KL of the reasoning tokens to the reference (0: not computed)
        dt_reweight=False,  # GRPO-Guard's 1/|dt| weight of the window steps
        # The image term back-propagates through the context KV into the understanding expert
        # (False: it stops there).
        image_grad_to_context=True,
        # DiffusionNFT (image_term='nft', docs/nft.md; its regulariser is the velocity MSE at
        # its points): the mixing strength of the implicit positive / negative policies.
        nft_beta=1.0,
        nft_adv_clip=5.0,  # advantages clipped to [-c, c], mapped to an optimality in [0, 1]
        nft_timesteps=3,  # forward-process points per chain (times of the rollout's grid)
    ))
    config.ppo_epochs = 2  # optimizer passes over each rollout batch
    config.num_minibatches = 1  # per rollout batch and epoch
    # The chains the reference forward and the updates run on: 'signal' (those with a nonzero
    # advantage and weight, gathered into the smallest of `update_buckets` fixed sizes; the
    # policy-gradient terms are exactly those of 'all', the regularisers average over the kept
    # chains: rl/compaction.py) or 'all' (every chain of the rollout batch).
    config.update_chains = 'signal'
    config.update_buckets = 4  # batch sizes a 'signal' update may take (compiled once each)
    # AdamW with a learning rate per expert (train/optimizer.py: which params are whose).
    config.optimizer = ml_collections.ConfigDict(dict(
        lr_und=1e-6,  # the understanding (reasoning) expert's rate
        lr_gen=3e-5,  # the generation (denoising) expert's rate
        b1=0.9,  # Adam's first-moment decay
        b2=0.999,  # Adam's second-moment decay
        eps=1e-8,  # Adam's eps
        weight_decay=0.0,  # AdamW's decoupled weight decay
        grad_clip=1.0,  # global gradient-norm clip
        warmup_steps=0,  # linear warm-up updates (0: none)
        final_lr_fraction=1.0,  # 1: constant rates (the paper); < 1: cosine decay to it
        # > 0: the optimizer also keeps a moving average of the params with this decay per
        # update, and evaluation, sampling and export use it (0: off, the paper)
        ema_decay=0.0))

    # LoRA on both experts' projections (the reference is then the base: adapters off).
    config.lora = ml_collections.ConfigDict(dict(
        enabled=False,  # train adapters instead of the full model
        rank=64,  # the adapters' rank r
        alpha=128.0,  # the update is scaled by alpha / rank
        # The projections that get adapters (train/lora.py TARGETS).
        targets=('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'),
        experts=('und', 'gen')))  # whose projections: 'und' (understanding), 'gen' (generation)

    # Mesh (data, fsdp, tensor); -1 = the remaining devices. Strategies: dp | fsdp | fsdp_tp |
    # tp, or a name from `rules` (a table {logical axis: mesh axis} of your own).
    config.parallelism = ml_collections.ConfigDict(dict(
        mesh=(1, -1, 1),  # devices along (data, fsdp, tensor); -1: the remaining devices
        strategy='fsdp',  # how the train state is sharded: dp | fsdp | fsdp_tp | tp | a rules name
        num_devices=-1,  # -1: all devices; N: the first N (e.g. tests, a slice of a host)
        rules=ml_collections.ConfigDict(),  # {name: {logical axis: mesh axis}}: strategies of yours
        # Rematerialisation of the decoder layers in the backward pass: a jax.checkpoint_policies
        # name, or None (keep every activation).
        remat_policy='nothing_saveable',
        # Memory settings (the algorithm is unchanged):
        # chains per device per gradient micro-step (and per reference-forward piece; 0 = a
        # whole minibatch at once).
        micro_batch_per_device=1,
        # Each micro-step differentiates the objective's terms one after the other, each on its
        # own replay of the context (the memory of the larger term, e.g. the text term's
        # logits apart from the window images; one more context forward and backward).
        split_terms=False,
        rollout_prompts_per_device=1,  # prompts per device per rollout call (0 = all)
        # Each group's chains rolled out as this many pieces (rows of group_size / pieces
        # chains, each counted as a prompt above): > 1 splits a group over devices or calls,
        # for fewer prompts than devices (v5e) or a group too large for one device.
        rollout_group_pieces=1,
        # The strategy placing the compute-dtype copy of the policy the rollout samples from
        # ('dp': replicated; 'fsdp': sharded).
        rollout_strategy='dp',
    ))

    # Evaluation: Bagel defaults, 50 steps, text CFG 4.0 on (0.4, 1.0].
    config.eval = ml_collections.ConfigDict(dict(
        num_timesteps=50,  # ODE grid points: N points, N - 1 Euler steps
        shift=3.0,  # timestep shift of the evaluation grid
        cfg_text_scale=4.0,  # text classifier-free guidance scale (1: off)
        cfg_img_scale=1.0,  # image classifier-free guidance scale (1: off)
        cfg_interval=(0.4, 1.0),  # guidance is on for steps with lo < t <= hi
        cfg_renorm_type='global',  # 'global' | 'channel' | 'text_channel' (model/guidance.py)
        cfg_renorm_min=0.0,  # lower clip of the renorm ratio |v_cond| / |v_cfg|
        greedy_think=True,  # greedy reasoning (False: sampled as in the rollout)
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
        config.update_buckets = 2  # fewer programs to compile in a 3-step run
        config.checkpoint_every = 2
        config.distributed = 'off'
        config.parallelism.update(mesh=(-1, 1, 1), strategy='dp', remat_policy=None,
                                  micro_batch_per_device=0, rollout_prompts_per_device=0)
    elif arg:
        raise ValueError(f'unknown config argument {arg!r}; expected nothing or "tiny"')
    return config
