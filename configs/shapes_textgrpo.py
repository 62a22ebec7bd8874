r"""TextGRPO on ShapesEval: thinking, only the text term; images by the ODE (no SDE window).

    python launch/train.py --config=configs/shapes_textgrpo.py --workdir=runs/shapes_textgrpo

Everything else (budget, SFT start, learning rates) as shapes_unigrpo.py.
"""

from unigrpo_jax import config_files


def get_config(arg: str | None = None):
    config = config_files.load(config_files.sibling(__file__, 'shapes_unigrpo.py'), arg)
    config.objective.mode = 'textgrpo'  # no SDE window: images by the ODE
    config.objective.dt_reweight = False  # nothing to weight without a window
    return config
