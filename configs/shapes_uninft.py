r"""UniGRPO with DiffusionNFT as its image term on ShapesEval (docs/nft.md): think, then draw,
the text GRPO term and the NFT image term on one advantage per chain, from the think SFT model.

    python launch/train.py --config=configs/shapes_uninft.py --workdir=runs/shapes_uninft

Everything else as shapes_unigrpo.py; the NFT settings (and the generation expert's learning
rate, 3e-5) as shapes_nft.py. On the validation prompts, 100 steps, seeds 0 / 1: 73.2 / 74.3 and
76.7 / 77.3 strict (no CFG / text CFG 2; docs/results.md).
Arguments: ``:test`` shrinks the run for tests.
"""

from unigrpo_jax import config_files


def get_config(arg: str | None = None):
    config = config_files.load(config_files.sibling(__file__, 'shapes_unigrpo.py'), arg)
    nft = config_files.load(config_files.sibling(__file__, 'shapes_nft.py'), arg)
    config.objective.image_term = nft.objective.image_term
    config.objective.dt_reweight = False  # NFT trains on forward-process points, no window
    config.objective.update(nft_beta=nft.objective.nft_beta,
                            nft_adv_clip=nft.objective.nft_adv_clip,
                            nft_timesteps=nft.objective.nft_timesteps)
    config.optimizer.lr_gen = nft.optimizer.lr_gen
    return config
