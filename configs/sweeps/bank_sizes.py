"""Bank sizes of the lip-pose model (stage 2): mouth bases x pose bases around the
official 20 x 6.

  python -m launch.sweep --sweep=configs/sweeps/bank_sizes.py --workdir=sweeps/banks \
      --config.data.shards_dir=DATA --config.perceptual.path=vgg19-dcbb9e9d.pth
  python -m launch.sweep --sweep=configs/sweeps/bank_sizes.py --workdir=/tmp/banks --mode=print

No init_from: the trainer refuses a checkpoint whose lip_dim/pose_dim differ from the
config (run_config.resolve_model), even though stage 2 starts the bank fresh. To start
from stage 1, train stage 1 at each bank size first. The expression bank is swept in
configs/sweeps/exp_bank_sizes.py (stage 3 trains it).
"""

from edtalk_jax.sweep import grid

BASE = "configs/stage2.py"
BASE_ARG = ""
RUNS = grid({"model.lip_dim": [10, 20, 40], "model.pose_dim": [3, 6, 12]})
