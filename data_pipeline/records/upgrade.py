"""Converts format-version-1 clip data (one record per clip) to format version 2
(frame-addressable records, data_pipeline.records.shards): `python -m launch.upgrade_shards`.

Sources: a version-1 shard directory (from launch.synthesize or launch.preprocess before
the format change) or a version-1 TFDS build (launch.build_tfds, builder version 1.0.0).
The result is a version-2 shard directory with the same clips in the same order: the
same shard paths (a TFDS split becomes `<split>.array_record`), the splits (the source's
split files, or the TFDS splits), `synthetic_config.json` when present, and stage-4
targets (rows follow the clips, which keep their order, so only their manifest hash is
renewed). Shards already converted are kept, so an interrupted run resumes.

HDTF speakers become persons on the way (format-1 data named them by video id:
WDA_BarackObama_000 and _001 were two speakers; preprocess.datasets.hdtf_person). Data holding
HDTF clips gets its splits written again with the default rules (records.splits.
write_splits, by person), since splits by video id put one person on both sides; rerun
`python -m data_pipeline.shards NEW_DIR [split flags]` for other rules.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
from typing import Any, Iterator

import msgpack
import numpy as np

from data_pipeline import files
from data_pipeline.records import schema, shards, splits

_V1_ARRAYS = ("mel_windows", "landmarks", "landmark_valid", "audio", "factors")


def decode_v1(data: bytes, where: str) -> dict:
    """A version-1 record -> clip dict (frames as JPEG bytes); ShardError naming `where`."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise shards.ShardError(f"{where}: corrupt record ({type(e).__name__}: {e})") from e
    if (not isinstance(record, dict) or record.get("version") != 1
            or set(record) != {"version", "meta", "arrays", "frames"}):
        raise shards.ShardError(f"{where}: not a format-version-1 clip record")
    clip = {"frames": record["frames"], "meta": record["meta"]}
    arrays = record["arrays"]
    if not isinstance(arrays, dict) or set(arrays) != set(_V1_ARRAYS):
        raise shards.ShardError(f"{where}: malformed record arrays")
    for name in _V1_ARRAYS:
        try:
            dtype_str, shape, raw = arrays[name]
            dtype, shape = np.dtype(dtype_str), tuple(int(s) for s in shape)
        except Exception as e:
            raise shards.ShardError(f"{where}: {name}: malformed array entry ({e})") from e
        if (dtype.kind not in "biuf" or not isinstance(raw, bytes)
                or len(raw) != dtype.itemsize * math.prod(shape)):
            raise shards.ShardError(f"{where}: {name}: {dtype_str} {shape} does not fit the bytes")
        clip[name] = np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    try:
        schema.validate_clip(clip, where)
    except schema.ClipError as e:
        raise shards.ShardError(str(e)) from e
    return clip


def _v1_shard_dir(src: str) -> Iterator[tuple[str, Iterator[dict]]]:
    """(relative shard path, its clips) of a version-1 shard directory."""
    paths = sorted(glob.glob(os.path.join(src, "**", "*" + shards.SHARD_SUFFIX), recursive=True))
    if not paths:
        raise shards.ShardError(f"{src}: no *{shards.SHARD_SUFFIX} files")
    for path in paths:
        def clips(path=path):
            reader = shards.open_reader(path)
            try:
                for k in range(reader.num_records()):
                    yield decode_v1(shards.read_record(reader, path, k), f"{path}[{k}]")
            finally:
                reader.close()
        yield os.path.relpath(path, src), clips()


