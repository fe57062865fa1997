"""Compiles a stage's train step ahead of time for the configured mesh and global batch,
without allocating the model; prints one JSON line (FLOPs, bytes per device, compile
time). Run it before booking a pod slice (docs/pods.md).

  python -m launch.compile_check --config=configs/stage2.py
  python -m launch.compile_check --config=configs/stage3.py --fake_devices=8 \
      --config.mesh.data=1 --config.mesh.fsdp=8 --config.perceptual.backbone=random_vgg19
  python -m launch.compile_check --config=configs/stage3.py --fake_devices=8 --nocompile ...

--fake_devices=N re-runs this command with N CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, JAX_PLATFORMS=cpu): a target
mesh checked on a workstation. Weight files in the config are not read. --nocompile
reports the state's bytes per device from shapes alone, without compiling.
"""

import os
import sys

_FAKE = "--xla_force_host_platform_device_count"


def _reexec_with_fake_devices(argv):
    """Before jax is imported: `--fake_devices=N` -> this command again with N CPU devices."""
    n = None
    for i, a in enumerate(argv):
        if a.startswith("--fake_devices="):
            n = a.split("=", 1)[1]
        elif a == "--fake_devices" and i + 1 < len(argv):
            n = argv[i + 1]
    if not n or not n.isdigit() or int(n) < 1 or f"{_FAKE}={int(n)}" in os.environ.get("XLA_FLAGS", "").split():
        return
    if "jax" in sys.modules:
        raise RuntimeError("--fake_devices must be handled before jax is imported")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FAKE))
               + f" {_FAKE}={int(n)}")
    os.execve(sys.executable, [sys.executable, "-m", "launch.compile_check", *argv[1:]], env)


if __name__ == "__main__":
    _reexec_with_fake_devices(sys.argv)

import json  # noqa: E402  (after the re-exec: nothing below may import jax first)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import cli  # noqa: E402

config_flags.DEFINE_config_file("config", None, "a configs/*.py file [:arg]", lock_config=True)
flags.DEFINE_integer("fake_devices", None, "compile for N fake CPU devices (re-executes with XLA_FLAGS)")
flags.DEFINE_bool("compile", True, "--nocompile: check the config and report the train state's bytes per "
                  "device from shapes alone (seconds), without compiling (no FLOPs, no XLA memory analysis)")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    import jax

    from edtalk_jax import compile_check

    n = flags.FLAGS.fake_devices
    if n and jax.device_count() != n:
        raise SystemExit(f"--fake_devices={n}: jax sees {jax.device_count()} devices (was jax imported "
                         "before the re-exec, or XLA_FLAGS overridden?)")
    try:
        result = compile_check.run(flags.FLAGS.config, compile=flags.FLAGS.compile)
    except ValueError as e:  # config errors (ConfigError, mesh and batch rules) name the field
        raise SystemExit(f"compile_check: {e}") from None
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser("compile_check"))
