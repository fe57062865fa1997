"""Clip shards: the record encoding, ArrayRecord shard files, the manifest, the splits
and the random-access readers (`ClipSource`: `ClipStore` here, `TfdsClips` for TFDS
builds) that the grain loaders use.

Records (format version 2): a clip is T + 1 consecutive records, so that a sample reads
only the frames it uses (a stage-2 sample: 4 frame records, not 2 whole clips).
  header  {"version": 2, "kind": "clip", "meta": the clip's meta dict (schema.META_FIELDS)}
  frame t {"version": 2, "kind": "frame", "t": t, "jpeg": JPEG bytes,
           "mel": float32 (80, 16), "landmarks": float32 (68, 2), "valid": bool,
           "audio": int16 (640,), "factors": float32 (F,)}   (arrays: raw little-endian
           bytes; their shapes follow from the schema and the meta's factor_names)
No pickle: a shard from elsewhere can only yield these types. A frame record names its
clip position `t`, so a manifest that disagrees with its files is caught at the read.

Shard: an ArrayRecord file `*.array_record` (group_size 1, uncompressed: JPEG does not
compress and random reads stay cheap), each clip's header followed by its frames.
`ShardWriter` writes `<path>.tmp` and renames it when closed without error, so an
existing shard is complete. Beside it, `<path>.meta.json` = {"num_records", "file_size",
"clips": [{"record": header position, "invalid_landmarks": [t, ...], **meta}, ...]}
lets `write_manifest` skip reading the shard (it reads the header records when the
sidecar is missing or disagrees with the file).

Manifest `<shards_dir>/manifest.json`:
  {"format": "edtalk-clip-shards", "version": 2, "num_clips": N,
   "shards": [{"path": relative posix path, "num_records": n}, ...],   (sorted by path)
   "clips":  [{"shard": shard index, "record": header position,
               "invalid_landmarks": [frame indices whose landmarks were interpolated],
               **meta}, ...]}
The global clip index is the position in "clips": shards in sorted order, then records.
Frame t of a clip is record `record + 1 + t` of its shard. Metadata (meta fields and the
landmark validity) comes from the manifest alone: no record is read for it.

Version-1 shard directories (one record per clip) are refused with the command that
converts them: `python -m launch.upgrade_shards OLD --out NEW`.

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

FORMAT_VERSION = 2
SHARD_SUFFIX = ".array_record"
MANIFEST = "manifest.json"
SPLITS_DIR = "splits"
WRITER_OPTIONS = "group_size:1,uncompressed"
MEAD_TEST_SPEAKERS = ("M003", "M030", "W009", "W015")  # official EDTalk/MEAD test actors
_INDEX_CMD = "python -m data_pipeline.shards {dir}"


class ShardError(schema.DataError):
    """A shard or record that cannot be read; the message names the file and record."""


class FrameError(ShardError):
    """A frame whose JPEG bytes do not decode."""


# --- JPEG -------------------------------------------------------------------------------

def encode_jpeg(rgb: np.ndarray, quality: int = schema.JPEG_QUALITY) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes (OpenCV/libjpeg-turbo, 4:2:0)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3) RGB. Raises FrameError when the bytes are not a JPEG."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameError(f"not a decodable JPEG ({len(data)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_jpegs(jpegs: Sequence[bytes], indices: Iterable[int] | None = None) -> np.ndarray:
    """Decodes the JPEG frames at `indices` (all by default) to uint8 (n, H, W, 3) RGB."""
    picked = jpegs if indices is None else [jpegs[i] for i in indices]
    return np.stack([decode_jpeg(f) for f in picked])


# --- records ----------------------------------------------------------------------------

UPGRADE_CMD = "python -m launch.upgrade_shards {src} --out NEW_DIR"
_FRAME_ARRAYS = (  # frame-record key, clip key, dtype, per-frame shape (factors: (F,))
    ("mel", "mel_windows", "<f4", (schema.MEL_BINS, schema.MEL_STEPS)),
    ("landmarks", "landmarks", "<f4", (schema.NUM_LANDMARKS, 2)),
    ("audio", "audio", "<i2", (schema.SAMPLES_PER_FRAME,)),
    ("factors", "factors", "<f4", None),
)
_FRAME_KEYS = {"version", "kind", "t", "jpeg", "valid", *(k for k, *_ in _FRAME_ARRAYS)}


def encode_clip(clip: Mapping[str, Any], where: str = "clip") -> list[bytes]:
    """A schema-valid clip -> its T + 1 records: the header, then one per frame (raises
    schema.ClipError naming `where`)."""
    t = schema.validate_clip(clip, where).num_frames
    valid = np.asarray(clip["landmark_valid"], bool)
    header = {"version": FORMAT_VERSION, "kind": "clip", "meta": dict(clip["meta"]),
              "invalid_landmarks": np.flatnonzero(~valid).tolist()}
    per_frame = {key: np.ascontiguousarray(clip[name], dtype).reshape(t, -1)
                 for key, name, dtype, _ in _FRAME_ARRAYS}
    records = [msgpack.packb(header, use_bin_type=True)]
    for k in range(t):
        frame = {"version": FORMAT_VERSION, "kind": "frame", "t": k, "jpeg": bytes(clip["frames"][k]),
                 "valid": bool(valid[k]), **{key: a[k].tobytes() for key, a in per_frame.items()}}
        records.append(msgpack.packb(frame, use_bin_type=True))
    return records


def _unpack(data: bytes, where: str) -> dict:
    try:
        record = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on bad bytes.
        raise ShardError(f"{where}: corrupt record ({type(e).__name__}: {e})") from e
    if not isinstance(record, dict):
        raise ShardError(f"{where}: not a clip record")
    version = record.get("version")
    if version == 1:
        raise ShardError(f"{where}: a format-version-1 record (one record per clip); convert "
                         f"the shard directory with `{UPGRADE_CMD.format(src='OLD_DIR')}`")
    if version != FORMAT_VERSION:
        raise ShardError(f"{where}: record format version {version!r}, this reader "
                         f"understands {FORMAT_VERSION}")
    return record


def read_header(data: bytes, *, where: str = "record") -> tuple[dict, list[int]]:
    """(meta, frame indices whose landmarks were interpolated) of a clip's header record."""
    record = _unpack(data, where)
    meta, invalid = record.get("meta"), record.get("invalid_landmarks")
    if (record.get("kind") != "clip" or set(record) != {"version", "kind", "meta", "invalid_landmarks"}
            or not isinstance(meta, dict) or set(meta) != set(schema.META_FIELDS)
            or not isinstance(invalid, list)):
        raise ShardError(f"{where}: not a clip header record (kind 'clip', a complete meta)")
    t = meta["num_frames"]
    if not (isinstance(t, int) and t > 0 and all(isinstance(k, int) and 0 <= k < t for k in invalid)):
        raise ShardError(f"{where}: num_frames {t!r} or invalid_landmarks out of range")
    return meta, invalid


