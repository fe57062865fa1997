"""Computes the stage-4 lip/pose targets of a shard directory with a lip-pose generator.

  python -m launch.compute_targets --shards DIR --checkpoint EDTalk_lip_pose.pt --name NAME \
      [--batch 64]

--checkpoint is an official .pt (read without torch), a directory written by
launch.convert, a training workdir (its latest checkpoint; the EMA weights when kept) or
one step directory; kind "lip_pose" or the full "generator". Targets go to
DIR/targets/NAME/ (data_pipeline.loaders.targets), tied to the checkpoint file or step
directory; an interrupted run resumes per shard.
"""

from __future__ import annotations

import argparse
import json

def coeff_fn_from_checkpoint(path: str, batch_size: int):
    """(coeff_fn, model size, the file or step directory the weights come from) of the
    lip-pose (or full) generator stored at `path` (initialize.load_generator)."""
    from edtalk_jax import inference, initialize

    model, variables, cfg, where = initialize.load_generator(path)
    return inference.coefficient_fn(model, variables, ("lip", "pose"), batch_size), int(cfg["size"]), where


def main(argv=None) -> None:
    from data_pipeline.loaders import targets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="shard directory (with manifest.json)")
    parser.add_argument("--checkpoint", required=True,
                        help="lip-pose generator: official .pt, launch.convert directory, training "
                             "workdir or step directory")
    parser.add_argument("--name", required=True, help="targets name (DIR/targets/NAME)")
    parser.add_argument("--batch", type=int, default=64, help="frames per generator call")
    args = parser.parse_args(argv)
    coeff_fn, size, weights = coeff_fn_from_checkpoint(args.checkpoint, args.batch)
    info = targets.compute_targets(args.shards, args.name, coeff_fn, args.batch, checkpoint=weights, size=size)
    summary = {k: info[k] for k in ("name", "checkpoint", "lip_dim", "pose_dim", "complete")}
    summary.update(shards=len(info["shards"]), bad_clips=len(info["bad_clips"]))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
