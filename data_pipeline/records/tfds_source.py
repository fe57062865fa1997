"""Reading TFDS builds of clip records (data_pipeline.preprocess.tfds_builders writes them):
`TfdsClips`, a records.source.ClipSource over one split."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline.records import shards, source


class TfdsClips(source.ClipSource):
    """The clips of one split of a TFDS-built dataset (a source.ClipSource): metadata from
    the build's index (no example read), frame records read by position. The loaders read
    it like a shard directory (stage-4 targets need a shard directory)."""

    def __init__(self, builder_dir: str, split: str = "train"):
        self.builder_dir, self.split = str(builder_dir), split
        self._source = None
        info = self._open().info
        if split not in info.splits:
            raise KeyError(f"{builder_dir}: no split {split!r} (has {sorted(info.splits)})")
        index = info.metadata.get("index") if info.metadata else None
        if index is None or split not in index:
            raise shards.ShardError(
                f"{builder_dir}: a TFDS build of format version 1 (one example per clip, no "
                f"index); convert it to a shard directory with "
                f"`{shards.UPGRADE_CMD.format(src=builder_dir)}` or rebuild it with launch.build_tfds")
        self._entries = index[split]
        self._global = np.arange(len(self._entries), dtype=np.int64)

    def _open(self):
        return tfds.builder_from_directory(self.builder_dir)

    @property
    def source(self):
        if self._source is None:
            self._source = self._open().as_data_source(split=self.split)
        return self._source

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    @property
    def shards_dir(self) -> str:  # the loaders name their data by this
        return self.builder_dir

    def _records(self, i: int, positions: Sequence[int]) -> Tuple[List[bytes], List[str]]:
        entry = self._entries[i]
        at = [entry["record"] + 1 + k for k in positions]
        where = [f"{self.builder_dir}[{self.split}][{a}]" for a in at]
        examples = [self.source[a] for a in at]
        return [e["record"] for e in examples], where


def open_tfds_clips(builder_dir: str, split: str = "train") -> TfdsClips:
    """The clips of `split` in a TFDS dataset directory (e.g. DATA_DIR/folder_clips/1.0.0)."""
    return TfdsClips(builder_dir, split)
