"""Clip shards: the record encoding, ArrayRecord shard files, the manifest, the splits
and `ClipStore`, the random-access reader the grain loaders use.

Record (format version 1): one msgpack map per clip, keys in this order
  "version": 1
  "meta":    the clip's meta dict (schema.META_FIELDS)
  "arrays":  {name: [dtype string (numpy `dtype.str`, e.g. "<f4"), shape, raw bytes]}
             for mel_windows, landmarks, landmark_valid, audio, factors
  "frames":  [JPEG bytes, ...]
No pickle: a shard from elsewhere can only yield these types. Meta comes first so
`read_meta` parses it without touching the frames.

Shard: an ArrayRecord file `*.array_record` (group_size 1, uncompressed: JPEG does not
compress and random reads stay cheap), one record per clip. `ShardWriter` writes
`<path>.tmp` and renames it when closed without error, so an existing shard is complete.
Beside it, `<path>.meta.json` = {"num_records": n, "metas": [meta, ...]} lets
`write_manifest` skip reading the records (it reads them when the sidecar is missing or
its record count or file size disagrees with the shard).

Manifest `<shards_dir>/manifest.json`:
  {"format": "edtalk-clip-shards", "version": 1, "num_clips": N,
   "shards": [{"path": relative posix path, "num_records": n}, ...],   (sorted by path)
   "clips":  [{"shard": shard index, "record": position, **meta}, ...]}
The global clip index is the position in "clips": shards in sorted order, then records.

Splits `<shards_dir>/splits/{train,test}.json`: JSON lists of clip keys
"<dataset>/<clip_id>" (stable when shards are added, unlike global indices); see
`write_splits` for the rules. Build both with `python -m data_pipeline.shards DIR`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import threading
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import cv2
import msgpack
import numpy as np
from array_record.python import array_record_module

from data_pipeline import schema

FORMAT_VERSION = 1
SHARD_SUFFIX = ".array_record"
MANIFEST = "manifest.json"
SPLITS_DIR = "splits"
WRITER_OPTIONS = "group_size:1,uncompressed"
MEAD_TEST_SPEAKERS = ("M003", "M030", "W009", "W015")  # official EDTalk/MEAD test actors
_ARRAYS = ("mel_windows", "landmarks", "landmark_valid", "audio", "factors")
_INDEX_CMD = "python -m data_pipeline.shards {dir}"


class ShardError(ValueError):
    """A shard or record that cannot be read; the message names the file and record."""


# --- JPEG -------------------------------------------------------------------------------

def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes (OpenCV/libjpeg-turbo, 4:2:0)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3) RGB. Raises ValueError when the bytes are not a JPEG."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"not a decodable JPEG ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_jpegs(jpegs: Sequence[bytes], indices: Iterable[int] | None = None) -> np.ndarray:
    """Decodes the JPEG frames at `indices` (all by default) to uint8 (n, H, W, 3) RGB."""
    picked = jpegs if indices is None else [jpegs[i] for i in indices]
    return np.stack([decode_jpeg(f) for f in picked])


# --- records ----------------------------------------------------------------------------

def encode_clip(clip: Mapping[str, Any], where: str = "clip") -> bytes:
    """A schema-valid clip -> record bytes (raises schema.ClipError naming `where`)."""
    schema.validate_clip(clip, where)
    arrays = {}
    for name in _ARRAYS:
        a = np.ascontiguousarray(clip[name])
        arrays[name] = [a.dtype.str, list(a.shape), a.tobytes()]
    record = {"version": FORMAT_VERSION, "meta": dict(clip["meta"]), "arrays": arrays,
              "frames": [bytes(f) for f in clip["frames"]]}
    return msgpack.packb(record, use_bin_type=True)


def _unpacker(data: bytes) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    return unpacker


def read_meta(data: bytes, *, where: str = "record") -> dict:
    """The meta dict of a record, without parsing its arrays or frames."""
    try:
        unpacker = _unpacker(data)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "version":
                _check_version(unpacker.unpack(), where)
            elif key == "meta":
                meta = unpacker.unpack()
                if not isinstance(meta, dict) or set(meta) != set(schema.META_FIELDS):
                    raise ShardError(f"{where}: meta is not a complete meta dict")
                return meta
            else:
                unpacker.skip()
    except ShardError:
        raise
    except Exception as e:  # msgpack raises several unrelated types on bad bytes.
        raise ShardError(f"{where}: corrupt record ({type(e).__name__}: {e})") from e
    raise ShardError(f"{where}: record has no meta")


def _check_version(version: Any, where: str) -> None:
    if version != FORMAT_VERSION:
        raise ShardError(f"{where}: record format version {version!r}, this reader "
                         f"understands {FORMAT_VERSION}")


def decode_clip(data: bytes, *, decode_frames: bool = True, where: str = "record") -> dict:
    """Record bytes -> clip dict. frames: uint8 (T, H, W, 3) RGB, or with
    `decode_frames=False` the list of JPEG bytes. Raises ShardError naming `where`."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise ShardError(f"{where}: corrupt record ({type(e).__name__}: {e})") from e
    if not isinstance(record, dict) or set(record) != {"version", "meta", "arrays", "frames"}:
        raise ShardError(f"{where}: not a clip record")
    _check_version(record["version"], where)
    clip = {"frames": record["frames"], "meta": record["meta"]}
    arrays = record["arrays"]
    if not (isinstance(arrays, dict) and set(arrays) == set(_ARRAYS)
            and isinstance(clip["meta"], dict) and isinstance(clip["frames"], list)):
        raise ShardError(f"{where}: malformed record (meta, arrays {list(_ARRAYS)}, frames)")
    for name in _ARRAYS:
        clip[name] = _array(arrays[name], f"{where}: {name}")
    try:
        size = schema.validate_clip(clip, where).size
    except schema.ClipError as e:
        raise ShardError(str(e)) from e
    if decode_frames:
        frames = []
        for i, jpeg in enumerate(clip["frames"]):
            try:
                frame = decode_jpeg(jpeg)
            except ValueError as e:
                raise ShardError(f"{where}: frame {i}: {e}") from e
            if frame.shape[:2] != (size, size):
                raise ShardError(f"{where}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                                 f"meta size is {size}")
            frames.append(frame)
        clip["frames"] = np.stack(frames)
    return clip


def _array(entry: Any, where: str) -> np.ndarray:
    try:
        dtype_str, shape, raw = entry
        dtype = np.dtype(dtype_str)
        shape = tuple(int(s) for s in shape)
    except Exception as e:
        raise ShardError(f"{where}: malformed array entry ({e})") from e
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise ShardError(f"{where}: dtype {dtype_str!r} is not numeric")
    if (not isinstance(raw, bytes) or min(shape, default=0) < 0
            or len(raw) != dtype.itemsize * math.prod(shape)):
        raise ShardError(f"{where}: {len(raw) if isinstance(raw, bytes) else '?'} bytes "
                         f"do not hold {dtype_str} {shape}")
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))


