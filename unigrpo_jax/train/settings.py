"""An RL config checked and turned into the frozen objects the programs are built from.

``settings(config, num_devices)`` is the one place a config is validated: it runs before any
model is built or compiled, and every error names the field, its value and what is allowed
(``ConfigError``). What one setting implies is derived here once:

- ``objective.mode`` decides whether the policy thinks (``objective.thinks``), and with
  ``objective.image_term`` which terms train (``objective.term_list``) and whether the rollout
  has an SDE window (``objective.has_window``: FlowGRPO's image term needs one; TextGRPO's and
  NFT's images are drawn by the ODE);
- one ``Schedule`` (token sampler, timesteps, shift, noise level, window, image size) is held by
  both the ``RolloutConfig`` and the ``ObjectiveConfig``;
- the chains per rollout batch and per minibatch, and the number of optimizer updates
  (``num_minibatches`` x ``ppo_epochs`` per rollout batch, algorithm.md §6);
- how the memory settings cut that work without changing it: ``parallelism.
  micro_batch_per_device`` chains per device per gradient micro-step (the update accumulates
  them; the reference forward runs in pieces of the same size), ``parallelism.
  rollout_prompts_per_device`` prompts per device per rollout call and ``parallelism.
  rollout_group_pieces`` (a group's chains split over devices or calls: ``rollout_split``).
"""

from __future__ import annotations

import dataclasses

from unigrpo_jax.model import attention
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rewards import registry
from unigrpo_jax.rl import advantages, compaction, losses, objective, terms
from unigrpo_jax.rollout import eval_sampler, generate
from unigrpo_jax.rollout.rollout import INITIAL_NOISE, RolloutConfig
from unigrpo_jax.rollout.sampling import TokenSampler
from unigrpo_jax.rollout.schedule import Schedule
from unigrpo_jax.train.lora import EXPERTS, TARGETS, LoraSpec


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the RL programs are built from, derived from one config."""

    mesh_shape: tuple[int, ...]   # parallelism.mesh with -1 resolved: (data, fsdp, tensor)
    rollout: RolloutConfig        # the rollout section, thinking by objective.mode
    objective: objective.ObjectiveConfig  # the objective section, with the rollout's schedule
    eval_sampler: eval_sampler.SamplerConfig  # the eval section's ODE sampler and CFG
    eval_tokens: TokenSampler     # how evaluation samples reasoning (greedy or the rollout's)
    lora: LoraSpec | None         # the lora section; None: the full model trains
    chains: int                   # per rollout batch: batch_size * group_size
    minibatch: int                # chains per optimizer update
    # The batch sizes an update may run on (``rl.compaction``): ``(chains,)`` with
    # ``update_chains='all'``, else ``update_buckets`` sizes up to ``chains``.
    buckets: tuple[int, ...]
    micro_step_chains: int        # chains per gradient micro-step (0: a whole minibatch)
    split_terms: bool             # each micro-step differentiates the objective's terms apart
    rollout_calls: int            # rollout program calls per rollout batch (a memory setting)
    # Rows each group is rolled out as (group_size / rollout_group_pieces chains per row): > 1
    # when a device takes less than a whole group per call.
    rollout_group_pieces: int
    eval_chunk: int               # prompts per evaluation call: batch_size, padded to the devices
    total_updates: int            # optimizer updates of the whole run
    ppo_epochs: int               # updates per chain (algorithm.md §6)
    seed: int                     # orders the minibatches of an epoch
    truncated_think: str          # what an unclosed reasoning chain gets (advantages.py)
    skip_zero_variance_groups: bool  # a group whose rewards are all equal leaves the loss
    advantage_std: str            # the advantages' std: 'group' or 'global'
    advantage_eps: float          # the eps of the advantages' denominator
    advantage_clip: float         # advantages clipped to [-clip, clip]
    update_chains: str            # 'all' or 'signal' (rl.compaction)
    parity_bounds: dict[str, float]  # {slot: the largest rollout-vs-update disagreement allowed}

    @property
    def schedule(self) -> Schedule:
        return self.rollout.schedule

    def micro_batches_of(self, minibatch: int) -> int:
        """Gradient micro-steps of an update on ``minibatch`` chains."""
        return minibatch // self.micro_step_chains if self.micro_step_chains else 1

    def reference_pieces_of(self, chains: int) -> int:
        """Pieces of the reference forward of a batch of ``chains`` (a bucket)."""
        return (chains // self.micro_step_chains if self.micro_step_chains
                else self.num_minibatches)

    @property
    def num_minibatches(self) -> int:
        return self.chains // self.minibatch

    @property
    def micro_batches(self) -> int:
        """Gradient micro-steps per update of the whole rollout batch (a memory setting)."""
        return self.micro_batches_of(self.minibatch)

    @property
    def reference_micro_batches(self) -> int:
        """Pieces of the reference forward of the whole rollout batch."""
        return self.reference_pieces_of(self.chains)


def _need(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f'config.{field}={value!r}: {allowed}')


def _one_of(field: str, value, allowed) -> None:
    _need(value in allowed, field, value, f'expected one of {tuple(allowed)}')


def token_sampler(r) -> TokenSampler:
    """The rollout's token sampler (config ``rollout`` section), checked."""
    _need(r.temperature >= 0, 'rollout.temperature', r.temperature, 'must be >= 0 (0 = greedy)')
    _need(r.top_k >= 0, 'rollout.top_k', r.top_k, 'must be >= 0 (0 = off)')
    _need(0.0 < r.top_p <= 1.0, 'rollout.top_p', r.top_p, 'must be in (0, 1] (1 = off)')
    return TokenSampler(temperature=float(r.temperature), top_k=int(r.top_k),
                        top_p=float(r.top_p))


