"""Clip shards: the record encoding, ArrayRecord shard files and the manifest. Readers are
in records.source (ClipStore; records.tfds_source for TFDS builds), splits in
records.splits.

Records (format version 2): a clip is T + 1 consecutive records, so that a sample reads
only the frames it uses (a stage-2 sample: 4 frame records, not 2 whole clips).
  header  {"version": 2, "kind": "clip", "meta": the clip's meta dict (schema.META_FIELDS)}
  frame t {"version": 2, "kind": "frame", "clip": "<dataset>/<clip_id>", "t": t, "jpeg": JPEG bytes,
           "mel": float32 (80, 16), "landmarks": float32 (68, 2), "valid": bool,
           "audio": int16 (640,), "factors": float32 (F,)}   (arrays: raw little-endian
           bytes; their shapes follow from the schema and the meta's factor_names)
No pickle: a shard from elsewhere can only yield these types. A frame record names its
clip and its position `t`, so a manifest that disagrees with its files is caught at the
read.

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

Build the manifest and the splits with `python -m data_pipeline.shards DIR`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import cv2
import msgpack
import numpy as np
from array_record.python import array_record_module

from data_pipeline import files
from data_pipeline.records import schema

FORMAT_VERSION = 2
SHARD_SUFFIX = ".array_record"
MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1,uncompressed"
INDEX_CMD = "python -m data_pipeline.shards {dir}"


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
_FRAME_KEYS = {"version", "kind", "clip", "t", "jpeg", "valid", *(k for k, *_ in _FRAME_ARRAYS)}


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
    key = clip_key(clip["meta"])
    for k in range(t):
        frame = {"version": FORMAT_VERSION, "kind": "frame", "clip": key, "t": k,
                 "jpeg": bytes(clip["frames"][k]),
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
    n, f, expected = len(records), num_factors(meta), clip_key(meta)
    where = [f"frame {p}" for p in positions] if where is None else where
    out = {name: np.empty((n, *(shape or (f,))), dtype) for _, name, dtype, shape in _FRAME_ARRAYS}
    out["landmark_valid"] = np.empty(n, bool)
    jpegs = []
    for j, (data, position) in enumerate(zip(records, positions)):
        record = _unpack(data, where[j])
        if record.get("kind") != "frame" or set(record) != _FRAME_KEYS:
            raise ShardError(f"{where[j]}: not a frame record")
        if record["clip"] != expected or record["t"] != position:
            raise ShardError(f"{where[j]}: holds frame {record['t']!r} of {record['clip']!r} where the "
                             f"index expects frame {position} of {expected!r}; the manifest disagrees "
                             "with the shard: rebuild it with `python -m data_pipeline.shards DIR`")
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
                files.write_json(_sidecar(self.path), {"version": FORMAT_VERSION,
                                                       "num_records": self._records, "clips": self._clips,
                                                       "file_size": os.path.getsize(tmp)}, indent=None)
                os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _sidecar(path: str) -> str:
    return path + ".meta.json"


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
    files.write_json(os.path.join(root, MANIFEST), manifest, indent=None)
    return manifest


def clip_key(meta: Mapping[str, Any]) -> str:
    """The split key of a clip: "<dataset>/<clip_id>"."""
    return f"{meta['dataset']}/{meta['clip_id']}"


def load_manifest(shards_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(shards_dir), MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: index the shards first with "
                                f"`{INDEX_CMD.format(dir=os.fspath(shards_dir))}`")
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