# --- writing ----------------------------------------------------------------------------

class ShardWriter:
    """Context manager writing clips into one ArrayRecord shard, atomically.

    Records go to `<path>.tmp`; on a clean exit the meta sidecar is written and the file
    renamed to `path`; on an exception the .tmp file is removed and an earlier shard at
    `path`, if any, is left as it was. `count` = clips written.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not self.path.endswith(SHARD_SUFFIX):
            raise ValueError(f"{self.path}: shard files must end with {SHARD_SUFFIX}")
        self.count = 0
        self._metas: list[dict] = []
        self._writer = None

    def __enter__(self) -> "ShardWriter":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._writer = array_record_module.ArrayRecordWriter(self.path + ".tmp", WRITER_OPTIONS)
        return self

    def write(self, clip: Mapping[str, Any]) -> None:
        self.write_encoded(encode_clip(clip, f"{self.path}[{self.count}]"))

    def write_encoded(self, data: bytes) -> None:
        """Writes a record made by `encode_clip` (e.g. in a worker process)."""
        if self._writer is None:
            raise RuntimeError("ShardWriter.write outside its `with` block")
        self._metas.append(read_meta(data, where=f"{self.path}[{self.count}]"))
        self._writer.write(data)
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        writer, self._writer = self._writer, None
        tmp = self.path + ".tmp"
        try:
            writer.close()
            if exc_type is None:
                _write_json(_sidecar(self.path), {"num_records": self.count, "metas": self._metas,
                                                  "file_size": os.path.getsize(tmp)})
                os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _sidecar(path: str) -> str:
    return path + ".meta.json"


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def open_reader(path: str) -> array_record_module.ArrayRecordReader:
    """An ArrayRecord reader for random access; ShardError when the file is missing,
    truncated or not an ArrayRecord file (the library itself opens those silently)."""
    if not os.path.isfile(path):
        raise ShardError(f"{path}: shard file not found")
    try:
        reader = array_record_module.ArrayRecordReader(
            path, options="readahead_buffer_size:0", file_reader_buffer_size=32768)
        ok = reader.ok()
    except Exception as e:
        raise ShardError(f"{path}: cannot open shard ({e})") from e
    if not ok:
        raise ShardError(f"{path}: not a complete ArrayRecord file (truncated or corrupt)")
    return reader


def read_record(reader, path: str, position: int) -> bytes:
    try:
        return reader.read([position])[0]
    except Exception as e:
        raise ShardError(f"{path}[{position}]: cannot read record ({e})") from e


def _sidecar_metas(path: str, num_records: int) -> list[dict] | None:
    """The sidecar's metas when it matches the shard (count, file size, fields), else None."""
    try:
        with open(_sidecar(path)) as f:
            side = json.load(f)
        metas = side["metas"]
        ok = (side["num_records"] == num_records == len(metas)
              and side["file_size"] == os.path.getsize(path)
              and all(isinstance(m, dict) and set(m) == set(schema.META_FIELDS) for m in metas))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metas if ok else None


