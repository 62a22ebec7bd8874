r"""DiffusionNFT on ShapesEval (docs/nft.md): no thinking, the NFT image term alone, from the
no-think SFT model; FlowGRPO's counterpart.

    python launch/train.py --config=configs/shapes_nft.py --workdir=runs/shapes_nft

Everything else (reward, budget of 100 steps, velocity-MSE weight, the text learning rate) as
shapes_flowgrpo.py / shapes_unigrpo.py, with DiffusionNFT's GenEval settings: beta 1, advantages
clipped to [-5, 5]. Images are drawn by the ODE (no SDE window). K = 3 forward-process points per
chain: the image forwards of FlowGRPO's 3-step window, so an update costs the same. The
generation expert's learning rate is 3e-5, not the window term's 1e-4: at 1e-4 NFT collapsed
(seed 0) or hacked the reward (seed 1); on the validation prompts 3e-5 gave 44.7% strict
against 36.7% at 1e-4 (exact-scene reward, seed 0; docs/results.md). With GenEval's rules as
the training reward NFT hacks them within 100 steps (every canvas filled with every shape):
``shapes_nft_exact.py`` trains on the exact-scene reward instead.
Arguments: ``:test`` shrinks the run for tests.
"""

from unigrpo_jax import config_files


def get_config(arg: str | None = None):
    config = config_files.load(config_files.sibling(__file__, 'shapes_flowgrpo.py'), arg)
    config.objective.image_term = 'nft'
    config.objective.update(nft_beta=1.0, nft_adv_clip=5.0, nft_timesteps=3)
    config.optimizer.lr_gen = 3e-5
    if arg != 'test':
        config.total_steps = 100
    else:
        config.objective.nft_timesteps = 2
    return config
