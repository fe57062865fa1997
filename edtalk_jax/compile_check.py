"""Ahead-of-time compile of a stage's train step for a mesh and global batch, without
allocating the model (maxtext's `train_compile.py` idea): every argument is a
`jax.ShapeDtypeStruct` carrying its sharding, so a 256^2 generator on a 64-device mesh
compiles on a laptop with fake CPU devices.

    abstract params  = eval_shape(initialize.init_variables)
    context          = train.make_context(config, models, abstract params)
    abstract state   = eval_shape(initialize.state_from) + sharding.state_sharding
    abstract batch   = batch_spec(config)                     (the loader's layout)
    abstract consts  = the perceptual / SyncNet variables' shapes (no weight file read)
    jax.jit(common.train_step, in/out shardings, donate state).lower(...).compile()

Weight files the config names (perceptual.path, syncnet.path, init_from, resume_from,
audio2lip.init) are never read: the step's program depends only on shapes, and the
model shape comes from the config (fields left None: the official shape). A config
error (mesh larger than the devices, batch not divisible by the mesh, unknown mesh
field) is raised before anything is traced, naming the field.
"""

import copy
import dataclasses
import functools
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import initialize, metrics, run_config, sharding
from edtalk_jax.steps import STAGES, common

# Fields holding weight files: blanked for the checks (a compile needs none of them).
WEIGHT_FILES = ("init_from", "resume_from", "perceptual.path", "syncnet.path", "audio2lip.init")
MEL_WINDOW = (80, 16)  # mel bins x steps per frame window (data_pipeline.preprocess.audio)
# compiled.memory_analysis() fields reported (as <name>_bytes_per_device).
MEMORY_FIELDS = ("temp", "argument", "output", "alias", "generated_code", "peak_memory")


def batch_spec(config, size: Optional[int] = None) -> Dict[str, jax.ShapeDtypeStruct]:
    """The global batch of `config.stage` as ShapeDtypeStructs, in the layout of
    data_pipeline.loaders with `dtype="uint8"` (what the trainer feeds): images uint8
    NHWC, `index` int32 (B,). `size` defaults to config.model.size (or the official 256)."""
    spec = STAGES[config.stage]
    b = int(config.batch_size)
    s = int(size or config.model.size or run_config.OFFICIAL_SHAPE["size"])
    img = lambda *lead: jax.ShapeDtypeStruct((*lead, s, s, 3), jnp.uint8)
    out: Dict[str, Any] = {}
    if spec.data_stage == 1:
        out.update(source=img(b), target=img(b))
    elif spec.data_stage == 2:
        out.update({k: img(b) for k in ("a_identity", "a", "b_identity", "b", "mouth_a_on_b", "mouth_b_on_a")})
        out.update(a_mouth_box=jax.ShapeDtypeStruct((b, 4), jnp.float32),
                   b_mouth_box=jax.ShapeDtypeStruct((b, 4), jnp.float32))
    elif spec.data_stage == 3:
        out.update(identity=img(b), target=img(b), emotion=jax.ShapeDtypeStruct((b,), jnp.int32),
                   level=jax.ShapeDtypeStruct((b,), jnp.int32))
    elif spec.data_stage == 4:
        t = int(config.data.T)
        lip = int(config.model.lip_dim or run_config.OFFICIAL_SHAPE["lip_dim"])
        pose = int(config.model.pose_dim or run_config.OFFICIAL_SHAPE["pose_dim"])
        f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
        out.update(frames=img(b, t), mel=f32(b, t, *MEL_WINDOW), identity=img(b), mouth_boxes=f32(b, t, 4),
                   lip_targets=f32(b, t, lip), pose_targets=f32(b, t, pose), identity_lip=f32(b, lip))
    else:  # a new loader stage must be described here
        raise ValueError(f"stage {config.stage}: no batch layout for loader stage {spec.data_stage}")
    out["index"] = jax.ShapeDtypeStruct((b,), jnp.int32)
    return out


