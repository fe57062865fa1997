"""Stage 4: audio to lip on HDTF (edtalk_spec.md §3), official hyper-parameters: batch
4 per GPU x 5 frames, Audio2Lip's mapping trained (its audio encoder frozen, BatchNorm
statistics updating), the lip-pose generator and D frozen, D only scoring.

  python -m launch.train --config=configs/stage4.py --workdir=runs/stage4 \
      --config.init_from=EDTalk_lip_pose.pt --config.audio2lip.init=wav2lip.pth \
      --config.syncnet.path=lipsync_expert.pth --config.data.shards_dir=DATA \
      --config.perceptual.path=vgg19-dcbb9e9d.pth
  python -m launch.train --config=configs/stage4.py:tiny --workdir=/tmp/stage4

Lip/pose targets come from the starting generator: stored ones (data.targets) are
reused, missing ones are computed before training (data_pipeline.loaders.targets).
`--config.optimizer.freeze='("^gen/(?!dec/)", "^audio2lip/audio_encoder_")'` also
trains the decoder (official --train_generator).
"""

from configs import base


def get_config(arg: str = ""):
    config = base.get_config()
    config.stage = "stage4"
    config.model.kind = "lip_pose"
    config.batch_size = 8
    config.total_steps = 100_000
    config.checkpoint_every_steps = 1000
    config.eval_every_steps = 800
    config.optimizer.freeze = (r"^gen/", r"^audio2lip/audio_encoder_")
    config.train_discriminator = False
    config.data.datasets = ("hdtf",)
    base.apply_arg(config, arg, base.PRESETS)
    if "tiny" in arg.split(","):
        config.data.datasets = None
        config.data.T = 2  # batch 2 x 2 frames: D's stddev groups of 4 need B x T divisible by 4
    return config
