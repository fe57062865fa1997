"""Grain loaders for the four training stages (batch layouts at the end of this docstring).

Pipeline (grain's MapDataset API, chosen because every step is index-addressed):

    MapDataset.range(clips per process)  .repeat(num_epochs)
      .map_with_index(EpochOrder: -> (epoch, clip))  .map(stages.Sampler)  .batch(B, _Collate)
      .to_iter_dataset(ReadOptions)  .mp_prefetch(workers)  -> LoaderIterator

Batches are formed inside the MapDataset, before `mp_prefetch` slices the work among
worker processes, so batch k holds the same samples whatever the worker count; each
sample's randomness depends only on (seed, stage, epoch, clip) (data_pipeline.loaders.stages).
With workers, images cross processes as uint8 (4x less shared memory) and the
LoaderIterator converts them to float32; the values are the same either way.
Nothing here changes the caller's process-wide settings (OpenCV threads, glibc malloc):
worker processes tune themselves (`_init_worker`).
The iterator state (grain's, plus the skip counters) is a small JSON dict: checkpoint it
with orbax through `grain.checkpoint.CheckpointSave(iterator)` /
`CheckpointRestore(iterator)`. It carries a `fingerprint` of what the position means (the
data's manifest hash, the clips of this process, and the settings that decide which batch
comes at which position); `set_state` refuses a state of another data
configuration instead of silently continuing somewhere else. worker_count, prefetch,
read_threads, tune_malloc and max_skip_fraction change only speed or when to stop, so
they are not part of it.

Epochs and multi-host (`EpochOrder`): each epoch orders all usable clips afresh, a
permutation drawn from `default_rng([seed, epoch])` (the epoch folded into the seed, so
epoch e of seed s shares nothing with epoch e-1 of seed s+1), and deals them to the n
processes in turn: process p takes positions p, p+n, ... (the same count per process, so
every process yields the same number of batches). The len % n clips left over differ
from epoch to epoch, so no clip is excluded for good, and a process sees other clips in
every epoch. Unshuffled, the order is the clips' own, rotated by one epoch's worth each
epoch. The global batch is the process batches concatenated (`to_global_arrays`).
Partner clips (stage 1 source/target, stage 2 clip B) and replacements for skipped clips
may come from any usable clip.

Batch keys (numpy, leading per-process batch dim B; images NHWC float32 in [-1, 1], or
uint8 with `dtype="uint8"`), plus `index` (B,) int32 global clip index:
  stage 1: source, target
  stage 2: a_identity, a, b_identity, b, mouth_a_on_b, mouth_b_on_a, a_mouth_box,
           b_mouth_box (B, 4) float32 (x1, y1, x2, y2) pixels of frames a and b
  stage 3: identity, target, emotion (B,) int32 (schema.emotion_label), level (B,) int32
  stage 4: frames (B, T, H, W, 3), mel (B, T, 80, 16), identity, mouth_boxes (B, T, 4)
           float32 (x1, y1, x2, y2) pixels, lip_targets (B, T, 20), pose_targets (B, T, 6),
           identity_lip (B, 20): the identity frame's stored lip coefficients
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from data_pipeline.loaders import stages, targets
from data_pipeline.loaders.images import to_float
from data_pipeline.records import directory, shards, splits

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    shards_dir: str
    stage: int = 1
    split: str | None = "train"  # None: every clip of the manifest
    batch_size: int = 8  # per process
    image_size: int = 256  # frames are resized when the shards differ
    seed: int = 0
    num_epochs: int | None = None  # None: repeat forever
    shuffle: bool = True
    drop_remainder: bool = True  # only matters for a finite num_epochs
    worker_count: int = 0  # grain worker processes; 0 = in this process
    prefetch: int = 2  # batches buffered per worker (and by the reading threads)
    read_threads: int = 1  # threads computing batches inside each worker (or in-process)
    dtype: str = "float32"  # image dtype: "float32" in [-1, 1] or "uint8" (convert on device)
    T: int = 5  # stage 4: consecutive frames per sample
    targets: str = "lip_pose"  # stage 4: name of the stored targets (data_pipeline.loaders.targets)
    mouth_margin: float = 0.25  # stages 2, 4: mouth box growth per side, fraction of its side
    exclude_neutral: bool = False  # stage 3: drop neutral clips
    datasets: tuple[str, ...] | None = None  # only clips of these meta "dataset" values
    shard_index: int | None = None  # default jax.process_index()
    shard_count: int | None = None  # default jax.process_count()
    tune_malloc: bool = True  # glibc memory reuse in worker processes (tune_malloc)
    max_skip_fraction: float = 0.01  # stop when skips > SKIP_ALLOWANCE + this * clips drawn


class LoaderError(ValueError):
    """A configuration or dataset the loader cannot serve; names the shards dir."""


SKIP_ALLOWANCE = 16  # skips always tolerated, whatever the rate (the first batches)


class _Collate:
    """Samples -> batch: stacks every key, converts the image keys to float32 in [-1, 1]
    when `convert`, and gathers the skips."""

    def __init__(self, image_keys: tuple[str, ...], convert: bool):
        self.image_keys, self.convert = image_keys, convert

    def __call__(self, samples: Sequence[dict]) -> dict:
        batch = {}
        for key in samples[0]:
            if key == "skips":
                continue
            first = np.asarray(samples[0][key])
            convert = self.convert and key in self.image_keys
            out = np.empty((len(samples), *first.shape), np.float32 if convert else first.dtype)
            for j, s in enumerate(samples):
                if convert:
                    to_float(s[key], out[j])
                else:
                    out[j] = s[key]
            batch[key] = out
        batch["skips"] = [skip for s in samples for skip in s["skips"]]
        return batch


def tune_malloc() -> None:
    """Process-wide (so never called by make_loader in the caller's process: call it
    yourself where float32 batches are converted with workers, see docs/benchmarks.md).
    glibc keeps freed memory for reuse (allocations below 256 MB from the heap, trimmed
    only above 256 MB) instead of returning every multi-MB record and batch buffer to the
    OS: re-faulting those pages dominated the loader's time in a sandboxed VM (a 3 MB
    record read took 5-8 ms instead of ~1 ms)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _init_worker(malloc: bool, *worker_index_and_count: int) -> None:
    """In each grain worker process (never in the caller's process, whose settings are its
    own): one OpenCV thread (processes are the parallelism) and, with `malloc`,
    `tune_malloc`."""
    import cv2

    del worker_index_and_count  # grain passes (worker index, worker count)
    cv2.setNumThreads(1)
    if malloc:
        tune_malloc()