def random_batch(spec: Dict[str, jax.ShapeDtypeStruct], seed: int = 0) -> Dict[str, np.ndarray]:
    """Host numpy arrays of `spec`'s shapes: uint8 images, mel in [-4, 4], boxes inside
    the frame, small targets, labels 0..7, indices."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in spec.items():
        if s.dtype == jnp.uint8:
            out[k] = rng.integers(0, 256, s.shape, dtype=np.uint8)
        elif k == "mouth_boxes":  # squares of a quarter side in the lower half of the frame
            size = spec["frames"].shape[-2]
            x0 = rng.uniform(size / 4, size / 2, s.shape[:-1] + (2,))
            out[k] = np.concatenate([x0, x0 + size / 4], -1).astype(np.float32)
        elif jnp.issubdtype(s.dtype, jnp.integer):
            out[k] = rng.integers(0, 8, s.shape).astype(s.dtype)
        else:
            scale = 4.0 if k == "mel" else 1.0
            out[k] = rng.uniform(-scale, scale, s.shape).astype(s.dtype)
    return out


@dataclasses.dataclass
class Abstract:
    """Everything a step compile needs, as shapes with shardings."""
    config: Any  # the checked config (model shape resolved, weight paths blanked)
    model_cfg: Dict[str, Any]
    mesh: Any
    ctx: common.Context
    state: Any  # TrainState of ShapeDtypeStructs with shardings
    state_sharding: Any
    batch: Dict[str, jax.ShapeDtypeStruct]
    consts: Dict[str, Any]
    ignored: Dict[str, str]  # weight-file fields blanked for the check


def checked_config(config, devices: Optional[Sequence[jax.Device]] = None):
    """(config copy, mesh, {blanked field: path}): field checks, then the mesh and the batch
    rule, before any model is built."""
    config = copy.deepcopy(config)
    ignored = {}
    with config.unlocked():
        for field in WEIGHT_FILES:
            node, _, leaf = field.rpartition(".")
            parent = config[node] if node else config
            if parent[leaf]:
                ignored[field] = parent[leaf]
                parent[leaf] = ""
    run_config.validate(config)
    if config.stage == "stage4" and ignored.get("syncnet.path"):
        if config.data.T != 5:  # validate's rule, skipped above with the path blanked
            raise run_config.ConfigError(f"data.T={config.data.T}: the SyncNet loss (syncnet.path) needs T = 5 frames")
        with config.unlocked():  # kept non-empty so the SyncNet loss is part of the program
            config.syncnet.path = ignored["syncnet.path"]
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(config.batch_size, mesh, "batch_size")
    run_config.check_discriminator_batch(config)
    return config, mesh, ignored


def _perceptual_shapes(config, model_cfg):
    from edtalk_jax import perceptual
    net = perceptual.build_perceptual(dict(config.perceptual.to_dict(), dtype=config.model.dtype, path=""))
    try:
        perceptual.check_perceptual_size(config.perceptual.to_dict(), model_cfg["size"])
    except ValueError as e:
        raise run_config.ConfigError(f"perceptual.scales: {e}") from None
    s = model_cfg["size"]
    return net, jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)))


def abstract_models(config, model_cfg):
    """(Models, abstract consts): `initialize.build_models` without reading weight files."""
    spec = STAGES[config.stage]
    weights = {k: float(config.loss[k]) for k in spec.losses}
    no_files = {k: (0.0 if k in ("perceptual", "cross_perceptual", "sync") else v) for k, v in weights.items()}
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.syncnet.path = ""
    models, consts = initialize.build_models(cfg, model_cfg, no_files)
    if weights.get("perceptual") or weights.get("cross_perceptual"):
        models.perceptual, consts["perceptual"] = _perceptual_shapes(config, model_cfg)
    if config.stage == "stage4" and config.syncnet.path and weights.get("sync"):
        from edtalk_jax.models import syncnet
        models.syncnet = syncnet.SyncNet()
        consts["syncnet"] = jax.eval_shape(models.syncnet.init, jax.random.PRNGKey(0),
                                           jnp.zeros((1,) + syncnet.FACE_SHAPE), jnp.zeros((1,) + syncnet.MEL_SHAPE))
    return models, consts


def abstract_step_args(config, devices: Optional[Sequence[jax.Device]] = None) -> Abstract:
    """The train step's arguments for `config` as sharded ShapeDtypeStructs (module docstring)."""
    from edtalk_jax import train  # make_context

    config, mesh, ignored = checked_config(config, devices)
    model_cfg = run_config.resolve_model(config)
    with config.unlocked():
        for k in ("size", "style_dim", "lip_dim", "pose_dim", "exp_dim", "eem_hidden"):
            config.model[k] = model_cfg[k]
        config.model.channels = tuple(model_cfg["channels"])
    models, consts = abstract_models(config, model_cfg)
    init_vars = functools.partial(initialize.init_variables, models, config, model_cfg)
    params, model_state = jax.eval_shape(init_vars, jax.random.PRNGKey(config.seed))
    ctx = train.make_context(config, models, params)
    state = jax.eval_shape(functools.partial(initialize.state_from, ctx), params, model_state)
    fsdp = config.mesh.fsdp != 1
    state_sh = sharding.state_sharding(mesh, state, fsdp=fsdp, min_size=config.mesh.fsdp_min_size)
    repl = sharding.replicated(mesh)
    batch = sharding.abstract_with_sharding(batch_spec(config, model_cfg["size"]), sharding.batch_sharding(mesh))
    return Abstract(config=config, model_cfg=model_cfg, mesh=mesh, ctx=ctx,
                    state=sharding.abstract_with_sharding(state, state_sh), state_sharding=state_sh,
                    batch=batch, consts=sharding.abstract_with_sharding(consts, repl), ignored=ignored)


