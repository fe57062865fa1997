"""Exports of a generator (and its Audio2Lip) for use outside training (`launch.export`).

  params     DIR/generator/ and DIR/audio2lip/ (orbax variables + model.json, what
             launch.convert writes and every launcher reads) and DIR/<model>.safetensors
             (the same variables, flattened as "collection/module/.../leaf", for other
             frameworks)
  stablehlo  DIR/<function>.stablehlo: `jax.export` serialized StableHLO of the inference
             functions, with a symbolic frame-batch dimension "b" and the weights as their
             first argument (a list of arrays, in the order manifest.json gives), lowered
             for cpu, cuda and tpu; DIR/<model>.safetensors, the weights; DIR/manifest.json,
             every function's file, weights and input and output shapes;
             DIR/edtalk_exported.py, a loader that runs them with jax and numpy alone
  pt         DIR/EDTalk.pt or DIR/EDTalk_lip_pose.pt (and DIR/Audio2Lip.pt), official
             layout, for the official PyTorch demos (needs torch)

Functions: `encode_source` (frames (b, S, S, 3) in [-1, 1] -> {"latent", "feats"}),
`coefficients` (frames -> {part: (b, K)}), `render` (an encoded source of batch 1 and
{part: (b, K)} coefficients -> {"image": (b, S, S, 3)}) and `audio2lip` (mel windows
(b, 80, 16) -> (b, lip_dim)). Composed as `edtalk_jax.inference` composes them.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import export_loader, inference
from edtalk_jax.models.generator import Generator

FORMATS = ("stablehlo", "params", "pt")
PLATFORMS = ("cpu", "cuda", "tpu")
LOADER = "edtalk_exported.py"
MANIFEST = "manifest.json"


class ExportError(ValueError):
    """A model or output that cannot be exported; names what and why."""


def _inference_variables(variables: Dict[str, Any]) -> Dict[str, Any]:
    """The collections the forward pass reads (not `unused`, kept for official export)."""
    return {k: v for k, v in variables.items() if k != "unused"}


def flatten(variables: Dict[str, Any]) -> Tuple[List[str], List[np.ndarray], Any]:
    """(keys "collection/module/.../leaf", numpy leaves, treedef), in jax's tree order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
    return keys, [np.ascontiguousarray(np.asarray(v)) for _, v in leaves], treedef


