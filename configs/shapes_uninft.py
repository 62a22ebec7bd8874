r"""UniGRPO with DiffusionNFT as its image term on ShapesEval (docs/nft.md): think, then draw,
the text GRPO term and the NFT image term on one advantage per chain, from the think SFT model.

    python launch/train.py --config=configs/shapes_uninft.py --workdir=runs/shapes_uninft

Everything else as shapes_unigrpo.py; the NFT settings (and the generation expert's learning
rate, 3e-5) as shapes_nft.py. The training reward is the exact-scene one (``shapes`` reward
option ``exact_scene``: strict GenEval correctness and no object beyond those the prompt names;
the evaluation reward and ShapesEval's scoring are unchanged): on the validation prompts, 100
steps, seeds 0-3, it scores 79.3 / 81.8 strict (no CFG / text CFG 2) against 78.2 / 78.7 with
the GenEval reward, ahead on 4 of 4 seeds, and cuts the images with extra objects from up to
12.7% to 0.8-4.2% (docs/results.md, "What stands between the recipe and +5 on every seed").
200 steps instead of shapes_unigrpo.py's 100: on the validation prompts, seeds 0-3, 87.0 / 88.2
against 79.3 / 81.8 at step 100, ahead on 4 of 4 seeds (the text policy stays correct: 100% of
the greedy plans). On the evaluation prompts, 5 seeds: +15.2 ± 2.3 / +16.5 ± 1.0 points over the
think SFT model, at least +12.0 / +15.1 on every seed (docs/results.md). ``make demo`` trains it.
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
    config.reward.options.exact_scene = True  # the evaluation reward stays GenEval's
    if arg != 'test':
        config.total_steps = 200  # ahead of 100 on 4 of 4 validation seeds (docs/results.md)
    return config
