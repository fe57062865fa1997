"""QR-orthonormalised bases (official) against free bases kept orthogonal by a loss
term, at three weights of that term (stage 2). Every run logs
bank/orthogonality_error, so the QR run is the reference.

  python -m launch.sweep --sweep=configs/sweeps/orthogonality.py --workdir=sweeps/ortho \
      --config.init_from=runs/stage1 --config.data.shards_dir=DATA --config.perceptual.path=vgg19-dcbb9e9d.pth
"""

from edtalk_jax.sweep import grid

BASE = "configs/stage2.py"
BASE_ARG = ""
RUNS = [{"model.bank_mode": "qr"}] + grid({"model.bank_mode": ["free"], "loss.ortho": [0.1, 1.0, 10.0]})
