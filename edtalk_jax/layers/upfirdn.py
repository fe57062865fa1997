"""upfirdn2d: zero-insertion upsampling, padding, FIR filtering and subsampling (NHWC).

Matches rosinality's `upfirdn2d_native`: each input sample is followed by `up - 1`
zeros, the result is zero-padded by (p0, p1) on both spatial axes, correlated with the
flipped kernel per channel and subsampled by `down`. Implemented as one depthwise
convolution (lhs dilation = the zero insertion, window stride = the subsampling).
"""

from functools import partial
from typing import Sequence, Tuple

import jax
import numpy as np
import jax.numpy as jnp
from jax import lax

from edtalk_jax.layers.equalized import NHWC

BLUR_KERNEL = (1, 3, 3, 1)


def make_kernel(k: Sequence[float] = BLUR_KERNEL) -> np.ndarray:
    """Outer product of a 1-d FIR kernel with itself, normalised to sum 1 (float32)."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x, kernel, up: int = 1, down: int = 1, pad: Tuple[int, int] = (0, 0)):
    """x: (B, H, W, C); kernel: (kh, kw). Output side (H*up + p0 + p1 - kh) // down + 1."""
    p0, p1 = pad
    # The zero insertion yields (H-1)*up+1 samples; the up-1 trailing zeros join the right pad.
    cfg = (p0, p1 + up - 1, up - 1)
    if jax.default_backend() != "cpu":
        c = x.shape[-1]
        k = jnp.asarray(np.flip(np.asarray(kernel), (0, 1)), dtype=x.dtype)
        w = jnp.broadcast_to(k[:, :, None, None], k.shape + (1, c))
        return lax.conv_general_dilated(x, w, window_strides=(down, down), padding=(cfg[:2], cfg[:2]),
                                        lhs_dilation=(up, up), dimension_numbers=NHWC,
                                        feature_group_count=c)
    # XLA:CPU runs the depthwise conv (and far worse, its gradient) at a few hundred MFLOP/s
    # (docs/benchmarks.md, "Convolution backward on XLA:CPU"): there the correlation is a
    # sum of kh*kw scaled shifted slices, which XLA fuses into one elementwise loop.
    k = tuple(map(tuple, np.asarray(kernel, dtype=np.float64).tolist()))
    if up == 1 and down == 1:
        return _fir_same_rate(x, k, (p0, p1))
    return _fir_taps(x, k, down, cfg)


def _fir_taps(x, k, down, cfg):
    """Correlation of lax.pad(x, cfg) with the flipped kernel k, subsampled by `down`."""
    kh, kw = len(k), len(k[0])
    b, _, _, c = x.shape
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), cfg, cfg, (0, 0, 0)))
    hp, wp = xp.shape[1:3]
    oh, ow = (hp - kh) // down + 1, (wp - kw) // down + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            coef = k[kh - 1 - i][kw - 1 - j]
            if coef == 0:
                continue
            tap = lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * down + 1, j + (ow - 1) * down + 1, c),
                            (1, down, down, 1)) * jnp.asarray(coef, x.dtype)
            out = tap if out is None else out + tap
    return jnp.zeros((b, oh, ow, c), x.dtype) if out is None else out


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fir_same_rate(x, k, pad):
    """up = down = 1. Its VJP is the same filter with the kernel flipped and the padding
    complemented (k - 1 - p), again as shifted slices: autodiff would transpose the slices
    into kh*kw pads of the cotangent, which XLA:CPU sums several times slower."""
    return _fir_taps(x, k, 1, (pad[0], pad[1], 0))


def _fir_same_rate_fwd(x, k, pad):
    return _fir_same_rate(x, k, pad), None


def _fir_same_rate_bwd(k, pad, _, dy):
    kh, kw = len(k), len(k[0])
    if kh != kw:
        raise ValueError(f"upfirdn2d: the gradient path takes square kernels (every EDTalk blur is); got {kh}x{kw}")
    flipped = tuple(tuple(row[::-1]) for row in k[::-1])
    return (_fir_same_rate(dy, flipped, (kh - 1 - pad[0], kh - 1 - pad[1])),)


_fir_same_rate.defvjp(_fir_same_rate_fwd, _fir_same_rate_bwd)


def blur(x, pad: Tuple[int, int], upsample_factor: int = 1, kernel=BLUR_KERNEL):
    """rosinality `Blur`: the normalised kernel (x factor**2 after an upsampling conv)."""
    k = make_kernel(kernel) * (upsample_factor ** 2)
    return upfirdn2d(x, k, pad=pad)


def upsample(x, factor: int = 2, kernel=BLUR_KERNEL):
    """rosinality `Upsample`: H -> factor * H with the FIR kernel (x factor**2)."""
    k = make_kernel(kernel) * (factor ** 2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))