def _shard_metas(path: str) -> list[dict]:
    reader = open_reader(path)
    try:
        n = reader.num_records()
        metas = _sidecar_metas(path, n)
        if metas is None:
            metas = [read_meta(read_record(reader, path, i), where=f"{path}[{i}]") for i in range(n)]
        return metas
    finally:
        reader.close()


def write_manifest(shards_dir: str | os.PathLike) -> dict:
    """Indexes every `**/*.array_record` under `shards_dir` into manifest.json (module
    docstring); returns the manifest. Raises ShardError on unreadable shards and on
    clips that share a (dataset, clip_id)."""
    root = os.fspath(shards_dir)
    paths = sorted(os.path.relpath(p, root).replace(os.sep, "/")
                   for p in glob.glob(os.path.join(root, "**", "*" + SHARD_SUFFIX), recursive=True))
    if not paths:
        raise ShardError(f"{root}: no *{SHARD_SUFFIX} files")
    shards, clips, seen = [], [], {}
    for s, rel in enumerate(paths):
        metas = _shard_metas(os.path.join(root, rel))
        shards.append({"path": rel, "num_records": len(metas)})
        for r, meta in enumerate(metas):
            key = clip_key(meta)
            if key in seen:
                raise ShardError(f"{root}: clip {key!r} is in {seen[key]} and {rel}[{r}]")
            seen[key] = f"{rel}[{r}]"
            clips.append({"shard": s, "record": r, **meta})
    manifest = {"format": "edtalk-clip-shards", "version": FORMAT_VERSION,
                "num_clips": len(clips), "shards": shards, "clips": clips}
    _write_json(os.path.join(root, MANIFEST), manifest)
    return manifest


def clip_key(meta: Mapping[str, Any]) -> str:
    """The split key of a clip: "<dataset>/<clip_id>"."""
    return f"{meta['dataset']}/{meta['clip_id']}"


def load_manifest(shards_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(shards_dir), MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: index the shards first with "
                                f"`{_INDEX_CMD.format(dir=os.fspath(shards_dir))}`")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != "edtalk-clip-shards" or manifest.get("version") != FORMAT_VERSION:
        raise ShardError(f"{path}: not a version-{FORMAT_VERSION} clip-shard manifest")
    return manifest


# --- splits -----------------------------------------------------------------------------

