"""Synthetic talking heads, part 3: clips as schema records and the dataset writer.
Each clip is a schema record: frames, mel windows of its own audio, the drawn dlib-68
landmarks and the factors.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time

import numpy as np

from data_pipeline import files
from data_pipeline.preprocess import audio
from data_pipeline.records import schema, shards, splits
from data_pipeline.synthetic import drawing, factors

def _check(cfg: factors.SyntheticConfig) -> None:
    bad = [e for e in cfg.emotions if e not in schema.EMOTIONS]
    if bad or not cfg.emotions:
        raise ValueError(f"emotions {cfg.emotions} must be a non-empty subset of {schema.EMOTIONS}")
    if cfg.size < 32 or min(cfg.frames_per_clip, cfg.num_speakers, cfg.clips_per_speaker) < 1:
        raise ValueError(f"invalid {cfg}: size >= 32 and at least one speaker, clip, frame")


def speaker_id(speaker: int) -> str:
    return f"S{speaker:03d}"


def draw_frames(cfg: factors.SyntheticConfig, speaker: int,
                values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speaker `speaker` drawn with any factor values (T, F) in FACTOR_NAMES order: frames
    uint8 (T, size, size, 3) RGB and landmarks float32 (T, 68, 2)."""
    values = np.asarray(values, np.float32)
    if values.ndim != 2 or values.shape[1] != len(factors.FACTOR_NAMES):
        raise ValueError(f"factors must be (T, {len(factors.FACTOR_NAMES)}), got {values.shape}")
    ident = factors.identity(cfg, speaker)
    f = {name: values[:, i].astype(np.float64) for i, name in enumerate(factors.FACTOR_NAMES)}
    parts, unit = drawing.geometry(ident, f, cfg.size)
    bg = drawing.background(ident, cfg.size)
    frames = np.stack([drawing.draw(bg, parts, k, unit[k], ident, f) for k in range(len(values))])
    return frames, drawing.landmarks68(parts)


def render_clip(cfg: factors.SyntheticConfig, speaker: int, clip_index: int) -> dict:
    """Clip `clip_index` of speaker `speaker` as a schema record (pure, deterministic)."""
    _check(cfg)
    values, pcm, emotion, level = factors.clip_factors(cfg, factors.identity(cfg, speaker), speaker,
                                                       clip_index)
    images, landmarks = draw_frames(cfg, speaker, values)
    t = cfg.frames_per_clip
    frames = [shards.encode_jpeg(img, cfg.jpeg_quality) for img in images]
    meta = schema.make_meta(
        dataset="synthetic", speaker=speaker_id(speaker),
        clip_id=f"{speaker_id(speaker)}#{emotion}#level_{level}#{clip_index:03d}",
        emotion=emotion, level=level, fps=schema.FPS, num_frames=t, size=cfg.size,
        source=f"synthetic:seed={cfg.seed},speaker={speaker},clip={clip_index}",
        factor_names=",".join(factors.FACTOR_NAMES))
    mel = audio.mel_windows(audio.int16_to_wav(pcm), num_frames=t)
    return {"frames": frames, "mel_windows": mel, "landmarks": landmarks,
            "landmark_valid": np.ones(t, bool), "audio": pcm, "factors": values, "meta": meta}


def _encoded(task) -> bytes:
    cfg, speaker, clip_index = task
    return shards.encode_clip(render_clip(cfg, speaker, clip_index))


def write_dataset(cfg: factors.SyntheticConfig, out_dir: str | os.PathLike, workers: int | None = None,
                  progress: bool = True) -> dict:
    """Renders the dataset into `out_dir/synthetic/S###.array_record` (one shard per
    speaker), then writes the manifest and splits (a held-out speaker fraction by
    stable hash). Speakers whose shard exists are skipped, so an interrupted run
    resumes; `out_dir/synthetic_config.json` must match `cfg` to resume. Clips render
    in `workers` processes (default: all cores; <= 1: in this process)."""
    from tqdm import tqdm

    _check(cfg)
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "synthetic"), exist_ok=True)
    files.same_config(os.path.join(out_dir, "synthetic_config.json"), dataclasses.asdict(cfg), out_dir,
                      added={"mouth_scale": 1.0})

    def path(speaker: int) -> str:
        return os.path.join(out_dir, "synthetic", speaker_id(speaker) + shards.SHARD_SUFFIX)

    todo = [s for s in range(cfg.num_speakers) if not os.path.exists(path(s))]
    tasks = [(cfg, s, c) for s in todo for c in range(cfg.clips_per_speaker)]
    workers = os.cpu_count() if workers is None else workers
    start = time.perf_counter()
    pool = None
    if workers > 1 and len(tasks) > 1:  # spawn: safe beside threads (jax, grain) in the parent
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        results = pool.map(_encoded, tasks) if pool else map(_encoded, tasks)
        with tqdm(total=len(tasks), unit="clip", disable=not progress or not tasks) as bar:
            for s in todo:  # results arrive in task order: speaker by speaker
                with shards.ShardWriter(path(s)) as writer:
                    for _ in range(cfg.clips_per_speaker):
                        writer.write_encoded(next(results))
                        bar.update()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - start
    manifest = shards.write_manifest(out_dir)
    split = splits.write_splits(out_dir, other="by_speaker_hash")
    skipped = (cfg.num_speakers - len(todo)) * cfg.clips_per_speaker
    return {"clips_written": len(tasks), "clips_skipped": skipped,
            "num_clips": manifest["num_clips"], "train": len(split["train"]),
            "test": len(split["test"]), "seconds": seconds,
            "frames_per_s": len(tasks) * cfg.frames_per_clip / max(seconds, 1e-9)}
