"""Opening what users hold: a shard directory, the output of launch.preprocess, a TFDS
build or a TFDS data dir (`resolve_dataset_dir`), as a records.source.ClipSource
(`open_clips`)."""

from __future__ import annotations

import os

from data_pipeline.records import shards, source


def resolve_dataset_dir(path: str | os.PathLike) -> str:
    """The directory readers open, from what users hold: a shard directory (holding
    manifest.json: `launch.synthesize --out`), the `--output` directory of
    `launch.preprocess` (its shards/ subdirectory), a TFDS dataset directory (holding
    dataset_info.json) or a TFDS data dir with one dataset version below it
    (`launch.build_tfds --data-dir`)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: dataset directory not found")
    for candidate in (path, os.path.join(path, "shards")):
        if os.path.exists(os.path.join(candidate, shards.MANIFEST)):
            return candidate
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return path
    found = sorted({os.path.dirname(os.path.join(d, f)) for d, _, files in os.walk(path)
                    for f in files if f == "dataset_info.json"
                    and os.path.relpath(d, path).count(os.sep) <= 2})
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{path}: holds several TFDS datasets {found}; name one of them")
    raise FileNotFoundError(f"{path}: no dataset here (expected {shards.MANIFEST} from launch.synthesize "
                            f"or launch.preprocess (in shards/), or a TFDS dataset_info.json); "
                            f"is the directory empty or still being written?")


def open_clips(path: str | os.PathLike, split: str | None = None) -> source.ClipSource:
    """Random-access clips of a shard directory (ClipStore) or of a TFDS-built dataset
    directory (one holding dataset_info.json; split defaults to "train"); any directory
    `resolve_dataset_dir` accepts."""
    path = resolve_dataset_dir(path)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        from data_pipeline.records import tfds_source
        return tfds_source.open_tfds_clips(path, split or "train")
    return source.ClipStore(path, split)