def hash_held_out(speakers: Collection[str], fraction: float, salt: str = "") -> set[str]:
    """The test speakers of the "by_speaker_hash" rule: speakers ranked by
    sha1(salt + speaker), the first round(fraction * n) held out, at least one when
    fraction > 0 and n >= 2, never all of them. Deterministic for a given speaker set."""
    ranked = sorted(set(speakers), key=lambda s: hashlib.sha1((salt + s).encode()).hexdigest())
    k = int(round(fraction * len(ranked)))
    if fraction > 0 and len(ranked) >= 2:
        k = min(max(k, 1), len(ranked) - 1)
    return set(ranked[:k])


def write_splits(shards_dir: str | os.PathLike, *,
                 mead_test_speakers: Collection[str] = MEAD_TEST_SPEAKERS,
                 hdtf_test: Collection[str] | Callable[[str], bool] | None = None,
                 hdtf_test_fraction: float = 0.2,
                 other: str = "by_speaker_hash", other_test_fraction: float = 0.125) -> dict:
    """Writes splits/train.json and splits/test.json (lists of clip keys) from the
    manifest and returns {"train": keys, "test": keys}. Rules, always by speaker:
      mead:  test = the actors in `mead_test_speakers` (official: M003 M030 W009 W015).
      hdtf:  test = video ids in `hdtf_test` (a set, or a predicate on the id); when
             None, `hash_held_out(ids, hdtf_test_fraction)` (official: 77 of 385 videos).
      other datasets (synthetic, folder, ...): `other` = "train" (all train), "test"
             (all test) or "by_speaker_hash" (hash_held_out per dataset with
             `other_test_fraction`)."""
    if other not in ("train", "test", "by_speaker_hash"):
        raise ValueError(f"other={other!r}: expected 'train', 'test' or 'by_speaker_hash'")
    clips = load_manifest(shards_dir)["clips"]
    speakers: dict[str, set[str]] = {}
    for c in clips:
        speakers.setdefault(c["dataset"], set()).add(c["speaker"])
    test_speakers = {}
    for dataset, spk in speakers.items():
        if dataset == "mead":
            test_speakers[dataset] = set(spk) & set(mead_test_speakers)
        elif dataset == "hdtf" and callable(hdtf_test):
            test_speakers[dataset] = {s for s in spk if hdtf_test(s)}
        elif dataset == "hdtf":
            test_speakers[dataset] = (hash_held_out(spk, hdtf_test_fraction, "hdtf/")
                                      if hdtf_test is None else set(spk) & set(hdtf_test))
        elif other == "by_speaker_hash":
            test_speakers[dataset] = hash_held_out(spk, other_test_fraction, dataset + "/")
        else:
            test_speakers[dataset] = set(spk) if other == "test" else set()
    splits = {"train": [], "test": []}
    for c in clips:
        held_out = c["speaker"] in test_speakers[c["dataset"]]
        splits["test" if held_out else "train"].append(clip_key(c))
    os.makedirs(os.path.join(os.fspath(shards_dir), SPLITS_DIR), exist_ok=True)
    for name, keys in splits.items():
        _write_json(os.path.join(os.fspath(shards_dir), SPLITS_DIR, name + ".json"), keys)
    return splits


# --- reading ----------------------------------------------------------------------------

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
        if os.path.exists(os.path.join(candidate, MANIFEST)):
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
    raise FileNotFoundError(f"{path}: no dataset here (expected {MANIFEST} from launch.synthesize "
                            f"or launch.preprocess (in shards/), or a TFDS dataset_info.json); "
                            f"is the directory empty or still being written?")


def open_clips(path: str | os.PathLike, split: str | None = None):
    """Random-access clips of a shard directory (ClipStore) or of a TFDS-built dataset
    directory (one holding dataset_info.json; split defaults to "train"); any directory
    `resolve_dataset_dir` accepts."""
    path = resolve_dataset_dir(path)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        from data_pipeline import tfds_builders
        return tfds_builders.open_tfds_clips(path, split or "train")
    return ClipStore(path, split)


