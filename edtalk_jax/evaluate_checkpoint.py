"""Scores a generator on a shard directory's held-out split: every clip is rebuilt from
its first frame (self-reconstruction: each frame drives lip, pose and expression, as
EDTalk-V with one video) and compared with the clip by `edtalk_jax.evaluation`'s
metrics, next to the copy-the-source baseline (the first frame held). On data with
ground-truth factors (the synthetic dataset) the disentanglement matrix is added
(`edtalk_jax.disentanglement`). `launch.evaluate --checkpoint CKPT --shards DIR`.

The report: `metrics` (frame-weighted means over the clips), `baseline` (copy-the-source
PSNR/SSIM/LPIPS), `skipped`, `frames`, `clips`, `disentanglement` ({"matrix", "clips"}
or absent with a reason in `skipped`), `notes`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from edtalk_jax import evaluation

BASELINE_METRICS = ("psnr", "ssim", "lpips")  # the cheap ones, for copy-the-source


def self_reconstruction_fn(model, batch_size: int):
    """-> fn(variables, source uint8 (S, S, 3), frames uint8 (T, S, S, 3)) -> uint8 frames:
    frames driven in fixed chunks through one compiled program (weights as arguments)."""
    from edtalk_jax import inference

    @jax.jit
    def render(variables, source, frames):
        to_float = lambda x: x.astype(np.float32) / 127.5 - 1
        src = inference.encode_source(model, variables, to_float(source)[None])
        image = inference.drive(model, variables, src, img=to_float(frames))["image"]
        return ((image.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)

    def fn(variables, source, frames):
        n = len(frames)
        pad = -n % batch_size
        padded = np.concatenate([frames, np.repeat(frames[-1:], pad, 0)]) if pad else frames
        out = [np.asarray(render(variables, source, padded[i:i + batch_size]))
               for i in range(0, len(padded), batch_size)]
        return np.concatenate(out)[:n]

    return fn


def evaluate_checkpoint(checkpoint: str, shards_dir: str, split: str = "test",
                        metrics: Sequence[str] = evaluation.METRICS, max_clips: Optional[int] = None,
                        batch_size: int = 16, progress: bool = True,
                        networks: Optional[evaluation.MetricNetworks] = None) -> Dict[str, Any]:
    """Module docstring. `networks`: the weights-file metrics' networks; LSE scores each
    clip with its own audio, emotion accuracy against the clip's most frequent class, and
    FID pools the frames of every clip (one distance for the split)."""
    from tqdm import tqdm

    from data_pipeline.preprocess import audio as audio_lib
    from data_pipeline.loaders import images
    from data_pipeline.records import directory
    from edtalk_jax import disentanglement, fid

    from edtalk_jax import initialize

    model, variables, cfg, _ = initialize.load_generator(checkpoint)
    size = int(cfg["size"])
    try:
        store = directory.open_clips(shards_dir, split)
    except (FileNotFoundError, ValueError) as e:
        raise evaluation.EvaluationError(f"{shards_dir}: {e}") from None
    count = len(store) if max_clips is None else min(len(store), max_clips)
    if not count:
        raise evaluation.EvaluationError(f"{shards_dir}: split {split!r} has no clips")
    render = self_reconstruction_fn(model, batch_size)
    networks = networks or evaluation.MetricNetworks()
    pool = {"pred": [], "ref": []} if "fid" in metrics and networks.inception is not None else None
    sums: Dict[str, float] = {}  # metric -> sum of clip value x clip frames (counts: sum)
    base_sums: Dict[str, float] = {}
    weights: Dict[str, int] = {}  # metric -> frames of the clips it was scored on
    frames_total, skipped, notes = 0, {}, []
    for i in tqdm(range(count), desc="clips", disable=not progress):
        record = store.clip(i)
        clip = images.resize_frames(record["frames"], size)
        pred = render(variables, clip[0], clip)
        scored = evaluation.evaluate(pred, clip, [m for m in metrics if m != "fid"], networks=networks,
                                     audio=audio_lib.int16_to_wav(record["audio"]))
        if pool is not None:
            pool["pred"].append(fid.inception_features(pred, networks.inception))
            pool["ref"].append(fid.inception_features(clip, networks.inception))
        held = evaluation.evaluate(np.repeat(clip[:1], len(clip), 0), clip,
                                   [m for m in metrics if m in BASELINE_METRICS])
        t = scored["frames"]
        frames_total += t
        for report, acc in ((scored, sums), (held, base_sums)):
            for k, v in report["metrics"].items():
                acc[k] = acc.get(k, 0.0) + (v if k.endswith("without_face") else v * t)
                if acc is sums:
                    weights[k] = weights.get(k, 0) + t
        skipped.update(scored["skipped"])
        notes += [n for n in scored["notes"] if n not in notes]
    mean = lambda acc: {k: (v if k.endswith("without_face") else v / weights[k]) for k, v in acc.items()}
    # a metric skipped on some clips and scored on others is averaged over those clips: say so
    partial = sorted(set(skipped) & set(sums))
    if partial:
        notes.append(f"{partial}: scored on the clips with faces only")
    report = {"checkpoint": checkpoint, "shards": shards_dir, "split": split, "clips": count,
              "frames": frames_total, "metrics": mean(sums), "baseline": mean(base_sums),
              "skipped": {k: v for k, v in skipped.items() if k not in sums}, "notes": notes}
    if "fid" in metrics:
        if pool is None:
            report["skipped"]["fid"] = f"no weights given: {evaluation.NETWORK_METRICS['fid'][1]}"
        else:
            stats = [fid.statistics(np.concatenate(pool[k])) for k in ("pred", "ref")]
            report["metrics"]["fid"] = fid.frechet_distance(*stats[0], *stats[1])
    try:
        report["disentanglement"] = disentanglement.evaluate(model, variables, shards_dir, size, batch_size)
    except (ValueError, FileNotFoundError) as e:
        report["skipped"]["disentanglement"] = str(e)
    return report
