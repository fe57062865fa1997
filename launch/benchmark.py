"""Benchmarks the training step of a stage config; prints one JSON line.

  python -m launch.benchmark train --config=configs/stage2.py:size=128 --config.batch_size=2 --steps 3
  python -m launch.benchmark train --config=configs/stage1.py:tiny --steps 5 --workdir=/tmp/bench

`train`: the step alone on device-resident random batches, then end to end with the
real loader (edtalk_jax/benchmark.py). The official VGG19 without a weight file is
replaced by random_vgg19 (same cost); --workdir defaults to a temporary directory
(where the synthetic dataset is built when data.shards_dir is empty). `mfu` needs a
known accelerator (edtalk_jax/metrics.py) or --peak_flops; it is null otherwise.
"""

import json
import logging
import shutil
import tempfile

from absl import app, flags
from ml_collections import config_flags

from launch import cli

config_flags.DEFINE_config_file("config", None, "a configs/*.py file [:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "a scratch run directory (default: a temporary one, removed after); "
                    "not a training run's: the benchmark writes its config.json there")
flags.DEFINE_integer("steps", 5, "timed steps (after the warm-up)")
flags.DEFINE_integer("warmup", 1, "untimed steps after compiling")
flags.DEFINE_bool("end_to_end", True, "also time steps fed by the real loader")
flags.DEFINE_float("peak_flops", None, "peak FLOP/s of one device for mfu (default: the table in "
                   "edtalk_jax/metrics.py; mfu is null for devices it does not know, CPUs included)")
flags.mark_flags_as_required(["config"])


def main(argv):
    if argv[1:] != ["train"]:
        raise app.UsageError("usage: python -m launch.benchmark train --config=... [--steps N]")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from edtalk_jax import benchmark

    f = flags.FLAGS
    workdir = f.workdir or tempfile.mkdtemp(prefix="edtalk_bench_")
    try:
        result = benchmark.train(f.config, workdir, steps=f.steps, warmup=f.warmup, end_to_end=f.end_to_end,
                                 peak_flops=f.peak_flops)
    except ValueError as e:  # config errors (ConfigError, mesh and batch rules) name the field
        raise SystemExit(f"benchmark: {e}") from None
    finally:
        if not f.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser("benchmark"))
