r"""FlowGRPO on ShapesEval: no thinking, only the image term, from the no-think SFT model.

    python launch/train.py --config=configs/shapes_flowgrpo.py --workdir=runs/shapes_flowgrpo

Everything else (sampler, window, regulariser, learning rates, reward) as shapes_unigrpo.py
except `dt_reweight` (off: chosen on UniGRPO's runs, FlowGRPO's table was measured without it),
but 200 RL steps instead of 100: on the validation prompts (seeds 0 and 1) FlowGRPO still gains
from step 100 to 200 (58.3 -> 58.4% without CFG, 61.0 -> 63.6% with text CFG 2) while UniGRPO
does not (74.3 -> 72.7%, 76.9 -> 76.5%; docs/results.md).
"""

import os

from unigrpo_jax import config_files


def get_config(arg: str | None = None):
    config = config_files.load(config_files.sibling(__file__, 'shapes_unigrpo.py'), arg)
    config.model.checkpoint = os.path.join(config_files.ROOT, 'checkpoints', 'shapes_sft_nothink')
    config.objective.mode = 'flowgrpo'  # no reasoning: the no-think SFT model's layout
    # Chosen on UniGRPO's validation runs; FlowGRPO's Table-2 runs were measured without it.
    config.objective.dt_reweight = False
    if arg != 'test':
        config.total_steps = 200  # chosen on the validation prompts (the docstring)
    return config