def read_meta(data: bytes, *, where: str = "record") -> dict:
    """The meta dict of a clip's header record."""
    return read_header(data, where=where)[0]


def num_factors(meta: Mapping[str, Any]) -> int:
    return len([n for n in meta["factor_names"].split(",") if n])


def decode_frame_records(records: Sequence[bytes], meta: Mapping[str, Any],
                         positions: Sequence[int], *, decode: bool = True,
                         where: Sequence[str] | None = None) -> dict:
    """Frame records (frames `positions` of the clip `meta` describes) -> {"frames": uint8
    (n, H, W, 3) RGB (or the list of JPEG bytes with `decode=False`), "mel_windows"
    (n, 80, 16), "landmarks" (n, 68, 2), "landmark_valid" (n,), "audio" (n, 640) int16,
    "factors" (n, F)}. `where` names each record in errors (ShardError)."""
    n, f = len(records), num_factors(meta)
    where = [f"frame {p}" for p in positions] if where is None else where
    out = {name: np.empty((n, *(shape or (f,))), dtype) for _, name, dtype, shape in _FRAME_ARRAYS}
    out["landmark_valid"] = np.empty(n, bool)
    jpegs = []
    for j, (data, position) in enumerate(zip(records, positions)):
        record = _unpack(data, where[j])
        if record.get("kind") != "frame" or set(record) != _FRAME_KEYS:
            raise ShardError(f"{where[j]}: not a frame record")
        if record["t"] != position:
            raise ShardError(f"{where[j]}: holds frame {record['t']!r} of its clip where the index "
                             f"expects frame {position} of {meta['dataset']}/{meta['clip_id']}; the "
                             "manifest disagrees with the shard: rebuild it with "
                             "`python -m data_pipeline.shards DIR`")
        for key, name, _, _ in _FRAME_ARRAYS:
            raw, target = record[key], out[name][j]
            if not isinstance(raw, bytes) or len(raw) != target.nbytes:
                raise ShardError(f"{where[j]}: {key} has {len(raw) if isinstance(raw, bytes) else '?'}"
                                 f" bytes, expected {target.nbytes} ({target.dtype} {target.shape})")
            target[...] = np.frombuffer(raw, target.dtype).reshape(target.shape)
        jpeg = record["jpeg"]
        if not isinstance(jpeg, bytes) or jpeg[:2] != b"\xff\xd8" or not isinstance(record["valid"], bool):
            raise ShardError(f"{where[j]}: frame is not JPEG bytes or valid is not a bool")
        out["landmark_valid"][j] = record["valid"]
        jpegs.append(jpeg)
    if decode:
        size = meta["size"]
        frames = np.empty((n, size, size, 3), np.uint8)
        for j, jpeg in enumerate(jpegs):
            try:
                frame = decode_jpeg(jpeg)
            except FrameError as e:
                raise FrameError(f"{where[j]}: {e}") from e
            if frame.shape[:2] != (size, size):
                raise ShardError(f"{where[j]}: frame is {frame.shape[1]}x{frame.shape[0]}, "
                                 f"meta size is {size}")
            frames[j] = frame
        out["frames"] = frames
    else:
        out["frames"] = jpegs
    return out


