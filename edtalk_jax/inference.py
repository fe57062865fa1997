"""Inference scenarios as compositions of the generator's methods (jit-able, no I/O).

Every official demo mode is one call of `drive` with a different choice of what drives
each motion part: a driving image (its coefficients come from the navigation heads) or
coefficients given directly (Audio2Lip output, predefined emotion weights). `img` is the
driving image of every part given nothing else, encoded once however many parts it drives:

  EDTalk-V                 img                     (or lip_img, pose_img, exp_img: 3 videos)
  EDTalk-V + emotion       img, exp_alpha          (or lip_img, pose_img, exp_alpha)
  EDTalk-A                 lip_alpha, img          (or lip_alpha, pose_img, exp_img)
  EDTalk-A + emotion       lip_alpha, pose_img, exp_alpha
  lip-pose (video/audio)   img, or lip_img / lip_alpha with pose_img   (exp_dim == 0 model)

The source is encoded once (`encode_source`) and reused for every frame, unlike the
official demos, which re-encode it per frame (same numbers, 2-4x less work).
"""

import functools
import json
import pathlib
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax.models.generator import Generator

# Official `conv_feat(k_size=3, sigma=1)`: normalised Gaussian, zero padding 1.
SMOOTH_KERNEL = np.array([0.27406862, 0.45186276, 0.27406862], np.float32)


def encode_source(model: Generator, variables, src) -> Dict[str, Any]:
    return model.apply(variables, src, method=Generator.encode)


def _coefficients(model: Generator, variables, img, parts: Sequence[str]) -> Dict[str, Any]:
    """One encoder pass and one shared `fc` pass of `img`, then each part's head."""
    latent = model.apply(variables, img, method=Generator.encode)["latent"]
    return model.apply(variables, latent, tuple(parts), method=Generator.coefficients)


def _batch_size(sizes: Dict[str, int]) -> int:
    """The common batch of the source and the drivers: every size is B or 1."""
    distinct = set(sizes.values()) - {1}
    if len(distinct) > 1:
        raise ValueError(f"batch sizes differ (each must be the same B or 1): {sizes}")
    return distinct.pop() if distinct else 1


def _broadcast_batch(tree, batch: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch,) + a.shape[1:]), tree)


def drive(model: Generator, variables, source: Dict[str, Any], img=None, **drivers) -> Dict[str, Any]:
    """Renders `source` (from encode_source) driven part by part.

    Each part (lip, pose, and exp for the emotional model) is driven by exactly one of
      `<part>_alpha` (B, K) or (K,): its bank coefficients (Audio2Lip, predefined emotions);
      `<part>_img` (B, S, S, 3): a driving image for this part alone (one encoder pass each);
      `img` (B, S, S, 3): the driving image of every part given neither of the above. Frames
        that drive several parts go here: they are encoded once, e.g. EDTalk-V from one video
        `drive(..., img=frames)`, EDTalk-A `drive(..., lip_alpha=a, img=frames)`. The same
        frames passed as several `<part>_img` are encoded once per part.
    The source and every driver have batch B or 1; those with 1 are broadcast to B, so one
    encoded source face drives B frames. Returns the decoder outputs plus `alphas`
    {part: (B, K)}.
    """
    parts = model.parts
    unknown = set(drivers) - {f"{p}_{k}" for p in parts for k in ("img", "alpha")}
    if unknown:
        raise ValueError(f"unknown drivers {sorted(unknown)} for a model with parts {parts}")
    alphas, shared = {}, []
    for part in parts:
        own, alpha = drivers.get(f"{part}_img"), drivers.get(f"{part}_alpha")
        if own is not None and alpha is not None:
            raise ValueError(f"give at most one of {part}_img and {part}_alpha")
        if alpha is not None:
            alphas[part] = jnp.atleast_2d(jnp.asarray(alpha))
        elif own is not None:
            alphas.update(_coefficients(model, variables, own, (part,)))
        elif img is not None:
            shared.append(part)
        else:
            raise ValueError(f"nothing drives {part}: give {part}_img, {part}_alpha or img")
    if img is not None:
        if not shared:
            raise ValueError("img drives no part: every part has its own driver")
        alphas.update(_coefficients(model, variables, img, shared))
    batch = _batch_size({"source": source["latent"].shape[0],
                         **{f"{p} driver": a.shape[0] for p, a in alphas.items()}})
    alphas = _broadcast_batch({p: alphas[p] for p in parts}, batch)
    motion = model.apply(variables, alphas, method=Generator.motion)
    out = dict(model.apply(variables, _broadcast_batch(source, batch), motion, method=Generator.decode))
    out["alphas"] = alphas
    return out


def coefficient_fn(model: Generator, variables, parts=("lip", "pose"),
                   batch_size: int = 64) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """A host-side function: frames float32 (N, S, S, 3) in [-1, 1] -> {part: (N, K) numpy}
    (bank coefficients of each frame, e.g. the stage-4 lip/pose targets).

    Frames go through in chunks of `batch_size` (the last one zero-padded, the padding
    dropped), so every N uses one compiled program. The weights are an argument of that
    program, not constants baked into it. `fn.jitted` is the jitted (variables, frames)
    function, for inspection.
    """
    variables = jax.device_put(variables)
    parts = tuple(parts)

    @jax.jit
    def coeffs(variables, x):
        return _coefficients(model, variables, x, parts)

    def fn(frames: np.ndarray) -> Dict[str, np.ndarray]:
        frames = np.asarray(frames)
        n = len(frames)
        pad = max(1, -(-n // batch_size)) * batch_size - n  # at least one chunk, even for n = 0
        if pad:
            frames = np.concatenate([frames, np.zeros((pad, *frames.shape[1:]), frames.dtype)])
        chunks = [coeffs(variables, frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
        return {k: np.concatenate([np.asarray(c[k]) for c in chunks])[:n] for k in parts}

    fn.jitted = coeffs
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
