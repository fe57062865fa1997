"""Times the flow warp (grid_sample) forward and forward+backward, the custom-VJP version
against autodiff of the reference, at decoder shapes. One JSON line per shape.

  python -m launch.benchmark_warp --shapes 2x64x64x128,8x32x32x64 --repeats 20

fwd: the warped output. fwd+bwd: the output and the cotangents of feat and grid for a
random output cotangent (what a training step computes). Each is jitted once, then old
and new are timed alternately `--repeats` times; the medians are reported (milliseconds).
Each line also gives the largest difference between old and new (values and gradients,
relative to the largest magnitude), as a check.
"""

import argparse
import json
import statistics
import time

DEFAULT_SHAPES = "8x8x8x512,8x16x16x512,8x32x32x64,2x64x64x128,2x128x128x64,2x256x256x64"


def _case(shape, dtype, seed=0):
    import jax.numpy as jnp
    import numpy as np

    from edtalk_jax.layers.warp import base_grid
    b, h, w, c = shape
    rng = np.random.default_rng(seed)
    feat = jnp.asarray(rng.normal(size=shape), dtype)
    flow = np.tanh(rng.normal(size=(b, h, w, 2))) + np.asarray(base_grid(h, jnp.float32))  # as ToFlow
    ct = jnp.asarray(rng.normal(size=shape), dtype)
    return feat, jnp.asarray(flow, jnp.float32), ct


def _rel_err(a, b):
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def bench_shape(shape, dtype="float32", repeats=20):
    import jax

    from edtalk_jax.layers.warp import grid_sample, reference_grid_sample
    feat, grid, ct = _case(shape, dtype)
    fns = {}
    for name, fn in (("old", reference_grid_sample), ("new", grid_sample)):
        fns[name, "fwd"] = jax.jit(fn)
        fns[name, "fwdbwd"] = jax.jit(lambda f, g, c, fn=fn: (lambda o, vjp: (o,) + vjp(c))(*jax.vjp(fn, f, g)))
    results = {k: jax.block_until_ready(f(feat, grid) if k[1] == "fwd" else f(feat, grid, ct))
               for k, f in fns.items()}  # compile
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            args = (feat, grid) if k[1] == "fwd" else (feat, grid, ct)
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in times.items()}
    old, new = results["old", "fwdbwd"], results["new", "fwdbwd"]
    return {"shape": "x".join(map(str, shape)), "dtype": dtype, "repeats": repeats,
            "old_fwd_ms": round(med["old", "fwd"], 3), "new_fwd_ms": round(med["new", "fwd"], 3),
            "old_fwdbwd_ms": round(med["old", "fwdbwd"], 3), "new_fwdbwd_ms": round(med["new", "fwdbwd"], 3),
            "speedup_fwdbwd": round(med["old", "fwdbwd"] / med["new", "fwdbwd"], 2),
            "max_rel_diff": {k: _rel_err(a, b) for k, a, b in zip(("out", "dfeat", "dgrid"), new, old)},
            "backend": jax.default_backend()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m launch.benchmark_warp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BxHxWxC (square grids)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="feature dtype")
    args = p.parse_args(argv)
    for s in args.shapes.split(","):
        shape = tuple(int(x) for x in s.split("x"))
        print(json.dumps(bench_shape(shape, args.dtype, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