def decode_clip(records: Sequence[bytes], *, decode_frames: bool = True, where: str = "record") -> dict:
    """A clip's records (header first) -> clip dict (schema.CLIP_KEYS). frames: uint8
    (T, H, W, 3) RGB, or with `decode_frames=False` the list of JPEG bytes."""
    if isinstance(records, (bytes, bytearray)):
        raise TypeError("decode_clip takes the list of a clip's records (encode_clip's result)")
    meta, _ = read_header(records[0], where=f"{where}[0]")
    t = meta["num_frames"]
    if len(records) != t + 1:
        raise ShardError(f"{where}: {len(records) - 1} frame records for num_frames={t}")
    clip = decode_frame_records(records[1:], meta, range(t), decode=decode_frames,
                                where=[f"{where}[{k + 1}]" for k in range(t)])
    clip["audio"] = clip["audio"].reshape(-1)
    clip["meta"] = meta
    check = dict(clip, frames=clip["frames"] if not decode_frames else [b"\xff\xd8"] * t)
    try:
        schema.validate_clip(check, where)
    except schema.ClipError as e:
        raise ShardError(str(e)) from e
    return clip


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
        self._clips: list[dict] = []
        self._records = 0
        self._writer = None

    def __enter__(self) -> "ShardWriter":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._writer = array_record_module.ArrayRecordWriter(self.path + ".tmp", WRITER_OPTIONS)
        return self

    def write(self, clip: Mapping[str, Any]) -> None:
        self.write_encoded(encode_clip(clip, f"{self.path} clip {self.count}"))

    def write_encoded(self, records: Sequence[bytes]) -> None:
        """Writes a clip's records as made by `encode_clip` (e.g. in a worker process);
        they are checked (header, frame positions, array sizes) before any is written."""
        if self._writer is None:
            raise RuntimeError("ShardWriter.write outside its `with` block")
        if isinstance(records, (bytes, bytearray)):
            raise TypeError("write_encoded takes the list of a clip's records (encode_clip's result)")
        at = [f"{self.path}[{self._records + k}]" for k in range(len(records))]
        meta, invalid = read_header(records[0], where=at[0])
        if len(records) != meta["num_frames"] + 1:
            raise ShardError(f"{at[0]}: {len(records) - 1} frame records for "
                             f"num_frames={meta['num_frames']}")
        decode_frame_records(records[1:], meta, range(meta["num_frames"]), decode=False,
                             where=at[1:])
        self._clips.append({"record": self._records, "invalid_landmarks": invalid, **meta})
        for data in records:
            self._writer.write(data)
        self._records += len(records)
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        writer, self._writer = self._writer, None
        tmp = self.path + ".tmp"
        try:
            writer.close()
            if exc_type is None:
                _write_json(_sidecar(self.path), {"version": FORMAT_VERSION,
                                                  "num_records": self._records, "clips": self._clips,
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


def read_records(reader, path: str, positions: Sequence[int]) -> list[bytes]:
    """The records at `positions` of an open shard (ShardError naming the file)."""
    try:
        return reader.read(list(positions))
    except Exception as e:
        raise ShardError(f"{path}{list(positions)[:4]}: cannot read records ({e})") from e


def read_record(reader, path: str, position: int) -> bytes:
    try:
        return reader.read([position])[0]
    except Exception as e:
        raise ShardError(f"{path}[{position}]: cannot read record ({e})") from e


def _sidecar_clips(path: str, num_records: int) -> list[dict] | None:
    """The sidecar's clip entries when it matches the shard (count, file size, fields)."""
    fields = {"record", "invalid_landmarks", *schema.META_FIELDS}
    try:
        with open(_sidecar(path)) as f:
            side = json.load(f)
        clips = side["clips"]
        ok = (side["version"] == FORMAT_VERSION and side["num_records"] == num_records
              and side["file_size"] == os.path.getsize(path)
              and all(isinstance(c, dict) and set(c) == fields for c in clips))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return clips if ok else None


def shard_clips(path: str) -> list[dict]:
    """The clip entries ({"record", "invalid_landmarks", **meta}) of one shard file, from
    its sidecar or, when that is missing or stale, from its header records."""
    reader = open_reader(path)
    try:
        n = reader.num_records()
        clips = _sidecar_clips(path, n)
        if clips is not None:
            return clips
        clips, position = [], 0
        while position < n:
            meta, invalid = read_header(read_record(reader, path, position), where=f"{path}[{position}]")
            clips.append({"record": position, "invalid_landmarks": invalid, **meta})
            position += 1 + meta["num_frames"]
        if position != n:
            raise ShardError(f"{path}: the last clip claims {position - n} more frame records than "
                             "the file holds")
        return clips
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
        entries = shard_clips(os.path.join(root, rel))
        shards.append({"path": rel, "num_records": sum(1 + c["num_frames"] for c in entries)})
        for entry in entries:
            key = clip_key(entry)
            if key in seen:
                raise ShardError(f"{root}: clip {key!r} is in {seen[key]} and {rel}[{entry['record']}]")
            seen[key] = f"{rel}[{entry['record']}]"
            clips.append({"shard": s, **entry})
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
    if manifest.get("format") != "edtalk-clip-shards":
        raise ShardError(f"{path}: not a clip-shard manifest")
    if manifest.get("version") == 1:
        raise ShardError(f"{path}: a format-version-1 shard directory (one record per clip); "
                         f"convert it with `{UPGRADE_CMD.format(src=os.fspath(shards_dir))}`")
    if manifest.get("version") != FORMAT_VERSION:
        raise ShardError(f"{path}: manifest version {manifest.get('version')!r}, this reader "
                         f"understands {FORMAT_VERSION}")
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


def split_group(speaker: str) -> str:
    """The person a speaker label's clips are split with: the label before any "+"."""
    return speaker.split("+", 1)[0]


def write_splits(shards_dir: str | os.PathLike, *,
                 mead_test_speakers: Collection[str] = MEAD_TEST_SPEAKERS,
                 hdtf_test: Collection[str] | Callable[[str], bool] | None = None,
                 hdtf_test_fraction: float = 0.2,
                 other: str = "by_speaker_hash", other_test_fraction: float = 0.125) -> dict:
    """Writes splits/train.json and splits/test.json (lists of clip keys) from the
    manifest and returns {"train": keys, "test": keys}. Rules, always by person: a clip's
    split group is its speaker label before any "+" (preprocessing labels a second
    person in a video "<speaker>+<video>.<n>", who follows the video's main speaker; for
    HDTF the speaker is the person, datasets.hdtf_person, not the video id):
      mead:  test = the actors in `mead_test_speakers` (official: M003 M030 W009 W015).
      hdtf:  test = the persons in `hdtf_test` (a set, or a predicate on the person);
             when None, `hash_held_out(persons, hdtf_test_fraction)`.
      other datasets (synthetic, folder, ...): `other` = "train" (all train), "test"
             (all test) or "by_speaker_hash" (hash_held_out per dataset with
             `other_test_fraction`)."""
    if other not in ("train", "test", "by_speaker_hash"):
        raise ValueError(f"other={other!r}: expected 'train', 'test' or 'by_speaker_hash'")
    clips = load_manifest(shards_dir)["clips"]
    speakers: dict[str, set[str]] = {}
    for c in clips:
        speakers.setdefault(c["dataset"], set()).add(split_group(c["speaker"]))
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
        held_out = split_group(c["speaker"]) in test_speakers[c["dataset"]]
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


class ClipSource:
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

    def _records(self, i: int, positions: Sequence[int]) -> tuple[list[bytes], list[str]]:
        """(record bytes of frames `positions` of clip i, a name for each in errors)."""
        raise NotImplementedError

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
        "factors"} (shards.decode_frame_records). ShardError names the file and record."""
        frames = [int(k) for k in frames]
        t = self.num_frames(i)
        if any(not 0 <= k < t for k in frames):
            raise IndexError(f"frames {frames} of clip {self.global_index(i)} with {t} frames")
        data, where = self._records(i, frames)
        self.bytes_read += sum(map(len, data))
        return decode_frame_records(data, self.meta(i), frames, decode=decode, where=where)

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
        manifest = load_manifest(self.shards_dir)
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
                                    f"`{_INDEX_CMD.format(dir=self.shards_dir)}`")
        with open(path) as f:
            keys = json.load(f)
        index = {clip_key(c): g for g, c in enumerate(clips)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise ShardError(f"{path}: {len(missing)} clips are not in the manifest (e.g. "
                             f"{missing[0]!r}); rebuild: {_INDEX_CMD.format(dir=self.shards_dir)}")
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
                    reader = self._readers[shard] = open_reader(self._paths[shard])
        at = [header + 1 + k for k in positions]
        path = self._paths[shard]
        return read_records(reader, path, at), [f"{path}[{a}]" for a in at]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Index a shard directory: manifest + splits.")
    parser.add_argument("shards_dir")
    parser.add_argument("--mead_test_speakers", default=",".join(MEAD_TEST_SPEAKERS))
    parser.add_argument("--hdtf_test", default="", help="comma-separated HDTF persons held out "
                        "(the speaker labels, e.g. WDA_BarackObama); empty: hash rule with "
                        "--hdtf_test_fraction")
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
