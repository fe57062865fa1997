"""Expands a sweep (configs/sweeps/*.py) into launch.train runs, runs or prints them, and
summarises their final metrics (edtalk_jax/sweep.py).

  python -m launch.sweep --sweep=configs/sweeps/bank_sizes.py --workdir=sweeps/banks \
      [--mode=run|print|summary] [--base_arg=tiny] [--config.key=value ...]

  run      the runs one after another here (finished ones are skipped), then the summary
  print    one `python -m launch.train ...` line per run (stdout and WORKDIR/commands.sh),
           for a cluster scheduler; run from the repository root
  summary  the table of final metrics only (after the scheduler's jobs are done)

Every mode writes WORKDIR/<run>/sweep_config.json; the summary goes to stdout,
WORKDIR/summary.md and WORKDIR/summary.json. --config.key=value applies to every run.
"""

import os
import sys

from absl import app, flags

flags.DEFINE_string("sweep", None, "a configs/sweeps/*.py file")
flags.DEFINE_string("workdir", None, "sweep directory: one sub-directory per run")
flags.DEFINE_enum("mode", "run", ["run", "print", "summary"], "see the module docstring")
flags.DEFINE_string("base_arg", None, "replaces the sweep's BASE_ARG (e.g. tiny)")
flags.mark_flags_as_required(["sweep", "workdir"])


def _parse(argv):
    """absl flags, with the --config.k=v overrides set aside (they are not absl flags)."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    rest = [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]
    return flags.FLAGS(rest) + overrides


def main(argv):
    from edtalk_jax import sweep as sw

    f = flags.FLAGS
    extra = [a for a in argv[1:] if a.startswith("--config.")]
    if len(extra) != len(argv) - 1:
        raise app.UsageError(f"unexpected arguments: {[a for a in argv[1:] if a not in extra]}")
    workdir = os.path.abspath(f.workdir)  # the runs execute from the repository root
    try:
        spec = sw.load(f.sweep, f.base_arg)
        runs = sw.expand(spec, workdir, sw.parse_overrides(extra))
    except sw.SweepError as e:
        raise SystemExit(f"sweep: {e}") from None
    text = sw.write_plan(spec, runs, workdir)
    if f.mode == "print":
        sys.stdout.write(text)
        return
    results = sw.execute(runs) if f.mode == "run" else None
    print(sw.summarize(spec, runs, workdir, results))
    if results and any(r["returncode"] for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