class LoaderIterator(grain.DatasetIterator):
    """The batches of one stage. `stats` counts batches, samples and skips (by kind, with
    the first and the latest messages); `excluded` counts clips left out up front, by
    reason. When the skips pass SKIP_ALLOWANCE + max_skip_fraction * clips drawn (samples
    + skips), `next` raises LoaderError with the counts and the first reasons."""

    def __init__(self, inner: grain.DatasetIterator, *, num_clips: int, batches_per_epoch: int,
                 excluded: Mapping[str, int], convert_keys: tuple[str, ...] = (),
                 fingerprint: Mapping[str, Any] | None = None, max_skip_fraction: float = 0.01,
                 where: str = ""):
        super().__init__(inner)
        # JSON-normalised (tuples -> lists) so it compares equal to a state read back from disk.
        self.fingerprint = json.loads(json.dumps(dict(fingerprint or {})))
        self.convert_keys = convert_keys
        self.num_clips = num_clips
        self.batches_per_epoch = batches_per_epoch
        self.excluded = dict(excluded)
        self.max_skip_fraction, self.where = max_skip_fraction, where
        self.stats: dict[str, Any] = {"batches": 0, "samples": 0, "skipped": {}, "first_skips": [],
                                      "recent_skips": []}

    def __next__(self) -> dict:
        batch = next(self._parent)
        skips = batch.pop("skips")
        for key in self.convert_keys:
            batch[key] = to_float(batch[key])
        self.stats["batches"] += 1
        self.stats["samples"] += len(batch["index"])
        for kind, message in skips:
            self.stats["skipped"][kind] = self.stats["skipped"].get(kind, 0) + 1
            log.warning("skipped (%s): %s", kind, message)
        messages = [m for _, m in skips]
        self.stats["recent_skips"] = (self.stats["recent_skips"] + messages)[-20:]
        self.stats.setdefault("first_skips", [])
        self.stats["first_skips"] = (self.stats["first_skips"] + messages)[:5]
        skipped = sum(self.stats["skipped"].values())
        drawn = self.stats["samples"] + skipped
        if skipped > SKIP_ALLOWANCE + self.max_skip_fraction * drawn:
            raise LoaderError(
                f"{self.where}: {skipped} of {drawn} clips drawn were skipped "
                f"({self.stats['skipped']}), above the limit of {SKIP_ALLOWANCE} + "
                f"{self.max_skip_fraction:g} x clips drawn (LoaderConfig.max_skip_fraction); "
                f"the first reasons: {self.stats['first_skips']}")
        return batch

    def get_state(self) -> dict:
        return {"pipeline": self._parent.get_state(), "stats": copy.deepcopy(self.stats),
                "fingerprint": copy.deepcopy(self.fingerprint)}

    def set_state(self, state: dict) -> None:
        """Resumes at `state`'s position; a LoaderError when the state was saved by a loader
        of another data configuration (its fingerprint differs) or carries no fingerprint."""
        saved = state.get("fingerprint")
        if saved is None:
            raise LoaderError(
                "the data iterator state carries no fingerprint (saved by an older loader), so "
                "its position cannot be checked against this data configuration; restore the "
                "checkpoint without its data item to start the data afresh")
        if saved != self.fingerprint:
            fields = sorted(set(saved) | set(self.fingerprint))
            diff = "; ".join(f"{k}: {saved.get(k, '<absent>')!r} (checkpoint) vs "
                             f"{self.fingerprint.get(k, '<absent>')!r} (this loader)"
                             for k in fields if saved.get(k) != self.fingerprint.get(k))
            raise LoaderError(
                f"the checkpoint's data position belongs to another data configuration: {diff}. "
                f"Resume with the checkpoint's data settings, or restore without the data item "
                f"to start the data afresh")
        self._parent.set_state(state["pipeline"])
        self.stats = state["stats"]


