"""Models, constants and the initial train state of a run.

Where parameters come from (docs/training.md), in this order: the workdir's latest
checkpoint (resume), `resume_from` (another run's whole train state), `init_from`
(parameters only, fresh optimizer), fresh initialisation. `init_from` and `resume_from`
take a training workdir, one of its step directories, an official `.pt` or a
`launch.convert` directory. From `init_from`, parameters whose path matches
`init_keep` and exists with the same shape are copied; a kept path with another shape
is an error naming it; the rest start fresh (a summary is logged). A QR-mode bank
loaded into a free-mode model starts as its Q.
"""

import dataclasses
import logging
import re
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import checkpointing, model_io, optim
from edtalk_jax.models import build_model
from edtalk_jax.models.motion_bank import _qr_q
from edtalk_jax.run_config import ConfigError
from edtalk_jax.steps import common

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Source:
    """A checkpoint to start from, read on the host."""
    name: str  # the path as given
    model: Dict[str, Any]  # its generator's model config (kind, size, channels, ...)
    params: Dict[str, Any]  # {"gen", ["dis"], ["audio2lip"]} numpy trees
    model_state: Dict[str, Any]  # {"gen": {"unused": ...}, "audio2lip": {"batch_stats": ...}}
    state: Optional[Any] = None  # the whole train state tree (our checkpoints only)


def _official(path: str) -> Source:
    kind, cfg, variables = model_io.load_any(path)
    params, model_state = {}, {}
    if kind in ("generator", "lip_pose"):
        params["gen"] = variables["params"]
        model_state["gen"] = {k: v for k, v in variables.items() if k != "params"}
        try:  # official training checkpoints also hold the discriminator
            _, _, dis = model_io.load_any(path, "discriminator")
            params["dis"] = dis["params"]
        except (ValueError, KeyError, FileNotFoundError) as e:
            log.info("%s: no discriminator (%s); D starts fresh", path, str(e).split("\n")[0])
    elif kind == "audio2lip":
        params["audio2lip"] = variables["params"]
        model_state["audio2lip"] = {k: v for k, v in variables.items() if k != "params"}
    else:
        raise ConfigError(f"{path}: holds a {kind}, not a generator or Audio2Lip checkpoint")
    model = dict(cfg, kind=kind, bank_mode="qr", path=path)
    return Source(path, model, params, model_state)


