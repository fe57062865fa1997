"""Expression bank size (stage 3) around the official 10; the lip/pose banks come from
the stage-2 model given as init_from (their sizes are that checkpoint's).

  python -m launch.sweep --sweep=configs/sweeps/exp_bank_sizes.py --workdir=sweeps/exp \
      --config.init_from=runs/stage2 --config.data.shards_dir=MEAD_DATA --config.perceptual.path=vgg19-dcbb9e9d.pth
"""

from edtalk_jax.sweep import grid

BASE = "configs/stage3.py"
BASE_ARG = ""
RUNS = grid({"model.exp_dim": [5, 10, 20]})
