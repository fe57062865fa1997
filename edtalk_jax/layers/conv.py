"""StyleGAN2 encoder/discriminator blocks: ConvLayer, ResBlock, minibatch stddev (NHWC)."""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from edtalk_jax.layers.equalized import EqualConv2d, FusedLeakyReLU
from edtalk_jax.layers.upfirdn import blur

Dtype = Any


class ConvLayer(nn.Module):
    """[blur] -> EqualConv2d -> [FusedLeakyReLU].

    Downsampling: blur with pad ((p+1)//2, p//2), p = 2 + (k-1), then a stride-2 conv
    without padding. Otherwise a stride-1 conv padded by k//2. The conv has its own bias
    only when there is no activation (the activation carries the bias).
    """
    features: int
    kernel_size: int
    downsample: bool = False
    use_bias: bool = True
    activate: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        x = x.astype(self.dtype)
        if self.downsample:
            p = 2 + (k - 1)
            x = blur(x, ((p + 1) // 2, p // 2))
            stride, padding = 2, 0
        else:
            stride, padding = 1, k // 2
        x = EqualConv2d(self.features, k, stride, padding,
                        use_bias=self.use_bias and not self.activate,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        if self.activate:
            if not self.use_bias:
                raise ValueError("ConvLayer(activate=True, use_bias=False) is not used by EDTalk")
            x = FusedLeakyReLU(self.dtype, self.param_dtype, name="act")(x)
        return x


class ResBlock(nn.Module):
    """(conv2(conv1(x)) + skip(x)) / sqrt(2), halving the resolution."""
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = ConvLayer(x.shape[-1], 3, name="conv1", **kw)(x)
        out = ConvLayer(self.features, 3, downsample=True, name="conv2", **kw)(out)
        skip = ConvLayer(self.features, 1, downsample=True, use_bias=False, activate=False,
                         name="skip", **kw)(x)
        return (out + skip) / math.sqrt(2)


def minibatch_stddev(x, group_size: int = 4, num_features: int = 1):
    """Appends the minibatch standard deviation as extra channels (rosinality semantics:
    sample b is grouped with b +- k * (B // group), statistics in float32)."""
    b, h, w, c = x.shape
    group = min(b, group_size)
    if b % group:
        raise ValueError(f"minibatch stddev: batch {b} is not divisible by the group size {group}")
    f = num_features
    y = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(group, b // group, h, w, f, c // f)
    y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # (B/group, H, W, F, C/F), biased variance
    y = jnp.mean(y, axis=(1, 2, 4))  # (B/group, F)
    y = jnp.tile(y, (group, 1))[:, None, None, :]
    y = jnp.broadcast_to(y, (b, h, w, f)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


def residual_pyramid(img, channels, dtype=jnp.float32, param_dtype=jnp.float32):
    """The shared trunk of the encoder and the discriminator, called from a compact module:
    `convs_0` (1x1 ConvLayer to channels[-1]) then ResBlocks `convs_1..n` halving the size
    down to 4x4. channels: for resolutions 4, 8, ..., size. Returns every output, finest first."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    ch = channels[::-1]  # ch[i] = channels at resolution size / 2**i
    outs = [ConvLayer(ch[0], 1, name="convs_0", **kw)(img)]
    for i in range(1, len(ch)):
        outs.append(ResBlock(ch[i], name=f"convs_{i}", **kw)(outs[-1]))
    return outs
