"""Train-step benchmark: the trainer's own step, timed two ways.

  step alone   random batches of the stage's layout (compile_check.batch_spec), placed on
               the devices once; blocked after every step; median after warm-up
  end to end   batches from the run's real loader (the synthetic dataset, built in the
               workdir, when data.shards_dir is empty), put on the mesh every step as
               the trainer does; wall time of the timed steps / steps (not blocked
               between steps, so loading overlaps compute as in training)

The state, shardings, consts and loader are the trainer's (`train.Run`), so the numbers
are those of `launch.train` for the same config. FLOPs come from XLA's cost analysis of
the compiled step (per device, times the device count); MFU is reported where
`metrics.peak_flops` knows the accelerator or a peak is given (else `mfu` is null).
"""

import functools
import logging
import statistics
import time
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from edtalk_jax import compile_check, metrics, sharding
from edtalk_jax.steps import common

log = logging.getLogger(__name__)


def benchmark_config(config):
    """The config as benchmarked: random perceptual weights when the official VGG19 is asked
    for without a file (its cost is the same), no evaluation or image grids, and every clip
    of the synthetic dataset (the stage configs keep only "hdtf"/"mead" clips)."""
    with config.unlocked():
        if config.perceptual.backbone == "vgg19" and not config.perceptual.path:
            config.perceptual.backbone = "random_vgg19"
        config.eval_every_steps = 0
        config.images_every_steps = 0
        if not config.data.shards_dir:
            config.data.datasets = None
    return config


