"""The EDTalk/LIA appearance encoder (official `EncoderApp`)."""

from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from edtalk_jax.layers.conv import residual_pyramid
from edtalk_jax.layers.equalized import EqualConv2d
from edtalk_jax.models.config import log2_size

Dtype = Any


class Encoder(nn.Module):
    """img (B, S, S, 3) -> (w (B, style_dim), skip features coarse->fine).

    convs_0: 1x1 ConvLayer to channels[S]; convs_1..n: ResBlocks halving down to 4x4;
    convs_{n+1}: a 4x4 valid EqualConv2d (no bias) to style_dim. The skip features are
    every map from 8x8 up to SxS (the 4x4 and 1x1 maps are not returned).
    """
    size: int
    channels: Tuple[int, ...]  # for resolutions 4, 8, ..., size
    style_dim: int = 512
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img):
        n = log2_size(self.size) - 2
        if img.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"encoder expects (B, {self.size}, {self.size}, 3) images, got {img.shape}")
        feats = residual_pyramid(img, self.channels, self.dtype, self.param_dtype)
        w = EqualConv2d(self.style_dim, 4, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=f"convs_{n + 1}")(feats[-1])
        return w.reshape(w.shape[0], self.style_dim), tuple(feats[-2::-1])
