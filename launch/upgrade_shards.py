"""Converts format-version-1 clip data to the current frame-addressable format.

  python -m launch.upgrade_shards OLD_DIR --out NEW_DIR

OLD_DIR: a shard directory written before the format change (launch.synthesize,
launch.preprocess's shards/) or a TFDS build of builder version 1.0.0. NEW_DIR receives
a shard directory with the same clips, splits and stage-4 targets
(data_pipeline/records/upgrade.py). Rerunning after an interruption keeps converted shards.
"""

import argparse
import json
import sys

from data_pipeline.records import upgrade


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.upgrade_shards", description=__doc__.split("\n")[0])
    p.add_argument("src", help="version-1 shard directory or TFDS dataset directory")
    p.add_argument("--out", required=True, help="the new shard directory")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        result = upgrade.upgrade(args.src, args.out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
