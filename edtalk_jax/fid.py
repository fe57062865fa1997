"""Fréchet Inception Distance as pytorch-fid (mseitzer/pytorch-fid 0.3.0) computes it, in JAX.

    variables = load_fid_inception("pt_inception-2015-12-05-6726825d.pth")   # once
    score = fid(pred_frames, ref_frames, variables)    # uint8 (N, H, W, 3) RGB each

Features: the 2048-d pool3 activations of TF-FID's Inception v3 (`models.inception`), from
uint8 RGB frames scaled to [0, 1] (torchvision's ToTensor), resized to 299 x 299 bilinearly
and mapped to [-1, 1] inside the network. Statistics: mean and `np.cov(rowvar=False)` of each
set's features (float64). Distance: `frechet_distance`, pytorch-fid's
`calculate_frechet_distance` line for line.
"""

import warnings
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from edtalk_jax.models.inception import FEATURES, FIDInception, load_fid_inception  # noqa: F401 (re-export)


@jax.jit
def _features(variables, frames):
    """uint8 (B, H, W, 3) -> (B, 2048) float32; the weights are an argument, not constants."""
    return FIDInception().apply(variables, frames.astype(jnp.float32) / 255.0)


def inception_features(frames: np.ndarray, variables: Dict[str, Any], batch_size: int = 50,
                       progress: bool = False) -> np.ndarray:
    """uint8 frames (N, H, W, 3) RGB -> pool3 features (N, 2048) float64.

    Frames go through in batches of `batch_size`; the last batch is padded (with copies of its
    last frame) so one compiled program serves every N of a given frame size; the padding is
    dropped, so every frame counts once (as pytorch-fid's `get_activations`, drop_last=False) and
    the features do not depend on `batch_size`. `progress`: a tqdm bar over the frames."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"inception_features takes uint8 RGB frames (N, H, W, 3); got {frames.dtype} "
                         f"{frames.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(frames)
    out = np.empty((n, FEATURES), np.float64)
    if n == 0:
        return out
    from tqdm import tqdm
    variables = jax.device_put({k: variables[k] for k in ("params", "batch_stats")})
    with tqdm(total=n, desc="FID features", unit="frame", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            batch = frames[start:start + batch_size]
            m = len(batch)
            if m < batch_size:
                batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - m, axis=0)])
            out[start:start + m] = np.asarray(_features(variables, batch))[:m]
            bar.update(m)
    return out


def statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu (D,), sigma (D, D)), as pytorch-fid's
    `calculate_activation_statistics`: mean over frames, `np.cov(rowvar=False)` (N - 1 norm)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID statistics need features (N, D) with N >= 2 (a covariance); got {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), exactly as pytorch-fid's
    `calculate_frechet_distance` (Dougal J. Sutherland's stable version):

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))

    If scipy's `sqrtm` of the product is not finite, `eps` is added to both diagonals and the
    root recomputed (with a warning); a complex root is accepted only when the imaginary part
    of its diagonal is within 1e-3 of 0 (ValueError otherwise), then its real part is used.
    (`sqrtm` is called without pytorch-fid's `disp=False`, deprecated in scipy 1.16: same root.)"""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different dimensions: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))  # the product might be almost singular
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):  # numerical error might give a slight imaginary component
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(pred_frames: np.ndarray, ref_frames: np.ndarray, variables: Dict[str, Any], batch_size: int = 50,
        progress: bool = False) -> float:
    """FID between two sets of uint8 RGB frames (N, H, W, 3) (the sets' N and H, W may differ),
    with statistics over all frames of each set.

    FID is a biased estimator: over few frames it is larger, and its covariances are
    rank-deficient (fewer frames than 2048 features). Papers compute it over whole test sets
    (thousands of frames); scores over a handful of frames are not comparable to them. Each
    set needs at least 2 frames (a covariance)."""
    for name, frames in (("pred_frames", pred_frames), ("ref_frames", ref_frames)):
        if len(frames) < 2:
            raise ValueError(f"fid needs at least 2 frames per set (a covariance); {name} has {len(frames)}")
    mu1, sigma1 = statistics(inception_features(pred_frames, variables, batch_size, progress))
    mu2, sigma2 = statistics(inception_features(ref_frames, variables, batch_size, progress))
    return frechet_distance(mu1, sigma1, mu2, sigma2)
