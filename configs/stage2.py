"""Stage 2: mouth-pose decoupling by cross-reconstruction on HDTF (edtalk_spec.md §3),
official hyper-parameters: batch 4 per GPU on 2 GPUs, every loss weight 1, the whole
lip-pose generator trained, from stage 1's encoder, `fc` and decoder.

  python -m launch.train --config=configs/stage2.py --workdir=runs/stage2 \
      --config.init_from=runs/stage1 --config.data.shards_dir=DATA \
      --config.perceptual.path=vgg19-dcbb9e9d.pth
  python -m launch.train --config=configs/stage2.py:tiny --workdir=/tmp/stage2

The official latent losses are batch sums (`--config.loss.latent_reduction=sum`); the
default is the batch mean, so their weight does not change with the batch size.
"""

from configs import base


def get_config(arg: str = ""):
    config = base.get_config()
    config.stage = "stage2"
    config.model.kind = "lip_pose"
    config.batch_size = 8
    config.total_steps = 200_000
    config.checkpoint_every_steps = 2000
    config.eval_every_steps = 1000
    config.data.datasets = ("hdtf",)
    config.loss.mouth_l1 = 0.0  # not an official stage-2 term (the demo uses it at 32²)
    # From stage 1: encoder, shared MLP and decoder (and D); heads and bank start fresh.
    config.init_keep = (r"^gen/(enc|fc|dec)/", r"^dis/")
    base.apply_arg(config, arg, base.PRESETS)
    if "tiny" in arg.split(","):
        config.data.datasets = None
    return config