def schedule(config) -> Schedule:
    """The training chains' ``Schedule``: the rollout section, with no window when the mode
    does not train the image."""
    r = config.rollout
    window = objective.has_window(config.objective.mode, config.objective.image_term)
    _need(r.num_timesteps >= 2, 'rollout.num_timesteps', r.num_timesteps,
          'must be >= 2 (N points give N - 1 steps)')
    _need(r.noise_level > 0 or not window, 'rollout.noise_level', r.noise_level,
          'the SDE window needs a noise level > 0')
    steps = r.num_timesteps - 1
    if window:
        _need(r.window_size >= 1, 'rollout.window_size', r.window_size,
              f'objective.mode={config.objective.mode!r} with objective.image_term='
              f'{config.objective.image_term!r} trains on an SDE window: needs >= 1')
        _need(0 <= r.window_min_start <= r.window_max_start, 'rollout.window_min_start',
              r.window_min_start, f'must be in [0, rollout.window_max_start={r.window_max_start}]')
        _need(r.window_max_start + r.window_size <= steps, 'rollout.window_max_start',
              r.window_max_start, f'the window (size {r.window_size}) must end within the '
              f'{steps} steps of rollout.num_timesteps={r.num_timesteps}')
    return Schedule(tokens=token_sampler(r), num_timesteps=int(r.num_timesteps),
                    shift=float(r.shift), noise_level=float(r.noise_level),
                    window_size=int(r.window_size) if window else 0,
                    window_max_start=int(r.window_max_start) if window else 0,
                    window_min_start=int(r.window_min_start) if window else 0,
                    image_size=tuple(int(x) for x in r.image_size))


def rollout_config(config, decode_images: bool = True) -> RolloutConfig:
    """The ``RolloutConfig`` of a config (``decode_images=False``: latents only)."""
    r, mode = config.rollout, config.objective.mode
    _one_of('objective.mode', mode, objective.MODES)
    _one_of('objective.image_term', config.objective.image_term, terms.names('image'))
    think = objective.thinks(mode)
    _need(r.group_size >= 2, 'rollout.group_size', r.group_size,
          'GRPO needs >= 2 chains per prompt')
    if think:
        _need(r.max_think_tokens >= 1, 'rollout.max_think_tokens', r.max_think_tokens,
              'must be >= 1')
    _one_of('rollout.initial_noise', r.initial_noise, INITIAL_NOISE)
    return RolloutConfig(group_size=int(r.group_size), think=think,
                         max_think_tokens=int(r.max_think_tokens), schedule=schedule(config),
                         decode_images=decode_images, initial_noise=r.initial_noise)


