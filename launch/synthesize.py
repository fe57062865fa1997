"""Renders the synthetic talking-head dataset into shards + manifest + splits.

  python -m launch.synthesize --out DIR --size 256 --speakers 8 --clips 4 --frames 125 \
      --seed 0 --workers N

Re-running with the same settings resumes (speakers already written are skipped).
"""

import argparse
import json

from data_pipeline import synthetic
from data_pipeline.records import schema


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output shard directory")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--clips", type=int, default=4, help="clips per speaker")
    parser.add_argument("--frames", type=int, default=125, help="frames per clip (25 fps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jpeg_quality", type=int, default=schema.JPEG_QUALITY)
    parser.add_argument("--emotions", default=",".join(schema.EMOTIONS),
                        help="comma-separated subset of " + ",".join(schema.EMOTIONS))
    parser.add_argument("--mouth-scale", "--mouth_scale", type=float, default=1.0,
                        help="multiplies every speaker's maximum lip opening (small frames: 2.5)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    cfg = synthetic.SyntheticConfig(
        num_speakers=args.speakers, clips_per_speaker=args.clips, frames_per_clip=args.frames,
        size=args.size, jpeg_quality=args.jpeg_quality, seed=args.seed, mouth_scale=args.mouth_scale,
        emotions=tuple(e for e in args.emotions.split(",") if e))
    summary = synthetic.write_dataset(cfg, args.out, workers=args.workers)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
