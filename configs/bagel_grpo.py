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
        random=ml_collections.FieldReference(None, field_type=ml_collections.ConfigDict),
    ))
    config.system_prompt = GEN_THINK_SYSTEM_PROMPT

    # Rollout (training data): temperature 1, 25 steps, shift 3, SDE window of 3 starting in
    # {0, 1, 2} (range [0, 5]), noise level 0.8, 1024 px, group size 24.
    config.rollout = ml_collections.ConfigDict(dict(
        group_size=24,
        think=True,
        max_think_tokens=1024,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_timesteps=25,
        shift=3.0,
        noise_level=0.8,
        window_size=3,
        window_max_start=2,
        image_size=(1024, 1024),
    ))
    config.batch_size = 32  # prompts per rollout batch

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
        config.model.dtype = 'float32'
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
    elif arg:
        raise ValueError(f'unknown config argument {arg!r}; expected nothing or "tiny"')
    return config