def read_source(path: str, field: str) -> Source:
    """An init/resume checkpoint of any accepted kind (module docstring)."""
    try:
        src = checkpointing.resolve(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{field}: {e}") from None
    if src.kind in ("official", "converted"):
        return _official(src.path)
    tree = checkpointing.read_state(src)
    saved = checkpointing.read_config(src) or {}
    model = dict(saved.get("resolved_model") or {}, path=path)
    params = tree["ema"] if tree.get("ema") else {}
    params = dict(tree["params"], **params)
    return Source(path, model, params, dict(tree.get("model_state") or {}), state=tree)


@dataclasses.dataclass
class Models:
    gen: Any
    dis: Any
    audio2lip: Any = None
    perceptual: Any = None
    syncnet: Any = None

    def as_dict(self):
        return {k: getattr(self, k) for k in ("gen", "dis", "audio2lip", "perceptual", "syncnet")
                if getattr(self, k) is not None}


GENERATOR_KINDS = ("lip_pose", "generator")


def load_generator(path: str, field: str = "--checkpoint"):
    """(Generator, variables, model config, where the weights are) of the generator in an
    official .pt, a launch.convert directory, a training workdir (its latest checkpoint;
    the EMA weights when kept) or a step directory. `where` is the file or the step
    directory (what a result computed from these weights is tied to)."""
    import os

    src_kind = checkpointing.resolve(path)
    if src_kind.kind in ("official", "converted"):  # the generator only (no D pass)
        kind, cfg, variables = model_io.load_any(path)
        where = src_kind.path
    else:
        src = read_source(path, field)
        kind, cfg = src.model.get("kind"), src.model
        variables = {"params": src.params.get("gen"), **src.model_state.get("gen", {})}
        where = (os.path.join(src_kind.path, checkpointing.CHECKPOINTS, str(src_kind.step))
                 if src_kind.kind == "workdir" else src_kind.path)
    if kind not in GENERATOR_KINDS or variables.get("params") is None:
        raise ConfigError(f"{field}={path}: holds a {kind or 'checkpoint without a generator'}, "
                          f"not one of {GENERATOR_KINDS}")
    return build_model(kind, cfg), variables, cfg, where


def load_audio2lip(path: str, field: str = "--audio2lip"):
    """(Audio2Lip, variables, target) from an official Audio2Lip.pt, a launch.convert
    directory or a stage-4 training workdir / step directory. `target` is how its output
    is read (`config.audio2lip.target`): "absolute" lip coefficients (official), or an
    "offset" from the source face's own lip coefficients."""
    src_kind = checkpointing.resolve(path)
    if src_kind.kind in ("official", "converted"):
        kind, cfg, variables = model_io.load_any(path)
        if kind != "audio2lip":
            raise ConfigError(f"{field}={path}: holds a {kind}, not an Audio2Lip")
        return build_model("audio2lip", cfg), variables, cfg.get("target", "absolute")  # launch.export params
    src = read_source(path, field)
    if src.params.get("audio2lip") is None:
        raise ConfigError(f"{field}={path}: a checkpoint without an Audio2Lip (train one with "
                          "configs/stage4.py, or give Audio2Lip.pt)")
    saved = checkpointing.read_config(src_kind) or {}
    target = (saved.get("audio2lip") or {}).get("target", "absolute")
    lip_dim = src.model.get("lip_dim", 20)
    variables = {"params": src.params["audio2lip"], **src.model_state.get("audio2lip", {})}
    return build_model("audio2lip", {"lip_dim": lip_dim}), variables, target


def build_models(config, model_cfg: Dict[str, Any], weights: Dict[str, float]) -> Tuple[Models, Dict[str, Any]]:
    """(modules, constants): the generator, discriminator, Audio2Lip for stage 4, and the
    frozen loss networks (perceptual, SyncNet) with their variables in `consts`."""
    dtype = jnp.dtype(config.model.dtype)
    gen = build_model(model_cfg["kind"], model_cfg, dtype=dtype)
    dis = build_model("discriminator", model_cfg, dtype=dtype)
    models = Models(gen, dis)
    consts: Dict[str, Any] = {}
    if config.stage == "stage4":
        models.audio2lip = build_model("audio2lip", {"lip_dim": model_cfg["lip_dim"]}, dtype=dtype)
        if config.syncnet.path and weights.get("sync"):
            from edtalk_jax.models import syncnet
            models.syncnet = syncnet.SyncNet()
            consts["syncnet"] = syncnet.load_syncnet(config.syncnet.path)
    if weights.get("perceptual") or weights.get("cross_perceptual"):
        from edtalk_jax import perceptual
        cfg = dict(config.perceptual.to_dict(), dtype=dtype)
        try:
            models.perceptual, consts["perceptual"] = perceptual.load_perceptual(cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return models, consts


def example_batch(config, model_cfg):
    s = model_cfg["size"]
    return jnp.zeros((1, s, s, 3), jnp.float32)


def init_variables(models: Models, config, model_cfg, rng) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(params, model_state) of every trained model, freshly initialised."""
    k_gen, k_dis, k_a2l = jax.random.split(rng, 3)
    x = example_batch(config, model_cfg)
    gen_vars = models.gen.init(k_gen, x, x)
    params = {"gen": gen_vars["params"], "dis": models.dis.init(k_dis, x)["params"]}
    model_state = {"gen": {k: v for k, v in gen_vars.items() if k != "params"}}
    if models.audio2lip is not None:
        a2l = models.audio2lip.init(k_a2l, jnp.zeros((1, 80, 16)))
        params["audio2lip"] = a2l["params"]
        if config.audio2lip.target == "offset":
            # A fresh offset model starts as copy-the-identity (offset 0) and learns from
            # there; random offsets start far worse than the baseline it has to beat.
            mapping = params["audio2lip"]["mapping"]
            params["audio2lip"] = dict(params["audio2lip"], mapping=jax.tree.map(jnp.zeros_like, mapping))
        model_state["audio2lip"] = {k: v for k, v in a2l.items() if k != "params"}
    return params, model_state


def state_from(ctx: common.Context, params, model_state) -> common.TrainState:
    g = common.g_side(params)
    return common.TrainState(step=jnp.zeros((), jnp.int32), params=params, g_opt=ctx.g_tx.init(g),
                             d_opt=ctx.d_tx.init(common.d_side(params)),
                             ema=jax.tree.map(jnp.copy, g) if ctx.ema_decay else None,
                             model_state=model_state)


def merge_source(fresh: Dict[str, Any], source_tree: Dict[str, Any], keep, what: str,
                 convert=None) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """Copies host arrays of `source_tree` into `fresh` (a tree of jax.Arrays) where the
    path matches a `keep` regex; -> (merged, counts)."""
    src = optim.leaf_paths(source_tree)
    counts = {"copied": 0, "fresh": 0}
    copied = set()

    def take(path, leaf):
        name = optim.path_str(path)
        if not any(re.search(p, name) for p in keep) or name not in src:
            counts["fresh"] += 1
            return leaf
        value = np.asarray(src[name])
        if convert is not None:
            value = convert(name, value)
        if value.shape != leaf.shape:
            raise ConfigError(f"{what}: {name} has shape {value.shape}, the model needs {leaf.shape} "
                              f"(drop it from init_keep or fix the model config)")
        counts["copied"] += 1
        copied.add(name)
        return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

    merged = jax.tree_util.tree_map_with_path(take, fresh)
    counts["ignored"] = len(set(src) - set(optim.leaf_paths(fresh)))
    counts["paths"] = copied
    return merged, counts


def exp_against_loaded(params, copied):
    """Applies `_exp_against_loaded` when lip/pose bases were loaded and expression bases
    were not (free bank mode)."""
    if "gen/bank/lipnonlip" in copied and "gen/bank/exp" not in copied:
        return _exp_against_loaded(params)
    return params


def eem_identity(params, copied):
    """Fresh EEMs on a loaded decoder start as the identity: AdaIN's gamma = -1 and beta
    = 0 (zero weights), so x + AdaIN(conv2(x)) = x and stage 3 begins at the loaded
    model's reconstruction; gradients still reach every EEM parameter."""
    dec = params.get("gen", {}).get("dec", {})
    if not any(p.startswith("gen/dec/") for p in copied):
        return params
    new_dec = dict(dec)
    for name, eem in dec.items():
        if not name.startswith("eem_") or any(p.startswith(f"gen/dec/{name}/") for p in copied):
            continue
        norm = dict(eem["norm2"])
        for head, bias in (("mlp_gamma", -1.0), ("mlp_beta", 0.0)):
            norm[head] = {k: jax.device_put(np.full(v.shape, bias if k == "bias" else 0.0, v.dtype), v.sharding)
                          for k, v in norm[head].items()}
        new_dec[name] = dict(eem, norm2=norm)
    return dict(params, gen=dict(params["gen"], dec=new_dec))


def _exp_against_loaded(params):
    """A fresh free-mode expression bank was drawn orthogonal to the *fresh* lip/pose
    bank; re-draw it orthogonal to the loaded one (same columns, projected and
    re-orthonormalised), so the bases start orthonormal across banks."""
    bank = params.get("gen", {}).get("bank", {})
    if "exp" not in bank:
        return params
    lp, exp = np.asarray(bank["lipnonlip"], np.float64), np.asarray(bank["exp"], np.float64)
    q = np.linalg.qr(np.concatenate([lp, exp], -1))[0][:, lp.shape[1]:]
    q *= np.sign(np.sum(q * exp, axis=0, keepdims=True) + 1e-30)  # keep each column's direction
    new = jax.device_put(q.astype(bank["exp"].dtype), bank["exp"].sharding)
    gen = dict(params["gen"], bank=dict(bank, exp=new))
    return dict(params, gen=gen)


def bank_converter(source_mode: str, target_mode: str, source_params):
    """QR bases loaded into a free-mode bank start as their Q (joint for expression)."""
    if source_mode == target_mode or target_mode != "free":
        return None
    bank = source_params.get("gen", {}).get("bank", {})
    if "lipnonlip" not in bank:
        return None
    lp = np.asarray(bank["lipnonlip"], np.float64)
    joint = np.concatenate([lp, np.asarray(bank["exp"], np.float64)], -1) if "exp" in bank else lp
    q = np.asarray(_qr_q(jnp.asarray(joint, jnp.float32)))
    replaced = {"gen/bank/lipnonlip": q[:, :lp.shape[1]]}
    if "exp" in bank:
        replaced["gen/bank/exp"] = q[:, lp.shape[1]:]

    def convert(name, value):
        return replaced.get(name, value)
    return convert
