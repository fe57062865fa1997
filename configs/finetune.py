"""Person-specific fine-tuning (official train_fine_tune.py): one person's folder
dataset (launch.preprocess --dataset folder), self-reconstruction (L1 + VGG + GAN),
only the decoder trained, from the official lip-pose (or full) generator; the model
shape comes from the checkpoint.

  python -m launch.train --config=configs/finetune.py --workdir=runs/alice \
      --config.init_from=EDTalk_lip_pose.pt --config.data.shards_dir=alice_data \
      --config.perceptual.path=vgg19-dcbb9e9d.pth
"""

from configs import base


def get_config(arg: str = ""):
    config = base.get_config()
    config.stage = "finetune"
    config.model.kind = "lip_pose"
    config.batch_size = 32
    config.total_steps = 800_000
    config.checkpoint_every_steps = 10_000
    config.optimizer.freeze = (r"^gen/(enc|fc|lip_fc|pose_fc|exp_fc|bank)/",)
    config.data.split = ""  # every clip of the person's folder dataset
    config.data.eval_split = ""
    base.apply_arg(config, arg, base.PRESETS)
    return config
