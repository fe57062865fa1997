"""The trainer's mesh and placement rules.

One 2-D mesh `("data", "fsdp")`. Batches are split over both axes; parameters (and the
optimizer moments and EMA that mirror them) are replicated, or with FSDP each large leaf
is split along one dimension over `fsdp` and XLA inserts the all-gathers. Everything is
derived from shapes (`jax.eval_shape`), so state is created already sharded and the
same rules give the abstract arguments for restoring or compiling ahead of time.
"""

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
MESH_FIELDS = ("data", "fsdp", "fsdp_min_size")


def _cfg_dict(mesh_cfg) -> dict:
    # ConfigDict is not a Mapping; to_dict() also unwraps FieldReferences.
    return dict(mesh_cfg.to_dict() if hasattr(mesh_cfg, "to_dict") else mesh_cfg)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple:
    """Validated `(data, fsdp)` for `num_devices`, with a -1 resolved to the rest."""
    cfg = _cfg_dict(mesh_cfg)
    unknown = sorted(set(cfg) - set(MESH_FIELDS))
    if unknown:
        raise ValueError(f"unknown mesh field(s) {', '.join('mesh.' + f for f in unknown)}; "
                         f"fields: {', '.join(MESH_FIELDS)}")
    sizes = {}
    for name in AXES:
        if name not in cfg:
            raise ValueError(f"mesh.{name} is missing (an int >= 1, or -1 for the remaining devices)")
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
            raise ValueError(f"mesh.{name}={v!r}: expected an int >= 1 or -1 (the remaining devices)")
        sizes[name] = int(v)
    free = [n for n in AXES if sizes[n] == -1]
    if len(free) == 2:
        raise ValueError("mesh.data and mesh.fsdp are both -1; at most one axis can take the remaining devices")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    desc = " x ".join(f"mesh.{n}={sizes[n]}" for n in AXES)
    if fixed > num_devices:
        raise ValueError(f"{desc} needs {fixed} devices but only {num_devices} are present")
    if free:
        if num_devices % fixed:
            raise ValueError(f"{desc}: {num_devices} devices are not divisible by {fixed}, "
                             f"so mesh.{free[0]}=-1 cannot take the rest")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"{desc} = {fixed} devices, but {num_devices} are present; "
                         "the product must equal the device count (use -1 for one axis)")
    return sizes["data"], sizes["fsdp"]


def make_mesh(mesh_cfg, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A `("data", "fsdp")` mesh with Auto axes over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    # jax 0.10 defaults to Explicit axes, under which every operand's sharding becomes
    # part of its type; the trainer relies on jit's in/out shardings instead.
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over both axes, the rest replicated."""
    return NamedSharding(mesh, P(AXES))


def check_batch(global_batch: int, mesh: Mesh, field: str = "batch_size") -> int:
    """The per-device batch; ValueError naming `field` unless it splits evenly."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch < 1 or global_batch % n:
        raise ValueError(f"{field}={global_batch} must be a positive multiple of mesh data x fsdp = "
                         f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {n} devices")
    if global_batch % jax.process_count():
        raise ValueError(f"{field}={global_batch} must be divisible by the {jax.process_count()} processes")
    return global_batch // n


def _leaf_spec(shape: tuple, n: int, min_size: int) -> P:
    if n == 1 or math.prod(shape) < min_size:
        return P()
    dims = [i for i, d in enumerate(shape) if d % n == 0]
    if not dims:
        return P()
    # Largest divisible dim; ties go to the last one (max keeps the first, so scan reversed):
    # Flax kernels end in the output features, which is where Adam moments and EMA follow.
    dim = max(reversed(dims), key=lambda i: shape[i])
    return P(*(["fsdp" if i == dim else None for i in range(len(shape))]))


def param_sharding(mesh: Mesh, abstract_tree, *, fsdp: bool, min_size: int = 2 ** 18):
    """NamedSharding per leaf: replicated, or with `fsdp` each leaf of at least `min_size`
    elements split over the fsdp axis along its largest divisible dimension (ties: the
    last). Leaves may be arrays, ShapeDtypeStructs or Python scalars."""
    n = mesh.shape["fsdp"] if fsdp else 1
    return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(tuple(np.shape(x)), n, min_size)), abstract_tree)


def state_sharding(mesh: Mesh, abstract_state, *, fsdp: bool, min_size: int = 2 ** 18):
    """`param_sharding` over a whole train state (params, optimizer states, EMA, step).

    Optimizer moments mirror their parameters' shapes, so the shape rule places them the
    same way; scalars (step, Adam counts) fall under `min_size` and stay replicated."""
    return param_sharding(mesh, abstract_state, fsdp=fsdp, min_size=min_size)


def shard_init(init_fn: Callable, mesh: Mesh, *, fsdp: bool, min_size: int = 2 ** 18, args=()):
    """`(state, shardings)`: shapes first, then `init_fn` jitted straight into its shardings."""
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_sharding(mesh, abstract, fsdp=fsdp, min_size=min_size)
    return jax.jit(init_fn, out_shardings=shardings)(*args), shardings


def _is_numeric(v) -> bool:
    # jnp.issubdtype knows bfloat16; strings, objects and keys are not batch data.
    return jnp.issubdtype(v.dtype, jnp.number) or jnp.issubdtype(v.dtype, jnp.bool_)


def global_batch(batch: Mapping[str, Any], mesh: Mesh) -> Dict[str, jax.Array]:
    """This host's numpy batch -> global arrays split by `batch_sharding`.

    Each process passes its own slice; the global batch is the concatenation in process
    order. Entries that are not numeric arrays (names, paths, lists) are dropped."""
    sharding = batch_sharding(mesh)
    local_devices = mesh.size // jax.process_count()
    out = {}
    for key, v in batch.items():
        if not isinstance(v, (np.ndarray, jax.Array)) or not _is_numeric(v):
            continue
        if v.ndim == 0 or v.shape[0] % local_devices:
            raise ValueError(f"batch[{key!r}] of shape {v.shape}: the leading (batch) dimension must be a "
                             f"multiple of this process's {local_devices} devices")
        out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
    return out


def abstract_with_sharding(tree, shardings):
    """ShapeDtypeStructs carrying `shardings` (one per leaf, or one for all): the argument
    shapes for an orbax restore or an ahead-of-time `lower(...).compile()`."""
    def one(x, s):
        x = x if hasattr(x, "dtype") else np.asarray(x)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def bytes_per_device(tree) -> int:
    """Bytes one device holds for `tree` (the largest shard of each leaf). Leaves without a
    sharding (numpy, scalars, plain ShapeDtypeStructs) count whole."""
    total = 0
    for x in jax.tree.leaves(tree):
        x = x if hasattr(x, "dtype") else np.asarray(x)
        shape = tuple(np.shape(x))
        sharding = getattr(x, "sharding", None)
        if sharding is not None:
            shape = sharding.shard_shape(shape)
        total += math.prod(shape) * x.dtype.itemsize
    return total
