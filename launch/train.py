"""Trains one EDTalk stage, or the demo curriculum (configs/demo.py: stages 1 -> 4).

  python -m launch.train --config=configs/stage2.py --workdir=runs/stage2 \
      [--config.key=value ...]
  python -m launch.train --config=configs/demo.py --workdir=workdir       # the main job

Multi-host: every process runs the same command; `jax.distributed.initialize` is called
with --coordinator_address/--num_processes/--process_id when given, or with the
cluster's auto-detection (TPU pods, SLURM) with --distributed=auto.
"""

import json
import logging

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "a configs/*.py file [:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, samples)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host)")
flags.DEFINE_integer("num_processes", None, "processes in the job (multi-host)")
flags.DEFINE_integer("process_id", None, "this process (multi-host)")
flags.DEFINE_enum("distributed", "off", ["off", "auto"], "auto: jax.distributed.initialize() "
                  "from the cluster environment (TPU pods, SLURM)")
flags.DEFINE_integer("initialization_timeout", 300, "seconds to wait for the other processes")
flags.DEFINE_bool("progress", True, "console progress bars")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    f = flags.FLAGS
    for name in ("edtalk_jax", "data_pipeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax/grain INFO chatter
    from edtalk_jax import distributed
    try:
        distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                               auto=f.distributed == "auto", timeout=f.initialization_timeout)
    except (ValueError, distributed.CoordinatorError) as e:
        raise SystemExit(f"launch.train: {e}") from None
    if "curriculum" in f.config:
        from edtalk_jax import curriculum
        result = curriculum.run(f.config, f.workdir, progress=f.progress)
    else:
        from edtalk_jax import train
        result = train.train_and_evaluate(f.config, f.workdir, progress=f.progress)
        result.pop("_run", None)
    print(json.dumps(result, default=str)[:4000])


if __name__ == "__main__":
    app.run(main)
