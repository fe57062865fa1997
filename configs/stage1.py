"""Stage 1: encoder + generator pre-training by self-reconstruction (LIA), official
hyper-parameters (edtalk_spec.md §3: batch 12 per GPU on 2 GPUs, L1 + VGG + GAN).

  python -m launch.train --config=configs/stage1.py --workdir=runs/stage1 \
      --config.data.shards_dir=DATA --config.perceptual.path=vgg19-dcbb9e9d.pth
  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/stage1   # CPU smoke run

The lip-pose generator is trained whole; stage 2 keeps its encoder, shared MLP `fc` and
decoder and starts the heads and the bank fresh (configs/stage2.py: init_keep).
"""

from configs import base


def get_config(arg: str = ""):
    config = base.get_config()
    config.stage = "stage1"
    config.model.kind = "lip_pose"
    config.batch_size = 24
    config.total_steps = 300_000
    config.checkpoint_every_steps = 3000
    config.images_every_steps = 1000
    base.apply_arg(config, arg, base.PRESETS)
    return config
