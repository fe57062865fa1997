"""Scores a predicted talking-head video against a reference video (pair mode).

  python -m launch.evaluate --pred A.mp4 --ref B.mp4 --out R.json \
      [--metrics psnr,ssim,lpips,lmd,identity] [--max-frames N] [--trim]

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
    parser.add_argument("--pred", required=True, help="predicted (generated) video")
    parser.add_argument("--ref", required=True, help="reference (ground-truth) video")
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
    try:
        report = evaluation.evaluate_files(args.pred, args.ref, metrics, args.max_frames, args.trim, progress=True)
    except (evaluation.EvaluationError, VideoError, FaceError) as e:
        sys.exit(f"launch.evaluate: error: {e}")
    evaluation.write_report(args.out, report)
    print(json.dumps({k: report[k] for k in ("metrics", "skipped", "frames")}, indent=1))


if __name__ == "__main__":
    main()
