r"""DiffusionNFT on ShapesEval (shapes_nft.py) trained on the exact-scene reward: strict
GenEval correctness and no object beyond those the prompt names (``shapes`` reward option
``exact_scene``). The evaluation reward and ShapesEval's scoring are unchanged.

    python launch/train.py --config=configs/shapes_nft_exact.py --workdir=runs/shapes_nft_exact

Why: with GenEval's rules as the training reward, NFT learns within 100 steps to fill the
canvas with every shape in every colour (extra objects are not checked outside counting
prompts), which passes most prompts and fails every counting one (docs/results.md).
Arguments: ``:test`` shrinks the run for tests.
"""

from unigrpo_jax import config_files


def get_config(arg: str | None = None):
    config = config_files.load(config_files.sibling(__file__, 'shapes_nft.py'), arg)
    config.reward.options.exact_scene = True
    return config
