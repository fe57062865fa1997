"""Raw video -> clip records: video decoding (video_io), the audio front end (audio),
face detection, tracking and cropping (faces), speaker identity (identity), raw dataset
layouts (datasets), the per-video pipeline (clips) and its runners (runner: a local
process pool; tfds_builders: TFDS / Beam).

The names of `clips` and `runner` (`process`, `iter_clips`, `run_local`,
`PreprocessOptions`, `VideoItem`, ...) are available here, loaded on first use, so
`import data_pipeline.preprocess.audio` stays light.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "clips": ("PreprocessOptions", "ProcessResult", "VideoItem", "iter_clips", "process"),
    "runner": ("TooManyFailures", "run_local"),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