def _host_slice(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """This process's rows of a global host batch (process-order concatenation)."""
    n, i = jax.process_count(), jax.process_index()
    return {k: v[i * (len(v) // n):(i + 1) * (len(v) // n)] for k, v in batch.items()}


def _median_blocked(fn, state, batches, steps: int, warmup: int):
    times: List[float] = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = fn(state, batches(i))
        jax.block_until_ready((state, m))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return state, times


def train(config, workdir: str, steps: int = 5, warmup: int = 1, end_to_end: bool = True,
          progress: bool = False, peak_flops: Optional[float] = None) -> Dict[str, Any]:
    """Benchmarks `config`'s train step (module docstring); returns one JSON-able dict.
    `peak_flops`: per-device peak FLOP/s for `mfu` (default: metrics.peak_flops's table;
    `mfu` is None where neither knows the device, CPUs included)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, warmup={warmup}: need steps >= 1 and warmup >= 0")
    from edtalk_jax import train as trainer

    config = benchmark_config(config)
    t0 = time.perf_counter()
    run = trainer.Run(config, workdir, progress=progress)
    setup_s = time.perf_counter() - t0
    mesh, consts = run.mesh, run.consts
    step_fn = jax.jit(functools.partial(common.train_step, run.ctx),
                      in_shardings=(run.state_sharding, run.batch_sharding, run.repl, run.repl),
                      out_shardings=(run.state_sharding, run.repl), donate_argnums=(0,))
    rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), run.repl)
    spec = compile_check.batch_spec(config, run.model_cfg["size"])
    fixed = sharding.global_batch(_host_slice(compile_check.random_batch(spec, config.seed)), mesh)
    state = run.state
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, fixed, rng, consts).compile()
        compile_s = time.perf_counter() - t0
        flops = metrics.compiled_flops(compiled)
        flops = None if flops is None else flops * mesh.size
        fn = lambda s, b: compiled(s, b, rng, consts)
        state, times = _median_blocked(fn, state, lambda i: fixed, steps, warmup)
        s_per_step = statistics.median(times)
        b = int(config.batch_size)
        out: Dict[str, Any] = {
            "stage": config.stage, "devices": mesh.size, "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "batch": b,
            "size": run.model_cfg["size"], "channels": list(run.model_cfg["channels"]),
            "dtype": config.model.dtype, "perceptual": config.perceptual.backbone,
            "steps": steps, "warmup": warmup,
            "s_per_step": s_per_step, "s_per_step_all": [round(t, 4) for t in times],
            "samples_per_s": b / s_per_step, "flops_per_step": flops,
            "compile_s": round(compile_s, 2), "setup_s": round(setup_s, 2),
        }
        peak = metrics.peak_flops(override=peak_flops)
        out["peak_flops_per_device"] = peak
        out["mfu"] = flops / s_per_step / (peak * mesh.size) if flops and peak else None
        if end_to_end:
            out.update(_end_to_end(compiled, state, run, rng, consts, steps, warmup, b))
    return out


def _end_to_end(compiled, state, run, rng, consts, steps, warmup, batch_size) -> Dict[str, Any]:
    it, mesh = run.train_iter, run.mesh
    t0 = time.perf_counter()  # the loader alone (host batches, not placed)
    for _ in range(steps):
        next(it)
    data_s = (time.perf_counter() - t0) / steps
    for _ in range(warmup):
        state, _ = compiled(state, sharding.global_batch(next(it), mesh), rng, consts)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, sharding.global_batch(next(it), mesh), rng, consts)
    jax.block_until_ready((state, m))
    e2e = (time.perf_counter() - t0) / steps
    return {"e2e_s_per_step": e2e, "e2e_samples_per_s": batch_size / e2e,
            "loader_s_per_batch": data_s, "loss_finite": bool(np.isfinite(float(m["loss/g_total"])))}


# ------------------------------------------------------------------ inference
# Per output frame: encoder passes of driving frames (each driving video is encoded once
# per frame), Audio2Lip windows, and the render. The source is encoded once per video.
INFER_MODES = {
    # mode: (generator kind, driving videos encoded per frame, lips from audio)
    "edtalk_a": ("generator", 2, True),  # pose video + expression video
    "edtalk_a_emotion": ("generator", 1, True),  # pose video, predefined emotion
    "edtalk_v": ("generator", 3, False),  # lip, pose and expression videos
    "lip_pose_a": ("lip_pose", 0, True),  # pose held fixed
}


def inference(mode: str, batch_sizes=(1, 4, 8), size: int = 256, width_div: int = 1, dtype: str = "float32",
              repeats: int = 3, seed: int = 0) -> List[Dict[str, Any]]:
    """Frames/s of one inference mode (INFER_MODES) through `edtalk_jax.infer.Renderer`,
    the functions `launch.infer` runs, with random weights, one dict per batch size.
    Each repeat renders one batch of frames from scratch (driving frames encoded,
    Audio2Lip, render), blocked; the median is reported. FLOPs from XLA's cost analysis."""
    import jax.numpy as jnp

    from edtalk_jax import infer
    from edtalk_jax.models import build_model, example_inputs

    if mode not in INFER_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {sorted(INFER_MODES)}")
    kind, videos, from_audio = INFER_MODES[mode]
    cfg = {"size": size, "width_div": width_div}
    gen = build_model(kind, cfg, dtype=jnp.dtype(dtype))
    # Random weights of any quality: XLA's RngBitGenerator compiles the initialisation in
    # seconds where threefry takes minutes on a CPU (configs/base.py init_prng).
    key = jax.random.key(seed, impl="rbg")
    gen_vars = jax.jit(gen.init)(key, *example_inputs(kind, cfg))
    a2l = build_model("audio2lip", {"lip_dim": gen.lip_dim}, dtype=jnp.dtype(dtype))
    a2l_vars = jax.jit(a2l.init)(key, *example_inputs("audio2lip", {}))
    models = infer.Models(gen, gen_vars, dict(cfg, kind=kind), "random", a2l, a2l_vars)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = []
    for b in batch_sizes:
        r = infer.Renderer(models, b)
        source = r.source(src)
        alphas = {p: a for p, a in source.pop("alphas").items()}
        frames = jnp.asarray(rng.uniform(-1, 1, (b, size, size, 3)), jnp.float32)
        mel = jnp.asarray(rng.normal(size=(b, 80, 16)), jnp.float32)
        drive = {p: jnp.broadcast_to(a, (b,) + a.shape[1:]) for p, a in alphas.items()}

        # Each function compiled once, ahead of time: the programs timed are those costed.
        t0 = time.perf_counter()
        encode = r._encode.lower(r.variables, frames).compile()
        coeffs = r._coeffs.lower(r.variables, encode(r.variables, frames)["latent"]).compile()
        audio = r._a2l.lower(r.a2l_variables, mel).compile()
        render = r._render.lower(r.variables, source, drive).compile()
        compile_s = time.perf_counter() - t0

        def one_batch():
            given = dict(drive)
            for _ in range(videos):  # each driving video: one encoder pass per frame
                c = coeffs(r.variables, encode(r.variables, frames)["latent"])
                given.update({p: c[p] for p in given})
            if from_audio:
                given["lip"] = audio(r.a2l_variables, mel)
            return render(r.variables, source, given)

        jax.block_until_ready(one_batch())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(one_batch())
            times.append(time.perf_counter() - t0)
        flops = {k: metrics.compiled_flops(c) for k, c in
                 (("encode", encode), ("coefficients", coeffs), ("audio2lip", audio), ("render", render))}
        total = None
        if all(v is not None for v in flops.values()):
            total = (videos * (flops["encode"] + flops["coefficients"]) + flops["render"]
                     + (flops["audio2lip"] if from_audio else 0)) / b
        s = statistics.median(times)
        out.append({"mode": mode, "batch": b, "size": size, "width_div": width_div, "dtype": dtype,
                    "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
                    "frames_per_s": b / s, "s_per_frame": s / b, "s_per_batch_all": [round(t, 4) for t in times],
                    "flops_per_frame": total, "compile_s": round(compile_s, 2)})
    return out