def _v1_tfds(src: str) -> tuple[list[tuple[str, Iterator[dict]]], list[str]]:
    """(split file name, its clips) per split of a version-1 TFDS build, and the splits."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(src)
    parts = []
    for split in sorted(builder.info.splits):
        source = builder.as_data_source(split=split)

        def clips(source=source, split=split):
            for k in range(len(source)):
                yield decode_v1(source[k]["clip"], f"{src}[{split}][{k}]")
        parts.append((split + shards.SHARD_SUFFIX, clips()))
    return parts, sorted(builder.info.splits)


def hdtf_person_meta(meta: dict) -> dict:
    """The meta with an HDTF video-id speaker replaced by its person (unchanged otherwise)."""
    from data_pipeline.preprocess import datasets  # the one rule that names HDTF persons

    person = datasets.hdtf_person(meta["speaker"]) if meta["dataset"] == "hdtf" else None
    return dict(meta, speaker=person) if person and person != meta["speaker"] else meta


def _source_kind(src: str) -> str:
    if os.path.exists(os.path.join(src, "dataset_info.json")):
        return "tfds"
    manifest = os.path.join(src, shards.MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as f:
            version = json.load(f).get("version")
        if version == shards.FORMAT_VERSION:
            raise ValueError(f"{src}: already format version {shards.FORMAT_VERSION}")
        if version != 1:
            raise ValueError(f"{manifest}: manifest version {version!r}, expected 1")
    return "shards"


def upgrade(src: str | os.PathLike, dst: str | os.PathLike, progress: bool = True) -> dict:
    """Converts `src` (module docstring) into the shard directory `dst`; returns
    {"clips", "shards", "splits": {name: count}, "hdtf_speakers_relabelled", "targets": [names]}."""
    from tqdm import tqdm

    src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
    if src == dst:
        raise ValueError(f"{dst}: write the converted data to another directory")
    kind = _source_kind(src)
    if kind == "tfds":
        parts, tfds_splits = _v1_tfds(src)
    else:
        parts, tfds_splits = list(_v1_shard_dir(src)), []
    os.makedirs(dst, exist_ok=True)
    split_keys: dict[str, list[str]] = {name: [] for name in tfds_splits}
    relabelled = 0
    with tqdm(unit="clip", disable=not progress) as bar:
        for rel, clips in parts:
            out = os.path.join(dst, rel)
            if os.path.exists(out) and not tfds_splits:
                bar.update(len(shards.shard_clips(out)))
                continue
            with shards.ShardWriter(out) as writer:
                for clip in clips:
                    meta = hdtf_person_meta(clip["meta"])
                    relabelled += meta is not clip["meta"]
                    writer.write(dict(clip, meta=meta))
                    if tfds_splits:
                        split_keys[rel[: -len(shards.SHARD_SUFFIX)]].append(shards.clip_key(clip["meta"]))
                    bar.update()
    manifest = shards.write_manifest(dst)
    if any(c["dataset"] == "hdtf" for c in manifest["clips"]):
        splits.write_splits(dst)  # by person: format-1 HDTF splits were by video id
    elif tfds_splits:
        os.makedirs(os.path.join(dst, splits.SPLITS_DIR), exist_ok=True)
        for name, keys in split_keys.items():
            files.write_json(os.path.join(dst, splits.SPLITS_DIR, name + ".json"), keys)
    elif os.path.isdir(os.path.join(src, splits.SPLITS_DIR)):
        shutil.copytree(os.path.join(src, splits.SPLITS_DIR), os.path.join(dst, splits.SPLITS_DIR),
                        dirs_exist_ok=True)
    for name in ("synthetic_config.json",):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    converted = _copy_targets(src, dst) if kind == "shards" else []
    counts = {}
    for path in glob.glob(os.path.join(dst, splits.SPLITS_DIR, "*.json")):
        with open(path) as f:
            counts[os.path.basename(path)[:-5]] = len(json.load(f))
    return {"clips": manifest["num_clips"], "shards": len(manifest["shards"]), "splits": counts,
            "hdtf_speakers_relabelled": relabelled,
            "targets": converted}


def _copy_targets(src: str, dst: str) -> list[str]:
    """Copies each complete stage-4 targets directory of `src` that matches its manifest,
    renewing the manifest hash (the clips keep their order, so the rows stay valid)."""
    from data_pipeline.loaders import targets  # the stage-4 targets' layout

    root = os.path.join(src, targets.TARGETS_DIR)
    if not os.path.isdir(root):
        return []
    with open(os.path.join(src, shards.MANIFEST), "rb") as f:
        old_sha = hashlib.sha256(f.read()).hexdigest()
    copied = []
    for name in sorted(os.listdir(root)):
        info_path = os.path.join(root, name, targets.INFO)
        if not os.path.exists(info_path):
            continue
        with open(info_path) as f:
            info: dict[str, Any] = json.load(f)
        if not info.get("complete") or info.get("manifest_sha256") != old_sha:
            continue
        out = targets.targets_dir(dst, name)
        shutil.copytree(os.path.join(root, name), out, dirs_exist_ok=True)
        info["manifest_sha256"] = targets.manifest_sha256(dst)
        files.write_json(os.path.join(out, targets.INFO), info)
        copied.append(name)
    return copied
