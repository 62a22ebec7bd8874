r"""FlowGRPO on ShapesEval: no thinking, only the image term, from the no-think SFT model.

    python launch/train.py --config=configs/shapes_flowgrpo.py --workdir=runs/shapes_flowgrpo

Everything else (budget, sampler, window, regulariser, learning rates) as shapes_unigrpo.py.
"""

import os

from unigrpo_jax import config_files


def get_config(arg: str | None = None):
    config = config_files.load(config_files.sibling(__file__, 'shapes_unigrpo.py'), arg)
    config.model.checkpoint = os.path.join(config_files.ROOT, 'checkpoints', 'shapes_sft_nothink')
    config.objective.mode = 'flowgrpo'  # no reasoning: the no-think SFT model's layout
    return config