def _shard(cfg: LoaderConfig) -> tuple[int, int]:
    if cfg.shard_index is not None and cfg.shard_count is not None:
        index, count = cfg.shard_index, cfg.shard_count
    else:
        import jax

        index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
        raise LoaderError(f"shard_index {index} not in [0, {count})")
    return index, count


def _data_sha256(cfg: LoaderConfig) -> str | None:
    """Identity of the clips: sha256 of a shard directory's manifest (plus the split file),
    or of a TFDS directory's dataset_info.json; None for a directory holding neither (a
    caller-supplied store)."""
    info = os.path.join(cfg.shards_dir, "dataset_info.json")
    if os.path.exists(info):
        with open(info, "rb") as f:
            return "dataset_info:" + hashlib.sha256(f.read()).hexdigest()
    if not os.path.exists(os.path.join(cfg.shards_dir, shards.MANIFEST)):
        return None
    digest = "manifest:" + targets.manifest_sha256(cfg.shards_dir)
    split = os.path.join(cfg.shards_dir, splits.SPLITS_DIR, f"{cfg.split}.json")
    if cfg.split is not None and os.path.exists(split):
        with open(split, "rb") as f:
            digest += " split:" + hashlib.sha256(f.read()).hexdigest()
    return digest


class EpochOrder:
    """(position k in the repeated stream, _) -> (epoch, store index of the clip): the
    module docstring's per-epoch order, computed once per epoch (picklable for workers)."""

    VERSION = 2  # 1: one shuffle for every epoch of a fixed per-process share

    def __init__(self, usable: np.ndarray, seed: int, shuffle: bool, index: int, count: int):
        self.usable = np.asarray(usable, np.int64)
        self.seed, self.shuffle, self.index, self.count = seed, shuffle, index, count
        self.per_process = len(self.usable) // count
        self._epoch, self._clips = None, None

    def clips(self, epoch: int) -> np.ndarray:
        """This process's clips of `epoch`, in order."""
        n = len(self.usable)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.roll(np.arange(n), -(epoch * self.per_process * self.count) % n)
        return self.usable[order[self.index::self.count][:self.per_process]]

    def __call__(self, k: int, _) -> tuple[int, int]:
        epoch, pos = divmod(int(k), self.per_process)
        if epoch != self._epoch:
            self._epoch, self._clips = epoch, self.clips(epoch)
        return epoch, int(self._clips[pos])


def fingerprint(cfg: LoaderConfig, usable: np.ndarray, index: int, count: int) -> dict[str, Any]:
    """What a position of this loader means: the data, the usable clips, this process's place
    among the processes, the ordering rule and every setting that decides which batch comes
    at which position. Stage-specific settings enter only for their stage (T, targets,
    mouth_margin: 4; exclude_neutral: 3)."""
    fields = ["stage", "split", "batch_size", "image_size", "seed", "shuffle", "num_epochs",
              "drop_remainder", "dtype", "datasets"]
    if cfg.stage == 3:
        fields.append("exclude_neutral")
    if cfg.stage == 4:
        fields += ["T", "targets", "mouth_margin"]
    fp = {k: getattr(cfg, k) for k in fields}
    fp["datasets"] = None if cfg.datasets is None else sorted(cfg.datasets)
    fp.update(data=_data_sha256(cfg), shard_index=index, shard_count=count, order=EpochOrder.VERSION,
              clips=hashlib.sha256(np.asarray(usable, "<i8").tobytes()).hexdigest())
    return fp


