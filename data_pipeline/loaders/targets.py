"""Stage-4 coefficient targets: the lip (T, 20) and pose (T, 6) coefficients of every
frame, computed once with a trained lip-pose generator and stored beside the shards.

Layout `<shards_dir>/targets/<name>/`:
  targets.json   {"format": "edtalk-stage4-targets", "version": 1, "name",
                  "checkpoint": path or null, "checkpoint_sha256", "model": the model's
                  identity (the checkpoint's sha256, or what the Python caller names),
                  "size": the frame size fed to the model (null: as stored),
                  "manifest_sha256", "lip_dim", "pose_dim", "complete": bool,
                  "shards": {shard path: {"file": npy path, "rows": n}},
                  "bad_clips": {global index: reason}}
  <shard path without .array_record>.npy
                 float32 (sum of the shard's clip lengths, lip_dim + pose_dim): the rows
                 of the shard's clips in manifest order, lip columns first. A clip that
                 could not be read has NaN rows and an entry in bad_clips.
The manifest hash ties the targets to one indexing of the shards; `load_targets`
refuses targets computed for another manifest (or, when asked, another checkpoint, model
or frame size), and a resumed computation refuses to mix models or sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterator, Mapping

import numpy as np

from data_pipeline import files
from data_pipeline.loaders import images
from data_pipeline.records import schema, shards, source

FORMAT = "edtalk-stage4-targets"
VERSION = 1
TARGETS_DIR = "targets"
INFO = "targets.json"
COMMAND = ("python -m launch.compute_targets --shards {shards} --checkpoint LIP_POSE_CHECKPOINT "
           "--name {name}")

CoeffFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class TargetsError(schema.DataError):
    """Missing, incomplete or stale targets; the message names the command to fix it."""


def targets_dir(shards_dir: str | os.PathLike, name: str) -> str:
    return os.path.join(os.fspath(shards_dir), TARGETS_DIR, name)


def _command(shards_dir, name) -> str:
    return COMMAND.format(shards=os.fspath(shards_dir), name=name)


def manifest_sha256(shards_dir: str | os.PathLike) -> str:
    shards.load_manifest(shards_dir)  # a clear error when it is missing
    with open(os.path.join(os.fspath(shards_dir), shards.MANIFEST), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, or of a directory's relative paths and file contents."""
    path = os.fspath(path)
    h = hashlib.sha256()
    if os.path.isfile(path):
        files = [(None, path)]
    elif os.path.isdir(path):
        files = sorted((os.path.relpath(os.path.join(d, f), path).replace(os.sep, "/"),
                        os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)
    else:
        raise FileNotFoundError(f"{path}: checkpoint not found")
    for rel, full in files:
        if rel is not None:
            h.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _shard_layout(manifest: dict) -> dict[str, tuple[str, list[int]]]:
    """shard path -> (npy path relative to the targets dir, global clip indices)."""
    layout = {s["path"]: (s["path"][: -len(shards.SHARD_SUFFIX)] + ".npy", [])
              for s in manifest["shards"]}
    for g, clip in enumerate(manifest["clips"]):
        layout[manifest["shards"][clip["shard"]]["path"]][1].append(g)
    return layout


def _batches(store, clips: list[int], lengths: list[int], batch_size: int, size: int | None,
             bad: dict) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row indices (N,), uint8 frames (N, S, S, 3)) batches of at most batch_size frames
    over the clips, rows counted within the shard. An unreadable clip is recorded in
    `bad` and yields nothing, so its rows stay NaN."""
    rows, frames, row = [], [], 0
    for g, t in zip(clips, lengths):
        try:
            clip_frames = images.resize_frames(store.clip(g)["frames"], size)
        except (shards.ShardError, ValueError) as e:
            bad[str(g)] = str(e)
        else:
            rows.append(np.arange(row, row + t))
            frames.append(clip_frames)
            while sum(map(len, rows)) >= batch_size:
                r, f = np.concatenate(rows), np.concatenate(frames)
                yield r[:batch_size], f[:batch_size]
                rows, frames = [r[batch_size:]], [f[batch_size:]]
        row += t
    if sum(map(len, rows)):
        yield np.concatenate(rows), np.concatenate(frames)


def _shard_targets(store, clips: list[int], lengths: list[int], coeff_fn: CoeffFn,
                   batch_size: int, size: int | None, info: dict, bar) -> tuple[np.ndarray, dict]:
    """(rows float32 (sum of lengths, lip_dim + pose_dim), {global index: reason} of the
    unreadable clips, whose rows are NaN) of one shard. Sets info's dims on first use."""
    bad: dict[str, str] = {}
    out = None
    for rows, frames in _batches(store, clips, lengths, batch_size, size, bad):
        x = images.to_float(frames)
        coeffs = coeff_fn(x)
        lip, pose = (np.asarray(coeffs[k], np.float32) for k in ("lip", "pose"))
        if lip.ndim != 2 or pose.ndim != 2 or len(lip) != len(x) or len(pose) != len(x):
            raise ValueError(f"coeff_fn returned lip {lip.shape}, pose {pose.shape} "
                             f"for {len(x)} frames")
        dims = (lip.shape[1], pose.shape[1])
        if info["lip_dim"] is None:
            info["lip_dim"], info["pose_dim"] = dims
        elif dims != (info["lip_dim"], info["pose_dim"]):
            raise ValueError(f"coeff_fn dims {dims} differ from the stored "
                             f"{(info['lip_dim'], info['pose_dim'])}")
        if out is None:
            out = np.full((sum(lengths), sum(dims)), np.nan, np.float32)
        out[rows] = np.concatenate([lip, pose], 1)
        bar.update(len(x))
    if out is None:  # every clip of the shard was unreadable
        out = np.full((sum(lengths), (info["lip_dim"] or 0) + (info["pose_dim"] or 0)),
                      np.nan, np.float32)
    bar.update(sum(t for g, t in zip(clips, lengths) if str(g) in bad))
    return out, bad