def objective_config(config, sched: Schedule) -> objective.ObjectiveConfig:
    """The ``ObjectiveConfig`` of a config, replaying with the rollout's ``sched``."""
    o = config.objective
    _one_of('objective.mode', o.mode, objective.MODES)
    _one_of('objective.image_term', o.image_term, terms.names('image'))
    _one_of('objective.regularizer', o.regularizer,
            terms.get(o.image_term, 'image').regularizers)
    _one_of('objective.text_aggregation', o.text_aggregation, losses.TEXT_AGGREGATIONS)
    _one_of('objective.advantage_std', o.advantage_std, advantages.STD_MODES)
    if o.regularizer == 'latent_kl':
        _need(o.latent_kl_weight > 0, 'objective.latent_kl_weight', o.latent_kl_weight,
              'objective.regularizer=latent_kl needs a weight > 0')
    if o.regularizer == 'velocity_mse':
        _need(o.velocity_mse_weight >= 0, 'objective.velocity_mse_weight',
              o.velocity_mse_weight, 'must be >= 0')
    _need(o.text_clip > 0 and o.flow_clip > 0, 'objective.text_clip', o.text_clip,
          f'the clip ranges must be > 0 (objective.flow_clip={o.flow_clip})')
    _need(not o.dt_reweight or objective.has_window(o.mode, o.image_term),
          'objective.dt_reweight', o.dt_reweight,
          f'it weights the steps of an SDE window, and objective.mode={o.mode!r} with '
          f'image_term={o.image_term!r} has none: set it False')
    _need(o.nft_beta > 0, 'objective.nft_beta', o.nft_beta, 'must be > 0')
    _need(o.nft_adv_clip > 0, 'objective.nft_adv_clip', o.nft_adv_clip, 'must be > 0')
    _need(1 <= o.nft_timesteps < sched.num_timesteps, 'objective.nft_timesteps',
          o.nft_timesteps, f'must be in [1, {sched.num_timesteps - 1}]: distinct times of the '
          f'rollout.num_timesteps={sched.num_timesteps} grid (t = 0 excluded)')
    return objective.ObjectiveConfig(
        mode=o.mode, image_term=o.image_term, text_clip=float(o.text_clip),
        flow_clip=float(o.flow_clip),
        text_aggregation=o.text_aggregation, flow_weight=float(o.flow_weight),
        regularizer=o.regularizer, velocity_mse_weight=float(o.velocity_mse_weight),
        latent_kl_weight=float(o.latent_kl_weight), text_kl_weight=float(o.text_kl_weight),
        dt_reweight=bool(o.dt_reweight), image_grad_to_context=bool(o.image_grad_to_context),
        nft_beta=float(o.nft_beta), nft_adv_clip=float(o.nft_adv_clip),
        nft_timesteps=int(o.nft_timesteps), schedule=sched)


def lora_spec(c) -> LoraSpec | None:
    """From a config's ``lora`` section: the spec, or None when LoRA is off (full model)."""
    if not c.enabled:
        return None
    _need(c.rank >= 1, 'lora.rank', c.rank, 'expected a positive integer')
    for name, allowed in (('targets', TARGETS), ('experts', EXPERTS)):
        got = tuple(c[name])
        unknown = sorted(set(got) - set(allowed))
        _need(bool(got) and not unknown, f'lora.{name}', got,
              f'expected a non-empty subset of {allowed}, found unknown {unknown}')
    return LoraSpec(rank=int(c.rank), alpha=float(c.alpha), targets=tuple(c.targets),
                    experts=tuple(c.experts))


def check_optimizer(c) -> None:
    """A config's ``optimizer`` section (``train.optimizer.make_optimizer`` builds it)."""
    _need(0.0 < c.final_lr_fraction <= 1.0, 'optimizer.final_lr_fraction',
          c.final_lr_fraction, '1 = constant rates, < 1 = cosine decay to it; > 0')
    _need(c.warmup_steps >= 0, 'optimizer.warmup_steps', c.warmup_steps, 'must be >= 0')
    _need(0.0 <= c.ema_decay < 1.0, 'optimizer.ema_decay', c.ema_decay,
          '0 = off, else the moving average\'s decay per update, in (0, 1)')
    for name in ('lr_und', 'lr_gen'):
        _need(c[name] >= 0, f'optimizer.{name}', c[name], 'must be >= 0')