def make_loader(cfg: LoaderConfig, store=None) -> LoaderIterator:
    """The batch iterator of stage `cfg.stage` (module docstring). `store` defaults to
    `directory.open_clips(cfg.shards_dir, cfg.split)`: a shard directory or a TFDS-built dataset
    directory (stages 1-3; stage-4 targets need a shard directory)."""
    if cfg.stage not in stages.IMAGE_KEYS:
        raise LoaderError(f"stage {cfg.stage}: expected one of {sorted(stages.IMAGE_KEYS)}")
    if cfg.dtype not in ("float32", "uint8"):
        raise LoaderError(f"dtype {cfg.dtype!r}: expected 'float32' or 'uint8'")
    if min(cfg.batch_size, cfg.T, cfg.image_size, cfg.prefetch, cfg.read_threads) < 1:
        raise LoaderError(f"batch_size, T, image_size, prefetch and read_threads must be >= 1: "
                          f"{cfg}")
    where = f"{cfg.shards_dir} (split {cfg.split})"
    store = directory.open_clips(cfg.shards_dir, cfg.split) if store is None else store
    if len(store) == 0:
        raise LoaderError(f"{where}: no clips")
    target_store = targets.load_targets(cfg.shards_dir, cfg.targets) if cfg.stage == 4 else None
    usable, excluded = stages.usable_clips(store, cfg, target_store)
    if excluded:
        log.info("%s stage %d: excluded clips %s", where, cfg.stage, excluded)
    if len(usable) == 0:
        raise LoaderError(f"{where}: no clip is usable for stage {cfg.stage} "
                          f"(excluded: {excluded})")
    index, count = _shard(cfg)
    per_process = len(usable) // count
    if per_process == 0:
        raise LoaderError(f"{where}: {len(usable)} usable clips for {count} processes")
    sampler = stages.Sampler(store, cfg, usable, target_store)
    if cfg.stage == 2 and len(sampler.speaker_keys) < 2:
        raise LoaderError(f"{where}: stage 2 needs clips of two speakers at least, found "
                          f"{sampler.speaker_keys}")

    ds = grain.MapDataset.range(per_process).repeat(cfg.num_epochs)
    ds = ds.map_with_index(EpochOrder(usable, cfg.seed, cfg.shuffle, index, count))
    ds = ds.map(sampler)
    keys = stages.IMAGE_KEYS[cfg.stage]
    convert = cfg.dtype == "float32"
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder,
                  batch_fn=_Collate(keys, convert and cfg.worker_count == 0))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                                 prefetch_buffer_size=cfg.prefetch))
    if cfg.worker_count > 0:
        _mark_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                         per_worker_buffer_size=cfg.prefetch),
            worker_init_fn=functools.partial(_init_worker, cfg.tune_malloc))
    per_epoch = (per_process // cfg.batch_size if cfg.drop_remainder
                 else -(-per_process // cfg.batch_size))
    return LoaderIterator(iter(it_ds), num_clips=per_process, batches_per_epoch=per_epoch,
                          excluded=excluded,
                          convert_keys=keys if convert and cfg.worker_count > 0 else (),
                          fingerprint=fingerprint(cfg, usable, index, count),
                          max_skip_fraction=cfg.max_skip_fraction, where=where)


def _mark_absl_flags_parsed() -> None:
    """grain workers read absl flags; a script that never ran absl.app would fail there."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def stage1_loader(cfg: LoaderConfig, store=None) -> LoaderIterator:
    """Encoder + generator pretraining (LIA): source, target."""
    return make_loader(dataclasses.replace(cfg, stage=1), store)


def stage2_loader(cfg: LoaderConfig, store=None) -> LoaderIterator:
    """Mouth-pose decoupling: clips A and B of two speakers and the two mouth swaps."""
    return make_loader(dataclasses.replace(cfg, stage=2), store)


def stage3_loader(cfg: LoaderConfig, store=None) -> LoaderIterator:
    """Expression decoupling: identity, target of one emotional clip, emotion, level."""
    return make_loader(dataclasses.replace(cfg, stage=3), store)


def stage4_loader(cfg: LoaderConfig, store=None) -> LoaderIterator:
    """Audio-to-lip: T consecutive frames, mel windows, mouth boxes, lip/pose targets."""
    return make_loader(dataclasses.replace(cfg, stage=4), store)


def to_global_arrays(batch: Mapping[str, np.ndarray], sharding) -> dict:
    """Global jax.Arrays from this process's batch (every process calls it with its own
    batch): the leading dims are concatenated across processes. `sharding` is one
    jax.sharding.Sharding for every key or a mapping key -> Sharding."""
    import jax

    out = {}
    for key, value in batch.items():
        s = sharding[key] if isinstance(sharding, Mapping) else sharding
        out[key] = jax.make_array_from_process_local_data(s, np.asarray(value))
    return out


__all__ = ["LoaderConfig", "LoaderError", "LoaderIterator", "fingerprint", "make_loader",
           "stage1_loader", "stage2_loader", "stage3_loader", "stage4_loader", "to_global_arrays"]
