"""StyleGAN2 discriminator (official networks/discriminator.py), NHWC."""

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from edtalk_jax.layers.conv import ConvLayer, minibatch_stddev, residual_pyramid
from edtalk_jax.layers.equalized import EqualLinear
from edtalk_jax.models.config import log2_size

Dtype = Any


class Discriminator(nn.Module):
    """img (B, S, S, 3) -> logits (B, 1). Minibatch stddev couples the samples of a batch
    (group = min(B, 4); B must be divisible by it)."""
    size: int
    channels: Tuple[int, ...]  # for resolutions 4, 8, ..., size
    stddev_group: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        log2_size(self.size)  # validates the size
        c4 = self.channels[0]
        out = residual_pyramid(img, self.channels, **kw)[-1]
        out = minibatch_stddev(out, self.stddev_group)
        out = ConvLayer(c4, 3, name="final_conv", **kw)(out)
        # Flatten in torch's (C, H, W) order so the official final_linear weights apply as is.
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(out.shape[0], -1)
        out = EqualLinear(c4, activation=True, name="final_linear_0", **kw)(out)
        return EqualLinear(1, name="final_linear_1", **kw)(out)
