"""Random access to clips: `ClipSource`, the interface every loader reads, and `ClipStore`,
its implementation for a shard directory (TFDS builds: records.tfds_source.TfdsClips).
records.directory opens whatever directory a user holds.
"""

from __future__ import annotations

import abc
import json
import os
import threading
from typing import Any, Sequence

import numpy as np

from data_pipeline.records import schema, shards
from data_pipeline.records.splits import SPLITS_DIR


class ClipSource(abc.ABC):
    """Random access to clips by index 0..len-1, the interface every loader reads.

    Metadata (`meta`, `landmark_valid`, `indices_by`) comes from an index held in memory
    (a shard directory's manifest, a TFDS build's metadata): no record is read for it.
    `read_frames(i, frames)` reads just those frame records of clip i; `record(i)` and
    `clip(i)` read them all. `bytes_read` counts the record bytes this process read.
    Subclasses fill `shards_dir`, `_entries` (per clip: the meta fields and
    "invalid_landmarks") and `_global`, and implement `_records(i, positions)`. A source
    pickles cheaply (readers are reopened lazily in each process).
    """

    shards_dir: str
    _entries: list[dict]
    _global: np.ndarray
    bytes_read: int = 0

    @abc.abstractmethod
    def _records(self, i: int, positions: Sequence[int]) -> tuple[list[bytes], list[str]]:
        """(record bytes of frames `positions` of clip i, a name for each in errors)."""

    def __len__(self) -> int:
        return len(self._entries)

    def global_index(self, i: int) -> int:
        """The index of clip i in the whole dataset (manifest order; for TFDS, the split)."""
        return int(self._global[i])

    def meta(self, i: int) -> dict:
        entry = self._entries[i]
        return {k: entry[k] for k in schema.META_FIELDS}

    def num_frames(self, i: int) -> int:
        return int(self._entries[i]["num_frames"])

    def landmark_valid(self, i: int) -> np.ndarray:
        """bool (T,): False where clip i's landmarks were interpolated, not detected."""
        valid = np.ones(self.num_frames(i), bool)
        valid[self._entries[i]["invalid_landmarks"]] = False
        return valid

    def indices_by(self, key: str) -> dict[Any, list[int]]:
        """Meta value of `key` (e.g. "speaker", "emotion") -> indices of its clips."""
        if key not in schema.META_FIELDS:
            raise KeyError(f"{key!r} is not a meta field ({', '.join(schema.META_FIELDS)})")
        groups: dict[Any, list[int]] = {}
        for i, entry in enumerate(self._entries):
            groups.setdefault(entry[key], []).append(i)
        return groups

    def read_frames(self, i: int, frames: Sequence[int], *, decode: bool = True) -> dict:
        """Frames `frames` of clip i: {"frames": uint8 (n, H, W, 3) RGB (JPEG bytes with
        `decode=False`), "mel_windows", "landmarks", "landmark_valid", "audio" (n, 640),
        "factors"} (shards.decode_frame_records). shards.ShardError names the file and record."""
        frames = [int(k) for k in frames]
        t = self.num_frames(i)
        if any(not 0 <= k < t for k in frames):
            raise IndexError(f"frames {frames} of clip {self.global_index(i)} with {t} frames")
        data, where = self._records(i, frames)
        self.bytes_read += sum(map(len, data))
        return shards.decode_frame_records(data, self.meta(i), frames, decode=decode, where=where)

    def record(self, i: int) -> dict:
        """Clip i (schema.CLIP_KEYS), frames as a list of JPEG bytes."""
        return self._whole(i, decode=False)

    def clip(self, i: int) -> dict:
        """Clip i fully decoded: frames uint8 (T, H, W, 3) RGB."""
        return self._whole(i, decode=True)

    def _whole(self, i: int, decode: bool) -> dict:
        clip = self.read_frames(i, range(self.num_frames(i)), decode=decode)
        clip["audio"] = clip["audio"].reshape(-1)
        clip["meta"] = self.meta(i)
        return clip

    def __getitem__(self, i: int) -> dict:
        return self.record(i)


class ClipStore(ClipSource):
    """The clips of a shard directory (optionally one split), indexed by its manifest.

    Index i runs over the split's clips in global order. Records are read through
    ArrayRecord readers opened lazily per process.
    """

    def __init__(self, shards_dir: str | os.PathLike, split: str | None = None):
        self.shards_dir = os.fspath(shards_dir)
        self.split = split
        manifest = shards.load_manifest(self.shards_dir)
        self._paths = [os.path.join(self.shards_dir, s["path"]) for s in manifest["shards"]]
        clips = manifest["clips"]
        chosen = range(len(clips)) if split is None else self._split_indices(clips, split)
        self._global = np.asarray(chosen, np.int64)
        self._entries = [clips[g] for g in self._global]
        self._readers: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _split_indices(self, clips: list[dict], split: str) -> list[int]:
        path = os.path.join(self.shards_dir, SPLITS_DIR, split + ".json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: write the splits with "
                                    f"`{shards.INDEX_CMD.format(dir=self.shards_dir)}`")
        with open(path) as f:
            keys = json.load(f)
        index = {shards.clip_key(c): g for g, c in enumerate(clips)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise shards.ShardError(f"{path}: {len(missing)} clips are not in the manifest (e.g. "
                             f"{missing[0]!r}); rebuild: {shards.INDEX_CMD.format(dir=self.shards_dir)}")
        return sorted(index[k] for k in keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _records(self, i: int, positions: Sequence[int]) -> tuple[list[bytes], list[str]]:
        entry = self._entries[i]
        shard, header = entry["shard"], entry["record"]
        reader = self._readers.get(shard)
        if reader is None:
            with self._lock:
                reader = self._readers.get(shard)
                if reader is None:
                    reader = self._readers[shard] = shards.open_reader(self._paths[shard])
        at = [header + 1 + k for k in positions]
        path = self._paths[shard]
        return shards.read_records(reader, path, at), [f"{path}[{a}]" for a in at]


