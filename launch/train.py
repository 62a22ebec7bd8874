r"""UniGRPO RL training.

    python launch/train.py --config=configs/bagel_grpo.py --workdir=runs/bagel \
        --config.model.checkpoint=/path/to/converted --config.tokenizer=/path/to/converted/tokenizer
    python launch/train.py --config=configs/bagel_grpo.py:tiny --workdir=/tmp/tiny

Checkpoints, metrics (TensorBoard + metrics.jsonl) and sample grids go under --workdir;
running again with the same --workdir resumes from its latest checkpoint. A multi-process run
gives every process --coordinator_address, --num_processes and --process_id, or is detected
on SLURM, Open MPI or a TPU slice (``--config.distributed=on`` on gcloud TPU VMs);
docs/multihost.md has the commands. The loop lives in ``unigrpo_jax.train.loop`` so a notebook
can call it.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import distributed
from unigrpo_jax.train import loop

# The exit status of a run stopped by SIGTERM after saving its checkpoint (EX_TEMPFAIL: run it
# again to resume), so that a scheduler can tell it from a finished run (0) and a failure (1).
EXIT_PREEMPTED = 75

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.',
                               required=True)
distributed.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    try:
        distributed.initialize_from_flags(_CONFIG.value.distributed)
        with distributed.exit_when_a_process_is_lost():  # exits EXIT_PROCESS_LOST (69)
            loop.train(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:  # a user's config: one line, no traceback (bugs keep theirs)
        sys.exit(f'launch/train.py: {e}')
    except loop.Preempted as e:
        print(f'launch/train.py: {e}', file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