def check_parallelism(p, num_devices: int) -> tuple[int, ...]:
    """A config's ``parallelism`` section on ``num_devices``: the resolved mesh shape."""
    try:
        shape = mesh_lib.resolve_shape(p.mesh, num_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    rules = p.rules.to_dict() if p.rules else {}
    _one_of('parallelism.strategy', p.strategy, sorted({**sharding.STRATEGIES, **rules}))
    return shape


def strategy_rules(p) -> tuple[dict[str, str], dict[str, str]]:
    """The rule tables of a config's ``parallelism``: the train state's strategy and the
    rollout's (where the compute-dtype copy of the policy it samples from lives)."""
    extra = p.rules.to_dict() if p.rules else {}
    return (sharding.strategy_rules(p.strategy, extra),
            sharding.strategy_rules(p.rollout_strategy, extra))


def total_updates(config) -> int:
    """Optimizer updates of a whole run: RL steps x PPO epochs x minibatches."""
    return config.total_steps * config.ppo_epochs * config.num_minibatches


def rollout_split(config, group_size: int, num_devices: int) -> tuple[int, int]:
    """``(calls, group_pieces)`` of a rollout batch: each prompt's group rolled out as
    ``parallelism.rollout_group_pieces`` rows of ``group_size / pieces`` chains (> 1: a group
    split over devices or calls, for fewer prompts than devices or a group too large for one
    device), ``parallelism.rollout_prompts_per_device`` rows per device per call (0: all at
    once)."""
    p = config.parallelism
    pieces, per_device = int(p.rollout_group_pieces), int(p.rollout_prompts_per_device)
    _need(pieces >= 1 and group_size % pieces == 0, 'parallelism.rollout_group_pieces', pieces,
          f'must divide rollout.group_size={group_size} (1: a whole group per row)')
    rows = config.batch_size * pieces
    _need(rows % num_devices == 0, 'batch_size', config.batch_size,
          f'the rollout runs data-parallel on all {num_devices} devices: batch_size x '
          f'parallelism.rollout_group_pieces ({pieces}) must be a multiple of it (split each '
          'group into more pieces for fewer prompts than devices)')
    local = rows // num_devices
    _need(per_device >= 0 and (per_device == 0 or local % per_device == 0),
          'parallelism.rollout_prompts_per_device', per_device,
          f'must divide the {local} prompts (or group pieces) each device rolls out '
          '(batch_size x rollout_group_pieces / devices); 0 = all at once')
    return (local // per_device if per_device else 1), pieces


def settings(config, num_devices: int, check_inputs: bool = True) -> Settings:
    """Checks an RL config (raises ``ConfigError`` on the first bad field) and derives the
    frozen settings of its programs. ``check_inputs=False``: the weights and the tokenizer are
    not needed (compiling the programs ahead of time)."""
    if check_inputs:
        _need(bool(config.model.checkpoint) or config.model.random is not None,
              'model.checkpoint', config.model.checkpoint, 'set --config.model.checkpoint=DIR '
              'and --config.tokenizer=DIR/tokenizer: download the Bagel-7B-MoT release '
              '(huggingface.co/ByteDance-Seed/BAGEL-7B-MoT, e.g. huggingface-cli download '
              'ByteDance-Seed/BAGEL-7B-MoT --local-dir=SRC), then python '
              'launch/convert_bagel.py --src=SRC --dst=DIR (DIR may also be SRC itself)')
        _need(bool(config.tokenizer), 'tokenizer', config.tokenizer,
              'set --config.tokenizer=DIR: Bagel\'s tokenizer (launch/convert_bagel.py writes '
              'DIR/tokenizer next to the converted checkpoint)')
    _need(config.total_steps >= 0, 'total_steps', config.total_steps, 'must be >= 0')
    _one_of('truncated_think', config.truncated_think, advantages.TRUNCATED_THINK)
    _need(config.ppo_epochs >= 1, 'ppo_epochs', config.ppo_epochs, 'must be >= 1')
    _need(config.num_minibatches >= 1, 'num_minibatches', config.num_minibatches,
          'must be >= 1')
    check_optimizer(config.optimizer)
    shape = check_parallelism(config.parallelism, num_devices)
    rc = rollout_config(config)
    obj = objective_config(config, rc.schedule)
    _need(config.batch_size >= 1, 'batch_size', config.batch_size, 'must be >= 1')
    chains = config.batch_size * rc.group_size
    _need(chains % config.num_minibatches == 0, 'num_minibatches', config.num_minibatches,
          f'must divide batch_size * group_size = {chains}')
    dp = shape[0] * shape[1]
    minibatch = chains // config.num_minibatches
    _need(minibatch % dp == 0, 'num_minibatches', config.num_minibatches,
          f'a minibatch of {minibatch} chains must split over the data-parallel size {dp} '
          f'(mesh {shape})')
    p = config.parallelism
    per_device = int(p.micro_batch_per_device)
    _need(per_device >= 0, 'parallelism.micro_batch_per_device', per_device,
          'chains per device per gradient micro-step; 0 = the whole minibatch at once')
    piece = per_device * dp if per_device else minibatch
    _need(minibatch % piece == 0, 'parallelism.micro_batch_per_device', per_device,
          f'{piece} chains per micro-step (x {dp} data-parallel devices) must divide the '
          f'minibatch of {minibatch} chains')
    _one_of('update_chains', config.update_chains, compaction.UPDATE_CHAINS)
    _need(config.update_buckets >= 1, 'update_buckets', config.update_buckets, 'must be >= 1')
    unit = config.num_minibatches * (piece if per_device else dp)
    buckets = ((chains,) if config.update_chains == 'all' else
               compaction.bucket_sizes(chains, min(config.update_buckets, chains // unit), unit))
    rollout_calls, group_pieces = rollout_split(config, rc.group_size, num_devices)
    _one_of('model.attention', config.model.attention, attention.IMPLS)
    _one_of('parallelism.rollout_strategy', p.rollout_strategy,
            sorted({**sharding.STRATEGIES, **(p.rules.to_dict() if p.rules else {})}))
    for field in ('reward', 'eval_reward'):
        name = config[field].name
        _need(registry.is_registered(name), f'{field}.name', name,
              f'expected one of {tuple(registry.names())} or "module:name" (a module of yours '
              'that registers name)')
    _need(config.reward_timeout_s > 0, 'reward_timeout_s', config.reward_timeout_s,
          'must be > 0 (seconds a reward call may take)')
    _need(config.checkpoint_every >= 1, 'checkpoint_every', config.checkpoint_every,
          'must be >= 1')
    _need(config.eval_every >= 0, 'eval_every', config.eval_every, 'must be >= 0 (0 = off)')
    _need(config.num_minibatches == 1 or not any(t.name == 'nft' for t in obj.terms),
          'num_minibatches', config.num_minibatches, 'objective.image_term=nft needs 1: its old '
          'velocities are a chain\'s first update\'s own (the rollout has none at the '
          'forward-process points), so every chain must be in the first update')
    o = config.objective
    _need(o.advantage_eps > 0, 'objective.advantage_eps', o.advantage_eps, 'must be > 0')
    _need(o.advantage_clip > 0, 'objective.advantage_clip', o.advantage_clip, 'must be > 0')
    for slot in terms.SLOTS:
        bound = config.parity_bounds.get(slot)
        _need(bound is not None and bound > 0, f'parity_bounds.{slot}', bound,
              'must be > 0 (the largest rollout-vs-update disagreement that runs on, on the '
              'scale of the term\'s own ratio)')
    _need(config.max_skipped_updates >= 1, 'max_skipped_updates', config.max_skipped_updates,
          'must be >= 1')
    try:
        sampler = eval_sampler.sampler_config(config.eval)
    except ValueError as e:
        raise ConfigError(f'config.eval: {e}') from e
    return Settings(
        mesh_shape=shape, rollout=rc, objective=obj, eval_sampler=sampler,
        eval_tokens=generate.GREEDY if config.eval.greedy_think else rc.schedule.tokens,
        lora=lora_spec(config.lora), chains=chains, minibatch=minibatch,
        buckets=buckets, micro_step_chains=piece if per_device else 0,
        split_terms=bool(p.split_terms),
        rollout_calls=rollout_calls, rollout_group_pieces=group_pieces,
        eval_chunk=-(-config.batch_size // num_devices) * num_devices,
        total_updates=total_updates(config), ppo_epochs=int(config.ppo_epochs),
        seed=int(config.seed), truncated_think=config.truncated_think,
        skip_zero_variance_groups=bool(o.skip_zero_variance_groups),
        advantage_std=o.advantage_std, advantage_eps=float(o.advantage_eps),
        advantage_clip=float(o.advantage_clip), update_chains=config.update_chains,
        parity_bounds={slot: float(config.parity_bounds[slot]) for slot in terms.SLOTS})
