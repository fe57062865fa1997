"""Inference speed of every mode against frame batch size; one JSON line per (mode, batch).

  python -m launch.benchmark_infer [--modes edtalk_a,edtalk_a_emotion,edtalk_v,lip_pose_a]
      [--batch 1,4,8] [--size 256] [--width_div 1] [--dtype float32] [--repeats 3]

Random weights, the functions launch.infer runs (edtalk_jax/benchmark.py `inference`):
per output frame the driving frames are encoded (2 videos for EDTalk-A, 1 with a
predefined emotion, 3 for EDTalk-V, none for the lip-pose model with a fixed pose),
Audio2Lip maps the audio windows, and the frame is rendered; the source is encoded once.
Compare with the official per-frame demo calls: ../shared/tools/bench_official.py inference.
"""

import argparse
import json
import logging


def main(argv=None) -> None:
    from edtalk_jax import benchmark

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default=",".join(benchmark.INFER_MODES))
    p.add_argument("--batch", default="1,4,8", help="frame batch sizes")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--width_div", type=int, default=1, help="channel widths / this (1: official)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)
    batches = [int(b) for b in args.batch.split(",")]
    for mode in args.modes.split(","):
        try:
            rows = benchmark.inference(mode.strip(), batches, args.size, args.width_div, args.dtype, args.repeats)
        except ValueError as e:
            p.error(str(e))
        for row in rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
