"""`run_local`: preprocesses a list of videos (data_pipeline.preprocess.clips) into a shard
directory with a process pool: one shard per video, resumable, a report, and a stop when
more than `max_failure_rate` of the videos are skipped whole."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2

from data_pipeline import files
from data_pipeline.preprocess import video_io
from data_pipeline.records.schema import FPS
from data_pipeline.preprocess.clips import PreprocessOptions, ProcessResult, VideoItem, iter_clips
from data_pipeline.records import shards
from data_pipeline.records.splits import write_splits


def run_local(items: Sequence[VideoItem], output_dir, options: PreprocessOptions, workers: int = 1,
              progress: bool = True, splits: Optional[dict] = None) -> dict:
    """Preprocesses `items` into `output_dir/shards/<key>.array_record` (one shard per video)
    with a pool of `workers` processes, then writes the manifest, the splits (`splits`:
    keyword arguments of records.splits.write_splits) and `output_dir/report.json`; returns the report.

    Resumable: a video with a status file (`output_dir/status/<key>.json`, written after
    its shard is complete) or a complete shard is done and not redone; an interrupted
    one left only a `.tmp` file and is redone.

    Bad inputs (the named data errors, see `iter_clips`) become counted skips; any other
    exception in a video stops the run and propagates. When more than
    `options.max_failure_rate` of the videos are skipped whole, the run stops (see
    `_Failures` for when that is decided) and raises TooManyFailures with the counts and
    the first reasons; report.json is written (with "stopped"), the manifest is not.
    Videos done before count too, so a resumed run stops again until the limit is raised
    (it may differ between runs of one directory) or the failed videos' status files
    (output_dir/status/<key>.json) are removed to redo them.
    """
    from tqdm import tqdm

    options.validate()
    out = os.fspath(output_dir)
    shards_dir, status_dir = os.path.join(out, "shards"), os.path.join(out, "status")
    os.makedirs(status_dir, exist_ok=True)
    _check_items(items)
    files.same_config(os.path.join(out, "options.json"), dataclasses.asdict(options), out,
                      ignore=_RUN_ONLY)  # _RUN_ONLY fields may differ between runs
    start = time.perf_counter()
    before = {it.key: _status(it, shards_dir, status_dir) for it in items}
    todo = [it for it in items if before[it.key] is None]
    failures = _Failures(options.max_failure_rate, len(items))
    for key, status in before.items():
        if status is not None:
            failures.add(key, status)
    run = functools.partial(_run_item, options=options, shards_dir=shards_dir, status_dir=status_dir)
    bar = tqdm(total=len(todo), unit="video", disable=not progress, desc="preprocess")
    stopped = failures.exceeded()
    with contextlib.ExitStack() as stack:
        if stopped or workers <= 1 or len(todo) <= 1:
            done = map(run, [] if stopped else todo)
        else:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(min(workers, len(todo)),
                                                                                 _init_worker))
            done = pool.imap_unordered(run, todo)  # leaving the block terminates the pool
        for key, status in done:
            bar.update()
            failures.add(key, status)
            stopped = failures.exceeded()
            if stopped:
                break
    bar.close()
    statuses = {it.key: st for it in items if (st := _status(it, shards_dir, status_dir)) is not None}
    report = _report(statuses, options, {it.key for it in todo} & set(statuses), time.perf_counter() - start)
    report.update(num_items=len(items), failures=failures.summary())
    if stopped:
        report["stopped"] = stopped
        path = os.path.join(out, "report.json")
        files.write_json(path, report)
        raise TooManyFailures(f"{stopped}\nreport: {path}", report)
    if report["clips_written"]:
        manifest = shards.write_manifest(shards_dir)
        split = write_splits(shards_dir, **(splits or {}))
        report.update(num_clips=manifest["num_clips"], splits={k: len(v) for k, v in split.items()})
    files.write_json(os.path.join(out, "report.json"), report)
    return report


class TooManyFailures(RuntimeError):
    """More videos were skipped whole than PreprocessOptions.max_failure_rate allows."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class _Failures:
    """Counts the videos skipped whole (a skip of the video's own key) and decides when
    their share exceeds `limit`: as soon as the failures alone exceed `limit` of all
    `total` videos (certain, however the rest go), or earlier when more than `limit` of
    the finished videos failed once at least MIN_FINISHED have finished (a systematic
    failure: a wrong audio dir, a missing codec, ...)."""

    MIN_FINISHED = 20
    SHOWN = 5  # first reasons in the message

    def __init__(self, limit: float, total: int):
        self.limit, self.total = limit, total
        self.finished = 0
        self.failed: List[Tuple[str, str]] = []  # (key, reason), in the order they finished

    def add(self, key: str, status: dict) -> None:
        self.finished += 1
        reasons = [why for what, why in status["skipped"] if what == key]
        if reasons:
            self.failed.append((key, reasons[0]))

    def exceeded(self) -> Optional[str]:
        """None, or the message that stops the run."""
        n = len(self.failed)
        certain = n > self.limit * self.total
        trend = self.finished >= self.MIN_FINISHED and n > self.limit * self.finished
        if not (certain or trend):
            return None
        kinds = collections.Counter(why.split(":")[0] for _, why in self.failed)
        first = "\n".join(f"  {key}: {why}" for key, why in self.failed[: self.SHOWN])
        return (f"preprocessing stopped: {n} of {self.finished} finished videos were skipped whole "
                f"({n / self.finished:.0%}; {self.total} videos in all), more than max_failure_rate="
                f"{self.limit:g} allows ({', '.join(f'{k}: {c}' for k, c in kinds.most_common())}). "
                f"First reasons:\n{first}\nFix the inputs or raise --max-failure-rate; a video once "
                "skipped is redone only when its status file (DIR/status/<key>.json) is removed.")

    def summary(self) -> dict:
        return {"finished": self.finished, "skipped_whole": len(self.failed), "limit": self.limit,
                "first": [list(f) for f in self.failed[: self.SHOWN]]}


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one video per core: no thread oversubscription