def compute_targets(shards_dir: str | os.PathLike, name: str, coeff_fn: CoeffFn,
                    batch_size: int = 64, progress: bool = True, *,
                    checkpoint: str | os.PathLike | None = None, model: str | None = None,
                    size: int | None = None) -> dict:
    """Computes the targets of every clip in the manifest with `coeff_fn(frames float32
    (N, H, W, 3) in [-1, 1]) -> {"lip": (N, L), "pose": (N, P)}` and writes them under
    targets/<name>/; returns the info dict. Frames are resized to `size` when given.
    The model is named by `checkpoint` (its file's sha256) or, from Python, by `model` (a
    string identifying coeff_fn's weights, e.g. a hash of them): one of them is required.
    Resumable: shards whose file exists are kept, provided targets.json records the same
    manifest, model and size (else TargetsError: delete the directory or pick a new name)."""
    from tqdm import tqdm

    shards_dir = os.fspath(shards_dir)
    manifest = shards.load_manifest(shards_dir)
    directory = targets_dir(shards_dir, name)
    os.makedirs(directory, exist_ok=True)
    if checkpoint is None and model is None:
        raise ValueError("compute_targets: name the model, by checkpoint= or model=")
    sha = checkpoint_sha256(checkpoint) if checkpoint else None
    info = {"format": FORMAT, "version": VERSION, "name": name,
            "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
            "checkpoint_sha256": sha, "model": model if model is not None else sha,
            "size": None if size is None else int(size),
            "manifest_sha256": manifest_sha256(shards_dir), "lip_dim": None, "pose_dim": None,
            "complete": False, "shards": {}, "bad_clips": {}}
    info_path = os.path.join(directory, INFO)
    if os.path.exists(info_path):
        with open(info_path) as f:
            old = json.load(f)
        for key in ("format", "version", "manifest_sha256", "checkpoint_sha256", "model", "size"):
            if old.get(key) != info[key]:
                raise TargetsError(f"{directory}: existing targets differ in {key} "
                                   f"({old.get(key)!r} != {info[key]!r}); delete the "
                                   "directory or choose another --name")
        info.update({k: old[k] for k in ("lip_dim", "pose_dim", "shards", "bad_clips")})
    files.write_json(os.path.join(directory, INFO), info)

    store = source.ClipStore(shards_dir)
    lengths = [int(c["num_frames"]) for c in manifest["clips"]]
    layout = _shard_layout(manifest)
    total = sum(lengths)
    done = sum(e["rows"] for e in info["shards"].values())
    with tqdm(total=total, initial=done, unit="frame", disable=not progress) as bar:
        for shard_path, (rel, clips) in layout.items():
            path = os.path.join(directory, rel)
            if shard_path in info["shards"] and os.path.exists(path):
                continue
            out, bad = _shard_targets(store, clips, [lengths[g] for g in clips], coeff_fn,
                                      batch_size, size, info, bar)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                np.save(f, out)
            os.replace(path + ".tmp", path)
            info["shards"][shard_path] = {"file": rel, "rows": len(out)}
            info["bad_clips"].update(bad)
            files.write_json(os.path.join(directory, INFO), info)
    info["complete"] = True
    files.write_json(os.path.join(directory, INFO), info)
    return info


