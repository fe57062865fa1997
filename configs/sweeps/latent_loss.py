"""Stage-2 latent losses (exp(-cos) of the lip and pose latents): batch mean (default)
against the official batch sum, at three weights (lip and pose weights tied).

  python -m launch.sweep --sweep=configs/sweeps/latent_loss.py --workdir=sweeps/latent \
      --config.init_from=runs/stage1 --config.data.shards_dir=DATA --config.perceptual.path=vgg19-dcbb9e9d.pth
"""

from edtalk_jax.sweep import grid, product, tied

BASE = "configs/stage2.py"
BASE_ARG = ""
RUNS = product(grid({"loss.latent_reduction": ["mean", "sum"]}),
               tied(("loss.latent_lip", "loss.latent_pose"), [0.5, 1.0, 2.0]))
