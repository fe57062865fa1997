"""EDTalk data pipeline, in the order data flows:

  preprocess/  raw video -> clips: decoding, audio, faces, speaker identity, runners
  synthetic/   procedurally drawn talking heads with ground-truth factors
  records/     the clip schema, the record format and shard files, readers, splits
  loaders/     clips -> per-stage training batches (grain), stage-4 targets

`num_clips(dir)` and `read_clip(dir, i)` read any dataset directory. Importing the
package is cheap: sub-packages load their dependencies (array_record, grain, librosa,
OpenCV) only when imported, so `import data_pipeline.preprocess.audio` does not pull in
the shard reader.
"""

from __future__ import annotations

import functools
import os


def num_clips(shards_dir: str | os.PathLike) -> int:
    """Number of clips in a shard directory (its manifest.json) or a TFDS-built dataset
    directory (its train split)."""
    return len(_store(*_key(shards_dir)))


def read_clip(shards_dir: str | os.PathLike, index: int) -> dict:
    """Clip `index` (global manifest order) fully decoded: frames uint8 (T, H, W, 3) RGB,
    mel_windows (T, 80, 16), landmarks (T, 68, 2) in crop pixels, landmark_valid, audio,
    factors and meta (data_pipeline.records.schema)."""
    return _store(*_key(shards_dir)).clip(index)


def _key(shards_dir) -> tuple[str, float]:
    # The index file's mtime is part of the key: a rebuilt manifest gets a fresh store.
    path = os.path.abspath(os.fspath(shards_dir))
    for name in ("manifest.json", "dataset_info.json"):
        index = os.path.join(path, name)
        if os.path.exists(index):
            return path, os.path.getmtime(index)
    return path, -1.0


@functools.lru_cache(maxsize=4)
def _store(path: str, mtime: float):
    from data_pipeline.records import directory

    del mtime  # only part of the cache key
    return directory.open_clips(path)