class TargetStore:
    """Random access to stored targets by global clip index; npy files are memory-mapped
    lazily per process, so the store pickles cheaply into loader workers."""

    def __init__(self, directory: str, info: dict, manifest: dict):
        self.directory = directory
        self.info = info
        self.lip_dim = int(info["lip_dim"])
        self.pose_dim = int(info["pose_dim"])
        self.bad_clips = {int(g): r for g, r in info["bad_clips"].items()}
        layout = _shard_layout(manifest)
        self._files = [layout[s["path"]][0] for s in manifest["shards"]]
        self._where = []  # global index -> (shard, first row, rows)
        offsets = [0] * len(self._files)
        for clip in manifest["clips"]:
            s, t = clip["shard"], int(clip["num_frames"])
            self._where.append((s, offsets[s], t))
            offsets[s] += t
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def _rows(self, shard: int) -> np.ndarray:
        rows = self._maps.get(shard)
        if rows is None:
            rows = self._maps[shard] = np.load(os.path.join(self.directory, self._files[shard]),
                                              mmap_mode="r")
        return rows

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(lip (T, lip_dim), pose (T, pose_dim)) of global clip `index`; TargetsError when
        the clip had no targets (unreadable when they were computed)."""
        if index in self.bad_clips:
            raise TargetsError(f"{self.directory}: clip {index} has no targets "
                               f"({self.bad_clips[index]})")
        shard, first, t = self._where[index]
        rows = np.array(self._rows(shard)[first:first + t])
        return rows[:, : self.lip_dim], rows[:, self.lip_dim:]


def load_targets(shards_dir: str | os.PathLike, name: str,
                 checkpoint: str | os.PathLike | None = None, *,
                 size: int | None = None) -> TargetStore:
    """The targets `name` of a shard directory. TargetsError (naming the command that
    computes them) when they are missing or incomplete, were computed for another
    manifest, or (when given) with another checkpoint or from frames of another size."""
    directory = targets_dir(shards_dir, name)
    cmd = _command(shards_dir, name)
    path = os.path.join(directory, INFO)
    if not os.path.exists(path):
        raise TargetsError(f"{directory}: no stage-4 targets {name!r}; compute them with `{cmd}`")
    with open(path) as f:
        info = json.load(f)
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise TargetsError(f"{path}: not a version-{VERSION} targets file")
    if not info.get("complete"):
        raise TargetsError(f"{directory}: targets are incomplete; resume with `{cmd}`")
    if info["manifest_sha256"] != manifest_sha256(shards_dir):
        raise TargetsError(f"{directory}: stale targets, computed for another manifest of "
                           f"{os.fspath(shards_dir)}; recompute with `{cmd}` (new --name)")
    if checkpoint is not None and info["checkpoint_sha256"] != checkpoint_sha256(checkpoint):
        raise TargetsError(f"{directory}: stale targets, computed with {info['checkpoint']} "
                           f"not {os.fspath(checkpoint)}; recompute with `{cmd}` (new --name)")
    stored_size = info.get("size")
    if size is not None and stored_size is not None and int(size) != stored_size:
        raise TargetsError(f"{directory}: computed from {stored_size}px frames, this model takes "
                           f"{size}px; recompute with `{cmd}` (new --name)")
    return TargetStore(directory, info, shards.load_manifest(shards_dir))
