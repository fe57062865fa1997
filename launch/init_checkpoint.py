"""Writes a randomly initialised model in the official .pt layout (needs edtalk-jax[torch]).

  python -m launch.init_checkpoint --kind generator --size 256 --out edtalk_random.pt [--width-div 1]

Useful to exercise tools built around the official files (parity CLI, converters,
benchmarks at the official size) without the released weights.
"""

import argparse
import sys

import jax

from edtalk_jax import convert_torch
from edtalk_jax.models import build_model, example_inputs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m launch.init_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=convert_torch.KINDS, default="generator")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--width-div", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = dict(size=args.size, width_div=args.width_div)
    if args.kind in ("generator", "lip_pose"):
        cfg.update(style_dim=512, lip_dim=20, pose_dim=6, exp_dim=10 if args.kind == "generator" else 0)
    model = build_model(args.kind, cfg)
    variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(args.seed), *example_inputs(args.kind, cfg)))
    if "channels" in model.__dataclass_fields__:
        cfg["channels"] = model.channels
    convert_torch.save_official(args.out, args.kind, cfg, variables)
    print(f"random {args.kind} {cfg} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
