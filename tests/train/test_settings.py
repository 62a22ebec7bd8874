"""An RL config checked in one place before anything is built, and what it derives."""

import pytest

from configs import bagel_grpo
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.train import settings


def _config(**kw):
    cfg = bagel_grpo.get_config('tiny')
    cfg.parallelism.mesh = (-1, 1, 1)
    for k, v in kw.items():
        *path, last = k.split('.')
        target = cfg
        for p in path:
            target = target[p]
        target[last] = v
    return cfg


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 3, 'batch_size=3'),
    ('rollout.window_max_start', 9, 'window_max_start=9'),
    ('rollout.window_min_start', 3, 'window_min_start=3: must be in .0, rollout.window_max_start=2.'),
    ('rollout.initial_noise', 'prompt', "rollout.initial_noise='prompt'"),
    ('rollout.window_size', 0, "rollout.window_size=0: objective.mode='unigrpo' with "
     "objective.image_term='flow_grpo' trains on an SDE window"),
    ('rollout.noise_level', 0.0, 'noise_level=0.0: the SDE window needs'),
    ('rollout.top_p', 0.0, 'rollout.top_p=0.0'),
    ('rollout.temperature', -1.0, 'rollout.temperature=-1.0'),
    ('rollout.group_size', 1, 'rollout.group_size=1'),
    ('reward.name', 'nope', "reward.name='nope'"),
    ('objective.mode', 'grpo', "objective.mode='grpo'"),
    ('objective.image_term', 'dpo', "objective.image_term='dpo': expected one of ('flow_grpo', "
     "'nft')"),
    ('objective.nft_timesteps', 6, 'objective.nft_timesteps=6: must be in .1, 5.'),
    ('objective.nft_beta', 0.0, 'objective.nft_beta=0.0: must be > 0'),
    ('objective.advantage_clip', 0.0, 'objective.advantage_clip=0.0: must be > 0'),
    ('objective.regularizer', 'l2', "objective.regularizer='l2'"),
    ('objective.regularizer', 'latent_kl', 'latent_kl_weight=0.0'),
    ('objective.advantage_std', 'batch', "advantage_std='batch'"),
    ('num_minibatches', 5, 'num_minibatches=5'),
    ('parallelism.strategy', 'zero3', "parallelism.strategy='zero3'"),
    ('parallelism.mesh', (3, 1, 1), 'needs 3 devices'),
    ('truncated_think', 'maybe', "truncated_think='maybe'"),
    ('update_chains', 'some', "update_chains='some'"),
    ('update_buckets', 0, 'update_buckets=0'),
    ('optimizer.final_lr_fraction', 0.0, 'optimizer.final_lr_fraction=0.0'),
    ('eval.cfg_interval', (0.5, 0.2), 'cfg interval'),
    ('parallelism.micro_batch_per_device', 3, 'micro_batch_per_device=3: 6 chains'),
    ('parallelism.micro_batch_per_device', -1, 'micro_batch_per_device=-1'),
    ('parallelism.rollout_prompts_per_device', 3, 'rollout_prompts_per_device=3: must divide'),
    ('parallelism.rollout_group_pieces', 3, 'rollout_group_pieces=3: must divide '
     'rollout.group_size=4'),
    ('parallelism.rollout_strategy', 'zero3', "parallelism.rollout_strategy='zero3'"),
    ('model.attention', 'splash', "model.attention='splash'"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        settings.settings(_config(**{field: value}), 2)


@pytest.mark.parametrize('mode,image_term', [('textgrpo', 'flow_grpo'), ('unigrpo', 'nft')])
def test_dt_reweight_without_an_sde_window_is_an_error_not_a_silent_no_op(mode, image_term):
    with pytest.raises(ConfigError, match=f"dt_reweight=True: .*mode='{mode}' with "
                                          f"image_term='{image_term}' has none"):
        settings.settings(_config(**{'objective.mode': mode, 'objective.image_term': image_term,
                                     'objective.dt_reweight': True}), 2)
    assert settings.settings(_config(**{'objective.dt_reweight': True}), 2).objective.dt_reweight


def test_the_7b_config_says_which_paths_it_needs():
    """The design card's command without a checkpoint: a named error, not a missing path."""
    cfg = bagel_grpo.get_config()
    with pytest.raises(ConfigError, match='model.checkpoint.*launch/convert_bagel.py'):
        settings.settings(cfg, 8)
    cfg.model.checkpoint = '/data/bagel_converted'
    with pytest.raises(ConfigError, match="config.tokenizer='': set --config.tokenizer"):
        settings.settings(cfg, 8)


def test_valid_config_derives_its_settings():
    s = settings.settings(_config(num_minibatches=2), 2)
    assert s.mesh_shape == (2, 1, 1)
    assert (s.chains, s.minibatch) == (8 * 4, 16)
    assert s.total_updates == 3 * 2 * 2  # steps x epochs x minibatches
    assert s.objective.schedule is s.rollout.schedule  # one sampler for rollout and replay
    assert s.rollout.think and s.schedule.window_size == 2 and s.lora is None


def test_the_paper_s_step_splits_into_micro_steps_not_more_updates():
    """The 7B config on 8 devices: 768 chains, 2 optimizer updates per rollout batch
    (ppo_epochs x num_minibatches, algorithm.md §6), each accumulated over 96 micro-steps of
    one chain per device; the reference forward in 96 pieces; 4 rollout calls of one prompt
    per device."""
    cfg = bagel_grpo.get_config()
    s = settings.settings(cfg, 8, check_inputs=False)
    assert (s.chains, s.minibatch, s.micro_batches) == (768, 768, 96)
    assert s.reference_micro_batches == 96 and s.rollout_calls == 4
    assert s.total_updates == cfg.total_steps * 2
    cfg.parallelism.micro_batch_per_device = 0  # a whole minibatch at once: same updates
    s0 = settings.settings(cfg, 8, check_inputs=False)
    assert (s0.micro_batches, s0.total_updates) == (1, s.total_updates)


def test_signal_updates_take_a_few_fixed_sizes_that_split_like_the_batch():
    """32 chains on 2 devices: 'all' updates the whole batch; 'signal' compacts it to one of 4
    sizes, each split into 2 minibatches over 2 devices (a multiple of 4), or into micro-steps
    of 2 chains per device (a multiple of 2 x 2 x 2 = 8)."""
    assert settings.settings(_config(update_chains='all'), 2).buckets == (32,)
    s = settings.settings(_config(num_minibatches=2, update_buckets=4), 2)
    assert s.buckets == (8, 16, 24, 32) and s.num_minibatches == 2
    assert (s.micro_batches_of(12), s.reference_pieces_of(24)) == (1, 2)
    s = settings.settings(_config(**{'num_minibatches': 2, 'update_buckets': 4,
                                     'parallelism.micro_batch_per_device': 2}), 2)
    assert s.buckets == (8, 16, 24, 32)
    assert (s.micro_batches_of(12), s.reference_pieces_of(24)) == (3, 6)
    s = settings.settings(_config(update_buckets=8), 2)  # no more sizes than the unit allows
    assert s.buckets == (4, 8, 12, 16, 20, 24, 28, 32)


@pytest.mark.parametrize('mode,think,window', [
    ('unigrpo', True, 2), ('flowgrpo', False, 2), ('textgrpo', True, 0)])
def test_mode_decides_thinking_and_the_window(mode, think, window):
    """No other field says whether a mode thinks or has an SDE window: a textgrpo config keeps
    its window settings and gets none."""
    s = settings.settings(_config(**{'objective.mode': mode}), 2)
    assert (s.rollout.think, s.schedule.window_size, s.objective.think) == (think, window, think)
    assert (s.objective.trains_text, s.objective.trains_image) == (mode != 'flowgrpo',
                                                             mode != 'textgrpo')
    if mode == 'textgrpo':
        assert s.schedule.window_max_start == 0
