"""Stage 3: expression decoupling by self-reconstruction complementary learning (never
released officially; docs/training.md says what was chosen and why). The full
generator starts from stage 2's lip-pose generator; the lip and pose heads, their bank,
the encoder, `fc` and the decoder's StyleGAN layers are frozen; the expression head,
the expression bank and the EEMs learn (`--config.optimizer.freeze` with only the first
two patterns also trains the decoder, the maintainer's second phase).

  python -m launch.train --config=configs/stage3.py --workdir=runs/stage3 \
      --config.init_from=runs/stage2 --config.data.shards_dir=MEAD_DATA \
      --config.perceptual.path=vgg19-dcbb9e9d.pth
  python -m launch.train --config=configs/stage3.py:tiny --workdir=/tmp/stage3
"""

from configs import base

FREEZE = (r"^gen/(enc|fc|lip_fc|pose_fc)/", r"^gen/bank/lipnonlip$", r"^gen/dec/(?!eem_)")


def get_config(arg: str = ""):
    config = base.get_config()
    config.stage = "stage3"
    config.model.kind = "generator"
    config.batch_size = 8
    config.total_steps = 100_000
    config.checkpoint_every_steps = 2000
    config.optimizer.freeze = FREEZE
    config.data.datasets = ("mead",)
    base.apply_arg(config, arg, base.PRESETS)
    if "tiny" in arg.split(","):
        config.data.datasets = None
    return config
