"""upfirdn2d: zero-insertion upsampling, padding, FIR filtering and subsampling (NHWC).

Matches rosinality's `upfirdn2d_native`: each input sample is followed by `up - 1`
zeros, the result is zero-padded by (p0, p1) on both spatial axes, correlated with the
flipped kernel per channel and subsampled by `down`. Implemented as one depthwise
convolution (lhs dilation = the zero insertion, window stride = the subsampling).
"""

from typing import Sequence, Tuple

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
    c = x.shape[-1]
    k = jnp.asarray(np.flip(np.asarray(kernel), (0, 1)), dtype=x.dtype)
    w = jnp.broadcast_to(k[:, :, None, None], k.shape + (1, c))
    p0, p1 = pad
    # lhs dilation yields (H-1)*up+1 samples; the up-1 trailing zeros join the right pad.
    padding = ((p0, p1 + up - 1), (p0, p1 + up - 1))
    return lax.conv_general_dilated(x, w, window_strides=(down, down), padding=padding,
                                    lhs_dilation=(up, up), dimension_numbers=NHWC,
                                    feature_group_count=c)


def blur(x, pad: Tuple[int, int], upsample_factor: int = 1, kernel=BLUR_KERNEL):
    """rosinality `Blur`: the normalised kernel (x factor**2 after an upsampling conv)."""
    k = make_kernel(kernel) * (upsample_factor ** 2)
    return upfirdn2d(x, k, pad=pad)


def upsample(x, factor: int = 2, kernel=BLUR_KERNEL):
    """rosinality `Upsample`: H -> factor * H with the FIR kernel (x factor**2)."""
    k = make_kernel(kernel) * (factor ** 2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))
