"""Recomputes the official parity outputs (the keys of shared/fixtures/parity/README.md)
for a checkpoint and NCHW inputs, in float32 or float64."""

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import inference
from edtalk_jax.models import build_model

INPUT_KEYS = {
    "generator": ("src", "lip_img", "pose_img", "exp_img", "lip_alpha", "exp_alpha"),
    "lip_pose": ("src", "lip_img", "pose_img", "lip_alpha"),
    "audio2lip": ("mel", "meta_batch", "meta_T"),
    "discriminator": ("x",),
}


def kind_for_inputs(kind: str, inputs: Dict[str, np.ndarray]) -> str:
    """A training checkpoint holds both `gen` and `dis`: the inputs say which is meant."""
    return "discriminator" if "x" in inputs and "src" not in inputs else kind


def _nhwc(a, dtype):
    return jnp.asarray(np.transpose(a, (0, 2, 3, 1)), dtype)


def _nchw(a):
    return np.transpose(np.asarray(a), (0, 3, 1, 2))


def compute(kind: str, cfg, variables, inputs: Dict[str, np.ndarray], dtype=jnp.float32) -> Dict[str, np.ndarray]:
    """All outputs for `kind`, NCHW, as numpy arrays of `dtype`. Matmuls and convolutions
    run at full precision: GPUs default to TF32 and TPUs to bfloat16 passes for float32,
    which parity cannot afford."""
    with jax.default_matmul_precision("highest"):
        return _compute(kind, cfg, variables, inputs, dtype)


def _compute(kind, cfg, variables, inputs, dtype):
    missing = [k for k in INPUT_KEYS[kind] if k not in inputs]
    if missing:
        raise KeyError(f"inputs lack {missing} needed for a {kind}")
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, variables)
    model = build_model(kind, cfg, dtype=dtype, param_dtype=dtype)
    if kind == "discriminator":
        return {"out": np.asarray(jax.jit(model.apply)(variables, _nhwc(inputs["x"], dtype)))}
    if kind == "audio2lip":
        b, t = int(inputs["meta_batch"]), int(inputs["meta_T"])
        mel = jnp.asarray(inputs["mel"][:, 0], dtype)  # (B*T, 80, 16)
        return {"out": np.asarray(jax.jit(model.apply)(variables, mel)).reshape(b, t, -1)}
    x = {k: _nhwc(inputs[k], dtype) if inputs[k].ndim == 4 else jnp.asarray(inputs[k], dtype)
         for k in INPUT_KEYS[kind]}
    return to_numpy_nchw(jax.jit(lambda v, x: _generator_outputs(model, v, x))(variables, x))


def _generator_outputs(model, variables, x):
    src = inference.encode_source(model, variables, x["src"])
    drive = lambda **d: inference.drive(model, variables, src, **d)["image"]
    pose = {"pose_img": x["pose_img"]}
    if model.exp_dim:
        out = {"enc_wa": src["latent"],
               "q_lipnonlip": model.apply(variables, False, method=model.bases),
               "q_exp": model.apply(variables, True, method=model.bases),
               "out_V": drive(lip_img=x["lip_img"], exp_img=x["exp_img"], **pose),
               "out_A": drive(lip_alpha=x["lip_alpha"], exp_img=x["exp_img"], **pose),
               "out_A_expw": drive(lip_alpha=x["lip_alpha"], exp_alpha=x["exp_alpha"], **pose),
               "out_V_expw": drive(lip_img=x["lip_img"], exp_alpha=x["exp_alpha"], **pose)}
        out.update({f"enc_feat{i}": f for i, f in enumerate(src["feats"])})
    else:
        out = {"out_fwd": drive(img=x["pose_img"]),  # lip and pose from one frame, encoded once
               "out_V": drive(lip_img=x["lip_img"], **pose),
               "out_A": drive(lip_alpha=x["lip_alpha"], **pose)}
    return out


def to_numpy_nchw(outputs) -> Dict[str, np.ndarray]:
    return {k: _nchw(v) if np.ndim(v) == 4 else np.asarray(v) for k, v in outputs.items()}
