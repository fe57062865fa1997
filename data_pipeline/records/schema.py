"""The clip record: one schema shared by every writer (preprocessing, synthetic data,
TFDS builders) and every reader (shard reader, grain loaders).

A clip is a dict with exactly these keys (T = number of video frames at 25 fps):

  frames        list of T JPEG-encoded RGB frames (bytes), all H x W (square crops)
  mel_windows   float32 (T, 80, 16)   per-video-frame log-mel windows (data_pipeline.preprocess.audio)
  landmarks     float32 (T, 68, 2)    dlib 68-point landmarks, (x, y) in crop pixels
  landmark_valid bool   (T,)          False where a landmark row was interpolated
  audio         int16   (T * 640,)    the clip's 16 kHz mono audio
  factors       float32 (T, F)        ground-truth factors (synthetic data; F = 0 otherwise)
  meta          dict                  see META_FIELDS

Stage-4 coefficient targets (lip/pose) are not part of the record: they depend on a
trained lip-pose generator and are stored beside the shards (see data_pipeline.loaders.targets).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
# JPEG quality of every writer's frames (preprocessing, synthesis, TFDS). Measured on 256²
# face crops of the sample media (docs/benchmarks.md, `python -m launch.benchmark_preprocess
# jpeg`): 90 gives 43.2 dB PSNR (mouth 42.2 dB) at 12.2 KB a frame; past it each extra KB
# buys less than half the PSNR it buys below 85 (95: +1.8 dB for +4.7 KB). The official
# LMDB used PIL's default 75 (39.8 dB, mouth 38.9 dB, 7.8 KB).
JPEG_QUALITY = 90
MEL_BINS = 80
MEL_STEPS = 16
NUM_LANDMARKS = 68

# MEAD's eight emotions, in the order used for integer labels everywhere.
EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")

# dlib 68-point index groups (0-based).
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
MOUTH = tuple(range(48, 68))
INNER_MOUTH = tuple(range(60, 68))

# meta field -> python type. Strings may be empty when unknown; level 0 = unknown.
META_FIELDS: Mapping[str, type] = {
    "dataset": str,  # "mead", "hdtf", "folder", "synthetic", ...
    "speaker": str,  # identity key: MEAD actor id, HDTF video id without the clip suffix
    "clip_id": str,  # unique within the dataset
    "emotion": str,  # one of EMOTIONS, or "" when unknown (HDTF)
    "level": int,  # MEAD intensity level 1..3; 0 when unknown
    "fps": float,  # always FPS after preprocessing; kept for provenance
    "source": str,  # source file (relative path) and time span, for provenance
    "num_frames": int,  # T
    "size": int,  # crop side in pixels
    "factor_names": str,  # comma-separated names of the columns of `factors` ("" if none)
}

CLIP_KEYS = ("frames", "mel_windows", "landmarks", "landmark_valid", "audio", "factors", "meta")


class DataError(ValueError):
    """Bad data (a record, a frame, a stored target), as opposed to a bug: the only errors
    that loaders turn into counted skips (data_pipeline.loaders.stages)."""


class ClipError(DataError):
    """A clip that does not follow the schema."""


def emotion_label(emotion: str) -> int:
    """Integer label of an emotion name; -1 when unknown ("")."""
    if not emotion:
        return -1
    if emotion not in EMOTIONS:
        raise ClipError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
    return EMOTIONS.index(emotion)


def make_meta(**fields: Any) -> dict:
    """A complete meta dict: missing fields get their empty value, types are checked."""
    unknown = set(fields) - set(META_FIELDS)
    if unknown:
        raise ClipError(f"unknown meta fields {sorted(unknown)}")
    meta = {}
    for name, typ in META_FIELDS.items():
        value = fields.get(name, typ())
        try:
            meta[name] = typ(value)
        except (TypeError, ValueError) as e:
            raise ClipError(f"meta field {name!r}={value!r} is not {typ.__name__}") from e
    return meta


@dataclasses.dataclass(frozen=True)
class ClipShape:
    num_frames: int
    size: int
    num_factors: int


def validate_clip(clip: Mapping[str, Any], where: str = "clip") -> ClipShape:
    """Checks keys, dtypes and shapes; raises ClipError naming `where` and the field."""
    missing = [k for k in CLIP_KEYS if k not in clip]
    extra = [k for k in clip if k not in CLIP_KEYS]
    if missing or extra:
        raise ClipError(f"{where}: missing keys {missing}, unexpected keys {extra}")
    meta = clip["meta"]
    if set(meta) != set(META_FIELDS):
        raise ClipError(f"{where}: meta keys {sorted(meta)} != {sorted(META_FIELDS)}")
    t = len(clip["frames"])
    if t == 0:
        raise ClipError(f"{where}: no frames")
    if meta["num_frames"] != t:
        raise ClipError(f"{where}: meta num_frames={meta['num_frames']} but {t} frames")
    if not all(isinstance(f, (bytes, bytearray)) and f[:2] == b"\xff\xd8" for f in clip["frames"]):
        raise ClipError(f"{where}: frames must be JPEG bytes")

    def check(name, dtype, shape):
        a = clip[name]
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
            got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
            raise ClipError(f"{where}: {name} must be {np.dtype(dtype)} {shape}, got {got}")

    check("mel_windows", np.float32, (t, MEL_BINS, MEL_STEPS))
    check("landmarks", np.float32, (t, NUM_LANDMARKS, 2))
    check("landmark_valid", np.bool_, (t,))
    check("audio", np.int16, (t * SAMPLES_PER_FRAME,))
    f = clip["factors"]
    if not isinstance(f, np.ndarray) or f.ndim != 2:
        raise ClipError(f"{where}: factors must be a 2-d array")
    check("factors", np.float32, (t, f.shape[1]))
    names = [n for n in meta["factor_names"].split(",") if n]
    if len(names) != f.shape[1]:
        raise ClipError(f"{where}: {f.shape[1]} factor columns but factor_names={meta['factor_names']!r}")
    if meta["emotion"]:
        emotion_label(meta["emotion"])
    return ClipShape(num_frames=t, size=int(meta["size"]), num_factors=f.shape[1])