def _check_items(items: Sequence[VideoItem]) -> None:
    seen = {}
    for it in items:
        if it.key in seen:
            raise ValueError(f"duplicate item key {it.key!r}: {seen[it.key]} and {it.source or it.path}")
        seen[it.key] = it.source or it.path


_RUN_ONLY = ("max_failure_rate",)  # options that steer a run without changing its outputs


def _shard_path(shards_dir: str, key: str) -> str:
    return os.path.join(shards_dir, key + ".array_record")


def _status(item: VideoItem, shards_dir: str, status_dir: str) -> Optional[dict]:
    """The item's status when it is done, else None."""
    path = os.path.join(status_dir, item.key + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    shard = _shard_path(shards_dir, item.key)
    if os.path.exists(shard):  # complete shard, status lost in a crash right after it
        count = len(shards.shard_clips(shard))
        return {"source": item.source, "clips": count, "skipped": [], "stats": {"resumed": True}}
    return None


def _run_item(item: VideoItem, options: PreprocessOptions, shards_dir: str,
              status_dir: str) -> Tuple[str, dict]:
    """Processes one video into its shard and writes its status file (worker entry point);
    returns (key, status). A failure other than a data error (iter_clips), e.g. a full
    disk while writing, propagates: the shard's .tmp file is removed, no status is written,
    and the video is redone on resume."""

    result = ProcessResult(item.key)
    count = 0
    try:
        with contextlib.ExitStack() as stack:
            writer = None
            for clip in iter_clips(item, options, result):
                if writer is None:
                    writer = stack.enter_context(shards.ShardWriter(_shard_path(shards_dir, item.key)))
                writer.write(clip)
                count += 1
    except Exception as e:
        if not any("while preprocessing" in note for note in getattr(e, "__notes__", [])):
            e.add_note(f"while preprocessing {item.source or video_io.display_path(item.path)} (key {item.key})")
        raise
    status = {"source": item.source or video_io.display_path(item.path), "clips": count,
              "skipped": [list(s) for s in result.skipped], "stats": result.stats}
    files.write_json(os.path.join(status_dir, item.key + ".json"), status)
    return item.key, status


def _report(statuses: Dict[str, dict], options, now: set, seconds: float) -> dict:
    reasons = collections.Counter()
    timing = collections.defaultdict(float)
    video_seconds = 0.0  # of the videos processed in this run
    for key, st in statuses.items():
        for what, why in st["skipped"]:
            reasons[why.split(":")[0]] += 1
        if key in now:
            for name, sec in st["stats"].get("seconds", {}).items():
                timing[name] += sec
            video_seconds += st["stats"].get("frames", 0) / FPS
    return {
        "options": dataclasses.asdict(options),
        "num_items": len(statuses),
        "done_before": len(statuses) - len(now),
        "clips_written": sum(st["clips"] for st in statuses.values()),
        "items_with_clips": sum(1 for st in statuses.values() if st["clips"]),
        "items_skipped": sum(1 for k, st in statuses.items() if any(w == k for w, _ in st["skipped"])),
        "skip_reasons": dict(reasons),
        "seconds": seconds,  # wall clock of this run
        "video_seconds": video_seconds,
        "seconds_per_video_minute": seconds / (video_seconds / 60) if video_seconds else None,
        "process_seconds": dict(timing),
        "items": statuses,
    }
