"""Scores a predicted talking-head video against a reference video (pair mode), or a
generator on a shard directory's held-out split (checkpoint mode).

  python -m launch.evaluate --pred A.mp4 --ref B.mp4 --out R.json \
      [--metrics psnr,ssim,lpips,lmd,identity] [--max-frames N] [--trim]
  python -m launch.evaluate --checkpoint CKPT --shards DIR --out R.json \
      [--split test] [--max-clips N] [--metrics ...]

Checkpoint mode (`edtalk_jax/evaluate_checkpoint.py`): CKPT is an official .pt, a
launch.convert directory, a training workdir or a step directory; each held-out clip is
rebuilt from its first frame and scored, next to the copy-the-source `baseline`; on
data with ground-truth factors (synthetic) R.json adds the `disentanglement` matrix and
R.disentanglement.png draws it.

R.json: `metrics` (psnr, ssim, lpips, m_lmd, f_lmd, identity and the frames left out
for want of a face), `skipped` (metric -> why it has no value), `frames` (scored),
`inputs` (both files, their sizes, frame counts and rates, trimming, resizing) and
`notes`. What each metric is, and what is not available yet (emotion accuracy, LSE-C/D,
FID): `edtalk_jax/evaluation.py`.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    from data_pipeline.faces import FaceError
    from data_pipeline.video_io import VideoError
    from edtalk_jax import evaluation

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pred", help="predicted (generated) video (pair mode)")
    parser.add_argument("--ref", help="reference (ground-truth) video (pair mode)")
    parser.add_argument("--checkpoint", help="generator to score (checkpoint mode)")
    parser.add_argument("--shards", help="shard directory whose held-out split it is scored on")
    parser.add_argument("--split", default="test", help="checkpoint mode: the split (splits/<name>.json)")
    parser.add_argument("--max-clips", type=int, default=None, help="checkpoint mode: at most N clips")
    parser.add_argument("--out", required=True, help="report JSON, written atomically")
    parser.add_argument("--metrics", default=",".join(evaluation.METRICS),
                        help=f"comma-separated subset of {','.join(evaluation.METRICS)} (default: all)")
    parser.add_argument("--max-frames", type=int, default=None, help="score at most the first N frames")
    parser.add_argument("--trim", action="store_true",
                        help="score the common first frames when the frame counts differ (default: an error)")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(evaluation.METRICS))
    if not metrics or unknown:
        parser.error(f"--metrics: unknown {unknown or 'empty list'}; choose from {','.join(evaluation.METRICS)}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be at least 1")
    pair, model = bool(args.pred or args.ref), bool(args.checkpoint or args.shards)
    if pair == model or (pair and not (args.pred and args.ref)) or (model and not (args.checkpoint and args.shards)):
        parser.error("give --pred and --ref (pair mode) or --checkpoint and --shards (checkpoint mode)")
    try:
        if pair:
            report = evaluation.evaluate_files(args.pred, args.ref, metrics, args.max_frames, args.trim,
                                               progress=True)
        else:
            from edtalk_jax import evaluate_checkpoint
            report = evaluate_checkpoint.evaluate_checkpoint(args.checkpoint, args.shards, args.split, metrics,
                                                             args.max_clips)
    except (evaluation.EvaluationError, VideoError, FaceError) as e:
        sys.exit(f"launch.evaluate: error: {e}")
    except (FileNotFoundError, ValueError) as e:  # a checkpoint that is not one, unreadable shards
        sys.exit(f"launch.evaluate: error: {e}")
    if "disentanglement" in report:
        from edtalk_jax import disentanglement
        stem = args.out[:-5] if args.out.endswith(".json") else args.out
        report["disentanglement"]["plot"] = stem + ".disentanglement.png"
        disentanglement.heatmap_png(report["disentanglement"]["matrix"], report["disentanglement"]["plot"])
    evaluation.write_report(args.out, report)
    print(json.dumps({k: report[k] for k in ("metrics", "skipped", "frames")}, indent=1))


if __name__ == "__main__":
    main()
