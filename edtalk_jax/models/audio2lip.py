"""Audio2Lip: the Wav2Lip audio encoder + Linear(512 -> 20) (official networks/audio_encoder.py).

Maps each per-frame 80x16 log-mel window to the 20 lip-bank coefficients. BatchNorm is
torch's: eval mode uses the running statistics from the checkpoint (train=False, the
default); train=True normalises with batch statistics and updates `batch_stats`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edtalk_jax.layers.equalized import Conv2d, Linear
from edtalk_jax.layers.norm import BatchNorm

Dtype = Any

# (out channels, kernel, stride (mel, time), padding, residual), official order.
AUDIO_ENCODER = (
    (32, 3, 1, 1, False), (32, 3, 1, 1, True), (32, 3, 1, 1, True),
    (64, 3, (3, 1), 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 3, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, (3, 2), 1, False), (256, 3, 1, 1, True),
    (512, 3, 1, 0, False), (512, 1, 1, 0, False),
)


class ConvBlock(nn.Module):
    """Conv2d(+bias) -> BatchNorm -> (+x if residual) -> ReLU."""
    features: int
    kernel_size: int
    stride: Any
    padding: int
    residual: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = Conv2d(self.features, self.kernel_size, self.stride, self.padding, name="conv", **kw)(x)
        out = BatchNorm(name="bn", **kw)(out, train)
        if self.residual:
            out = out + x.astype(out.dtype)
        return jax.nn.relu(out)


class Audio2Lip(nn.Module):
    lip_dim: int = 20
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mel, train: bool = False):
        """mel (..., 80, 16) windows (mel bins, time steps) -> (..., lip_dim)."""
        lead = mel.shape[:-2]
        x = mel.reshape((-1,) + mel.shape[-2:] + (1,)).astype(self.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, (c, k, s, p, r) in enumerate(AUDIO_ENCODER):
            x = ConvBlock(c, k, s, p, r, name=f"audio_encoder_{i}", **kw)(x, train)
        x = x.reshape(x.shape[0], -1)
        out = Linear(self.lip_dim, name="mapping", **kw)(x)
        return out.reshape(lead + (self.lip_dim,))
