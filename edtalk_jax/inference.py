"""Inference scenarios as compositions of the generator's methods (jit-able, no I/O).

Every official demo mode is one call of `drive` with a different choice of what drives
each motion part: a driving image (its coefficients come from the navigation heads) or
coefficients given directly (Audio2Lip output, predefined emotion weights):

  EDTalk-V                 lip_img, pose_img, exp_img
  EDTalk-V + emotion       lip_img, pose_img, exp_alpha
  EDTalk-A                 lip_alpha, pose_img, exp_img
  EDTalk-A + emotion       lip_alpha, pose_img, exp_alpha
  lip-pose (video/audio)   lip_img or lip_alpha, pose_img        (exp_dim == 0 model)

The source is encoded once (`encode_source`) and reused for every frame, unlike the
official demos, which re-encode it per frame (same numbers, 2-4x less work).
"""

import functools
import json
import pathlib
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax.models.generator import Generator

# Official `conv_feat(k_size=3, sigma=1)`: normalised Gaussian, zero padding 1.
SMOOTH_KERNEL = np.array([0.27406862, 0.45186276, 0.27406862], np.float32)


def encode_source(model: Generator, variables, src) -> Dict[str, Any]:
    return model.apply(variables, src, method=Generator.encode)


def drive(model: Generator, variables, source: Dict[str, Any], **drivers) -> Dict[str, Any]:
    """Renders `source` (from encode_source) driven part by part.

    drivers: `<part>_img` (B, S, S, 3) or `<part>_alpha` (B, K) for part in lip, pose, exp
    (exp only for the emotional model). Returns the decoder outputs plus `alphas`.
    """
    parts = ("lip", "pose", "exp") if model.exp_dim else ("lip", "pose")
    unknown = set(drivers) - {f"{p}_{k}" for p in parts for k in ("img", "alpha")}
    if unknown:
        raise ValueError(f"unknown drivers {sorted(unknown)} for a model with parts {parts}")
    latents = {}  # one encoder pass per distinct driving image
    alphas = {}
    for part in parts:
        img, alpha = drivers.get(f"{part}_img"), drivers.get(f"{part}_alpha")
        if (img is None) == (alpha is None):
            raise ValueError(f"give exactly one of {part}_img and {part}_alpha")
        if alpha is not None:
            alphas[part] = jnp.asarray(alpha)
            continue
        if id(img) not in latents:
            latents[id(img)] = model.apply(variables, img, method=Generator.encode)["latent"]
        alphas[part] = model.apply(variables, latents[id(img)], (part,), method=Generator.coefficients)[part]
    motion = model.apply(variables, alphas, method=Generator.motion)
    out = dict(model.apply(variables, source, motion, method=Generator.decode))
    out["alphas"] = alphas
    return out


def coefficient_fn(model: Generator, variables, parts=("lip", "pose"), batch_size: int = 64):
    """A host-side function: frames float32 (N, S, S, 3) in [-1, 1] -> {part: (N, K) numpy}
    (bank coefficients of each frame, e.g. the stage-4 lip/pose targets), jitted at a fixed
    batch size (a short last batch is padded)."""
    variables = jax.device_put(variables)

    @jax.jit
    def coeffs(x):
        latent = model.apply(variables, x, method=Generator.encode)["latent"]
        return model.apply(variables, latent, tuple(parts), method=Generator.coefficients)

    def fn(frames: np.ndarray) -> Dict[str, np.ndarray]:
        n = len(frames)
        if n < batch_size:
            frames = np.concatenate([frames, np.zeros((batch_size - n, *frames.shape[1:]), frames.dtype)])
        return {k: np.asarray(v)[:n] for k, v in coeffs(frames).items()}

    return fn


def smooth_coefficients(alpha, kernel: Optional[np.ndarray] = None):
    """Official temporal smoothing of audio-predicted coefficients: depthwise 1-d
    convolution over time (axis -2) with zero padding, so the first and last frames keep
    only 72.6% of their weight, as in the demos."""
    k = jnp.asarray(SMOOTH_KERNEL if kernel is None else kernel, alpha.dtype)
    pad = k.shape[0] // 2
    x = jnp.pad(alpha, [(0, 0)] * (alpha.ndim - 2) + [(pad, pad), (0, 0)])
    t = alpha.shape[-2]
    return sum(k[i] * x[..., i:i + t, :] for i in range(k.shape[0]))


@functools.lru_cache(maxsize=1)
def _predefined():
    path = pathlib.Path(__file__).parent / "assets" / "predefined_exp_weights.json"
    return json.loads(path.read_text())["weights"]


def predefined_emotions() -> Dict[str, np.ndarray]:
    """The 8 official predefined expression coefficients (angry, contempt, disgusted, fear,
    happy, neutral, sad, surprised), each (10,) float32, for `exp_alpha`."""
    return {k: np.asarray(v, np.float32) for k, v in _predefined().items()}
