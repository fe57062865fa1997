"""The main job (until training lands): every EDTalk inference mode on the embedded
synthetic dataset, optionally with the official checkpoints.

  python -m launch.demo --workdir workdir [--config configs/base.py:tiny]
      [--checkpoint EDTalk.pt] [--audio2lip Audio2Lip.pt] [--max_frames 24]

Writes workdir/data (synthetic shards), workdir/demo/*.mp4, contact_sheet.png, report.json.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/base.py", "model and data configuration")
flags.DEFINE_string("workdir", "workdir", "output directory")
flags.DEFINE_string("checkpoint", None, "EDTalk.pt / EDTalk_lip_pose.pt or a launch.convert directory")
flags.DEFINE_string("audio2lip", None, "Audio2Lip.pt or a launch.convert directory")
flags.DEFINE_integer("chunk", 8, "frames rendered per jitted call")
flags.DEFINE_integer("max_frames", 24, "frames rendered per mode (the driving clip is cut)")


def main(argv):
    del argv
    from edtalk_jax.demo import run_demo
    f = flags.FLAGS
    run_demo(f.config, f.workdir, f.checkpoint, f.audio2lip, f.chunk, f.max_frames)


if __name__ == "__main__":
    app.run(main)