def jit_step(a: Abstract):
    """The trainer's jitted step (same shardings and donation as train.train_and_evaluate)."""
    repl = sharding.replicated(a.mesh)
    return jax.jit(functools.partial(common.train_step, a.ctx),
                   in_shardings=(a.state_sharding, sharding.batch_sharding(a.mesh), repl, repl),
                   out_shardings=(a.state_sharding, repl), donate_argnums=(0,))


def compile_step(a: Abstract):
    """(compiled, seconds): the step lowered on abstract arguments and compiled."""
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(a.mesh))
    t0 = time.perf_counter()
    with jax.set_mesh(a.mesh):
        compiled = jit_step(a).lower(a.state, a.batch, rng, a.consts).compile()
    return compiled, time.perf_counter() - t0


def report(a: Abstract, compiled=None, seconds: Optional[float] = None) -> Dict[str, Any]:
    """The JSON-able summary `launch.compile_check` prints (bytes and FLOPs as XLA reports them).
    Without `compiled` (shapes only): the train state's bytes per device, no XLA numbers."""
    n = a.mesh.size
    flops = None if compiled is None else metrics.compiled_flops(compiled)
    out = {
        "stage": a.config.stage, "devices": n, "platform": a.mesh.devices.flat[0].platform,
        "mesh": {k: int(v) for k, v in a.mesh.shape.items()}, "batch": int(a.config.batch_size),
        "batch_per_device": int(a.config.batch_size) // n,
        "model": {k: a.model_cfg[k] for k in ("kind", "size", "style_dim", "lip_dim", "pose_dim", "exp_dim")},
        "channels": list(a.model_cfg["channels"]), "dtype": a.config.model.dtype,
        "perceptual": a.config.perceptual.backbone if "perceptual" in a.consts else None,
        "param_count": int(sum(np.prod(x.shape) for x in jax.tree.leaves(a.state.params))),
        "flops_per_step": None if flops is None else flops * n,  # XLA's count is per device
        "param_bytes_per_device": sharding.bytes_per_device(a.state.params),
        "opt_state_bytes_per_device": sharding.bytes_per_device((a.state.g_opt, a.state.d_opt)),
        "ema_bytes_per_device": sharding.bytes_per_device(a.state.ema),
        "state_bytes_per_device": sharding.bytes_per_device(a.state),
        "batch_bytes_per_device": sharding.bytes_per_device(a.batch),
        "compile_seconds": None if seconds is None else round(seconds, 2),
    }
    try:
        mem = None if compiled is None else compiled.memory_analysis()
    except Exception:  # not every backend implements it
        mem = None
    if mem is not None:
        for name in MEMORY_FIELDS:
            value = getattr(mem, f"{name}_size_in_bytes", getattr(mem, f"{name}_in_bytes", None))
            if value is not None:
                out[f"{name}_bytes_per_device"] = int(value)
    if a.ignored:
        out["weight_files_not_read"] = a.ignored
    return out


def run(config, devices: Optional[Sequence[jax.Device]] = None, compile: bool = True) -> Dict[str, Any]:
    """Checks `config`, compiles its step on abstract arguments (unless `compile` is False:
    shapes and bytes only), returns `report`."""
    a = abstract_step_args(config, devices)
    if not compile:
        return report(a)
    compiled, seconds = compile_step(a)
    return report(a, compiled, seconds)