def write_safetensors(path: str, variables: Dict[str, Any]) -> List[str]:
    from safetensors.numpy import save_file

    keys, leaves, _ = flatten(variables)
    save_file(dict(zip(keys, leaves)), path, metadata={"format": "edtalk-jax"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # save_file creates it 0600; like every other file written here
    return keys


def _models(models) -> Dict[str, Tuple[str, Any, Dict[str, Any], Dict[str, Any]]]:
    """name -> (kind, module, config, variables) of what is exported."""
    out = {"generator": (models.gen_config.get("kind") or ("generator" if models.gen.exp_dim else "lip_pose"),
                         models.gen, models.gen_config, models.gen_variables)}
    if models.audio2lip is not None:
        # "target" travels with the weights: an offset Audio2Lip read as absolute is wrong.
        out["audio2lip"] = ("audio2lip", models.audio2lip,
                            {"lip_dim": models.audio2lip.lip_dim, "target": models.audio2lip_target},
                            models.audio2lip_variables)
    return out


def export_params(models, out: str) -> Dict[str, Any]:
    from edtalk_jax import model_io

    written = {}
    for name, (kind, _, cfg, variables) in _models(models).items():
        model_cfg = {k: v for k, v in cfg.items() if k not in ("path", "kind")}
        model_io.save_model(os.path.join(out, name), kind, model_cfg, variables)
        write_safetensors(os.path.join(out, f"{name}.safetensors"), _inference_variables(variables))
        written[name] = [name, f"{name}.safetensors"]
    return written


def export_pt(models, out: str) -> Dict[str, Any]:
    """Official-layout .pt files; a `free` bank is refused: the official code always
    orthonormalises the banks by QR, which would change such a model's output."""
    from edtalk_jax import convert_torch

    if models.gen_config.get("bank_mode", "qr") != "qr":
        raise ExportError(f"{models.where}: bank_mode {models.gen_config['bank_mode']!r}; the official code "
                          "orthonormalises the banks by QR, which changes this model's output. Export "
                          "stablehlo or params instead (or train with bank_mode=qr)")
    if models.audio2lip is not None and models.audio2lip_target != "absolute":
        raise ExportError(f"the Audio2Lip predicts lip coefficients as an {models.audio2lip_target!r} from the "
                          "source's own; the official demos read them as absolute. Export stablehlo or params")
    names = {"generator": "EDTalk.pt", "lip_pose": "EDTalk_lip_pose.pt", "audio2lip": "Audio2Lip.pt"}
    written = {}
    for name, (kind, _, cfg, variables) in _models(models).items():
        path = os.path.join(out, names[kind])
        convert_torch.save_official(path, kind, cfg, variables)
        written[name] = names[kind]
    return written


def _shape_json(shape) -> List[Any]:
    return [d if isinstance(d, int) else str(d) for d in shape]


def _describe(tree) -> List[Dict[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [{"name": "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) or "out",
             "shape": _shape_json(v.shape), "dtype": str(v.dtype)} for path, v in leaves]


def inference_functions(models) -> Dict[str, Tuple[str, Callable, Tuple[Any, ...], List[str]]]:
    """name -> (weights name, fn(variables, *args), abstract args with the symbolic batch,
    argument names)."""
    gen = models.gen
    size = models.size
    (b,) = jax.export.symbolic_shape("b")
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    gen_vars = _inference_variables(models.gen_variables)
    source = jax.eval_shape(lambda v, x: gen.apply(v, x, method=Generator.encode), gen_vars, f32(1, size, size, 3))
    dims = {"lip": gen.lip_dim, "pose": gen.pose_dim, "exp": gen.exp_dim}
    alphas = {p: f32(b, dims[p]) for p in gen.parts}
    fns = {
        "encode_source": ("generator", lambda v, frames: inference.encode_source(gen, v, frames),
                          (f32(b, size, size, 3),), ["frames"]),
        "coefficients": ("generator", lambda v, frames: inference._coefficients(gen, v, frames, gen.parts),
                         (f32(b, size, size, 3),), ["frames"]),
        "render": ("generator",
                   lambda v, src, a: {"image": inference.drive(gen, v, src, **{f"{p}_alpha": a[p] for p in a})["image"]},
                   (source, alphas), ["source", "alphas"]),
    }
    if models.audio2lip is not None:
        a2l = models.audio2lip
        fns["audio2lip"] = ("audio2lip", lambda v, mel: a2l.apply(v, mel), (f32(b, 80, 16),), ["mel"])
    return fns


def export_stablehlo(models, out: str, platforms=PLATFORMS) -> Dict[str, Any]:
    """Serialized StableHLO of every inference function, weights, manifest and loader."""
    exported_models = _models(models)
    weights, treedefs = {}, {}
    for name, (_, _, _, variables) in exported_models.items():
        file = f"{name}.safetensors"
        weights[file] = write_safetensors(os.path.join(out, file), _inference_variables(variables))
        treedefs[name] = flatten(_inference_variables(variables))
    functions = {}
    for fname, (wname, fn, args, arg_names) in inference_functions(models).items():
        keys, leaves, treedef = treedefs[wname]

        def flat_fn(flat_weights, *inputs, fn=fn, treedef=treedef):
            return fn(jax.tree.unflatten(treedef, flat_weights), *inputs)

        abstract_weights = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
        exported = jax.export.export(jax.jit(flat_fn), platforms=tuple(platforms))(abstract_weights, *args)
        with open(os.path.join(out, f"{fname}.stablehlo"), "wb") as f:
            f.write(exported.serialize())
        outputs = jax.eval_shape(flat_fn, abstract_weights, *args)
        functions[fname] = {"file": f"{fname}.stablehlo", "weights": f"{wname}.safetensors",
                            "inputs": {n: _describe(a) for n, a in zip(arg_names, args)},
                            "outputs": _describe(outputs), "platforms": list(exported.platforms)}
    kind, _, cfg, _ = exported_models["generator"]
    manifest = {"format": export_loader.FORMAT, "generator": {"kind": kind, "where": models.where,
                                                               "config": {k: v for k, v in cfg.items() if k != "path"}},
                "audio2lip_target": models.audio2lip_target if models.audio2lip is not None else None,
                "functions": functions, "weights": weights}
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, default=list)
    shutil.copyfile(export_loader.__file__, os.path.join(out, LOADER))
    return {name: info["file"] for name, info in functions.items()}


def export(fmt: str, models, out: str, **kwargs) -> Dict[str, Any]:
    """Writes the `fmt` export into a new directory `out`, which appears only when complete."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ExportError(f"--out {out}: exists and is not an empty directory; choose a new one")
    if not os.path.isdir(os.path.dirname(out)):
        raise ExportError(f"--out {out}: the directory {os.path.dirname(out)} does not exist")
    tmp = f"{out}.tmp{os.getpid()}"
    os.makedirs(tmp)
    try:
        written = {"stablehlo": export_stablehlo, "params": export_params, "pt": export_pt}[fmt](
            models, tmp, **kwargs)
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return written