class ClipStore:
    """Random access to the clips of a shard directory (optionally one split).

    Index i runs over the split's clips in global order. `meta` and `indices_by` use
    only the manifest; records are read through ArrayRecord readers opened lazily per
    process, so a store pickles cheaply into grain worker processes. `store[i]` is
    `record(i)`: frames stay JPEG bytes so loaders decode only the frames they sample.
    """

    def __init__(self, shards_dir: str | os.PathLike, split: str | None = None):
        self.shards_dir = os.fspath(shards_dir)
        self.split = split
        manifest = load_manifest(self.shards_dir)
        self._paths = [os.path.join(self.shards_dir, s["path"]) for s in manifest["shards"]]
        clips = manifest["clips"]
        if split is None:
            chosen = range(len(clips))
        else:
            chosen = self._split_indices(clips, split)
        self._global = np.asarray(chosen, np.int64)
        self._where = [(clips[g]["shard"], clips[g]["record"]) for g in self._global]
        fields = tuple(schema.META_FIELDS)
        self._metas = [{k: clips[g][k] for k in fields} for g in self._global]
        self._readers: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _split_indices(self, clips: list[dict], split: str) -> list[int]:
        path = os.path.join(self.shards_dir, SPLITS_DIR, split + ".json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: write the splits with "
                                    f"`{_INDEX_CMD.format(dir=self.shards_dir)}`")
        with open(path) as f:
            keys = json.load(f)
        index = {clip_key(c): g for g, c in enumerate(clips)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise ShardError(f"{path}: {len(missing)} clips are not in the manifest (e.g. "
                             f"{missing[0]!r}); rebuild: {_INDEX_CMD.format(dir=self.shards_dir)}")
        return sorted(index[k] for k in keys)

    def __len__(self) -> int:
        return len(self._global)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def global_index(self, i: int) -> int:
        """The manifest (global) index of clip i."""
        return int(self._global[i])

    def meta(self, i: int) -> dict:
        return dict(self._metas[i])

    def indices_by(self, key: str) -> dict[Any, list[int]]:
        """Meta value of `key` (e.g. "speaker", "emotion") -> indices of its clips."""
        if key not in schema.META_FIELDS:
            raise KeyError(f"{key!r} is not a meta field ({', '.join(schema.META_FIELDS)})")
        groups: dict[Any, list[int]] = {}
        for i, meta in enumerate(self._metas):
            groups.setdefault(meta[key], []).append(i)
        return groups

    def _read(self, i: int) -> tuple[bytes, str]:
        """The record bytes of clip i and its location "<shard>[<record>]"."""
        shard, record = self._where[i]
        reader = self._readers.get(shard)
        if reader is None:
            with self._lock:
                reader = self._readers.get(shard)
                if reader is None:
                    reader = self._readers[shard] = open_reader(self._paths[shard])
        return read_record(reader, self._paths[shard], record), f"{self._paths[shard]}[{record}]"

    def record(self, i: int) -> dict:
        """Clip i decoded, except frames: a list of JPEG bytes."""
        data, where = self._read(i)
        return decode_clip(data, decode_frames=False, where=where)

    def clip(self, i: int) -> dict:
        """Clip i fully decoded: frames uint8 (T, H, W, 3) RGB."""
        data, where = self._read(i)
        return decode_clip(data, decode_frames=True, where=where)

    def __getitem__(self, i: int) -> dict:
        return self.record(i)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Index a shard directory: manifest + splits.")
    parser.add_argument("shards_dir")
    parser.add_argument("--mead_test_speakers", default=",".join(MEAD_TEST_SPEAKERS))
    parser.add_argument("--hdtf_test", default="", help="comma-separated HDTF video ids "
                        "held out; empty: hash rule with --hdtf_test_fraction")
    parser.add_argument("--hdtf_test_fraction", type=float, default=0.2)
    parser.add_argument("--other", default="by_speaker_hash",
                        choices=("train", "test", "by_speaker_hash"))
    parser.add_argument("--other_test_fraction", type=float, default=0.125)
    args = parser.parse_args(argv)
    manifest = write_manifest(args.shards_dir)
    splits = write_splits(
        args.shards_dir, mead_test_speakers=[s for s in args.mead_test_speakers.split(",") if s],
        hdtf_test=[s for s in args.hdtf_test.split(",") if s] or None,
        hdtf_test_fraction=args.hdtf_test_fraction, other=args.other,
        other_test_fraction=args.other_test_fraction)
    print(f"{args.shards_dir}: {manifest['num_clips']} clips in {len(manifest['shards'])} "
          f"shards; train {len(splits['train'])}, test {len(splits['test'])}")


if __name__ == "__main__":
    main()
