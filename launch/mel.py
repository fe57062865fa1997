"""Log-mel features of one audio (or video) file, as the official EDTalk demos compute them.

  python -m launch.mel AUDIO --out OUT.npz [--fps 25]

Writes `mel` float32 (n_mel_frames, 80) and `windows` float32 (T, 80, 16), the per-video-frame
inputs of Audio2Lip. Exits with status 1 and a message naming the file on bad input.
"""

import sys

import numpy as np
from absl import app, flags

from data_pipeline.preprocess import audio

_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_FPS = flags.DEFINE_float("fps", audio.FPS, "Video frame rate the windows are cut for.")
flags.register_validator("fps", lambda fps: fps > 0, message="--fps must be positive")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("expected exactly one AUDIO path")
    try:
        features = audio.audio_features(argv[1], fps=_FPS.value)
    except audio.AudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    np.savez(_OUT.value, mel=features.mel, windows=features.windows)
    print(f"{features.duration_s:.3f} s of audio -> T={len(features.windows)} frames at "
          f"{_FPS.value:g} fps, mel {features.mel.shape}, windows {features.windows.shape}")
    return 0


if __name__ == "__main__":
    app.run(main)
