"""Style-modulated layers of the EDTalk decoder: ModulatedConv2d, StyledConv, ToRGB,
ToFlow (with the grid-sample warp), ConstantInput and NoiseInjection (NHWC)."""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from edtalk_jax.layers.equalized import EqualLinear, FusedLeakyReLU, conv2d, conv_transpose2d, normal_init
from edtalk_jax.layers.conv import ConvLayer
from edtalk_jax.layers.upfirdn import blur, upsample
from edtalk_jax.layers.warp import base_grid, grid_sample

Dtype = Any


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv. Per sample b: w = W / sqrt(in*k*k) * s[b] over the input
    channels, demodulated by rsqrt(sum w^2 + 1e-8) per output channel.

    Computed in the non-fused form (modulate the input, one shared conv, demodulate the
    output), which equals the official grouped conv exactly in real arithmetic and batches
    well on accelerators. The upsampling path is the official stride-2 transposed conv
    (size 2H+k-2; polyphase, `conv_transpose2d`) followed by a 4x4 blur (kernel x4; pad
    (1, 1) for k = 3) back to 2H.
    """
    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False
    init_scale: float = 1.0  # std of the initial weights (official: 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, style):
        cin, k = x.shape[-1], self.kernel_size
        w = self.param("weight", normal_init(1.0 / self.init_scale), (k, k, cin, self.features),
                       self.param_dtype)
        s = EqualLinear(cin, bias_init=1.0, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="modulation")(style)  # (B, in)
        w = w * (1.0 / math.sqrt(cin * k * k))  # scaled before the cast: one rounding
        x = x.astype(self.dtype) * s[:, None, None, :]
        wc = w.astype(self.dtype)
        if self.upsample:
            x = conv_transpose2d(x, wc, stride=2)  # official conv_transpose2d(stride 2, pad 0)
        else:
            x = conv2d(x, wc, padding=k // 2)
        if self.demodulate:
            # A sum of in*k*k squares: computed in (at least) float32, like norm statistics.
            sdt = jnp.promote_types(self.dtype, jnp.float32)
            sq = jnp.sum(jnp.square(w.astype(sdt)), axis=(0, 1))  # (in, out)
            d = jax.lax.rsqrt(jnp.dot(jnp.square(s.astype(sdt)), sq, precision="highest") + 1e-8)  # (B, out)
            x = x * d.astype(self.dtype)[:, None, None, :]
        if self.upsample:  # official Blur pad: p = (4 - 2) - (k - 1) -> ((p+1)//2 + 1, p//2 + 1)
            p = 3 - k
            x = blur(x, ((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        return x


class StyledConv(nn.Module):
    """ModulatedConv2d -> NoiseInjection (identity: noise is never given) -> FusedLeakyReLU."""
    features: int
    kernel_size: int
    upsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, style):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ModulatedConv2d(self.features, self.kernel_size, upsample=self.upsample,
                            name="conv", **kw)(x, style)
        if self.is_initializing():
            # The official NoiseInjection weight: kept (not trained, not computed) so that
            # exports reproduce the official state_dict.
            self.variable("unused", "noise_weight", lambda: jnp.zeros((1,), self.param_dtype))
        return FusedLeakyReLU(name="activate", **kw)(x)


class ToRGB(nn.Module):
    """ConvLayer(in, 3, 1) (EqualConv without bias + FusedLeakyReLU), + bias, + upsampled skip."""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skip=None):
        out = ConvLayer(3, 1, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        out = out + self.param("bias", nn.initializers.zeros, (3,), self.param_dtype).astype(self.dtype)
        if skip is not None:
            out = out + upsample(skip.astype(self.dtype))
        return out


class ToFlow(nn.Module):
    """Predicts a flow + mask from the decoder features and warps the source feature.

    logits = ModConv1x1(out, style) + bias (+ upsampled previous logits); flow =
    tanh(logits[..., :2]) + linspace grid; mask = sigmoid(logits[..., 2]);
    feat_warp = grid_sample(feat, flow) * mask; blended = feat_warp + out * (1 - mask).
    Returns (feat_warp, blended, logits, flow, mask).

    The flow path (logits, flow) is computed in at least float32 whatever `dtype` is: a
    normalised-coordinate error e moves the sample by e * res / 2 pixels, and bfloat16
    (8 bits) near |x| = 1 has steps of 1/128, i.e. a pixel at 256^2. It is a 1x1 conv to
    3 channels, so the cost is small; mask and warped features use `dtype`.

    `init_scale` scales the initial flow/mask weights (official: 1). With 1, the initial
    flows of the finer levels scatter samples across the image; 0.1 starts them near the
    base grid, which a short training run needs (configs/demo.py).
    """
    init_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, out, style, feat, skip: Optional[jnp.ndarray] = None):
        fdt = jnp.promote_types(self.dtype, jnp.float32)
        logits = ModulatedConv2d(3, 1, demodulate=False, init_scale=self.init_scale, dtype=fdt,
                                 param_dtype=self.param_dtype, name="conv")(out, style)
        logits = logits + self.param("bias", nn.initializers.zeros, (3,), self.param_dtype).astype(fdt)
        if skip is not None:
            logits = logits + upsample(skip.astype(fdt))
        res = out.shape[1]
        flow = jnp.tanh(logits[..., 0:2]) + base_grid(res, fdt)
        mask = jax.nn.sigmoid(logits[..., 2:3]).astype(self.dtype)
        feat_warp = grid_sample(feat.astype(self.dtype), flow) * mask
        blended = feat_warp + out.astype(self.dtype) * (1 - mask)
        return feat_warp, blended, logits, flow, mask


class ConstantInput(nn.Module):
    """A learned (1, size, size, C) tensor repeated over the batch."""
    channels: int
    size: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, batch: int):
        x = self.param("input", normal_init(), (1, self.size, self.size, self.channels), self.param_dtype)
        return jnp.broadcast_to(x.astype(self.dtype), (batch,) + x.shape[1:])
