"""Equalized-learning-rate linear and conv layers and the fused bias + leaky ReLU
(StyleGAN2, rosinality's pure-PyTorch semantics, NHWC).

The equalization scale 1/sqrt(fan_in) is applied at run time, exactly as the official
code does, so converted weights are the official tensors, only transposed.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
NHWC = ("NHWC", "HWIO", "NHWC")


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=math.sqrt(2)):
    """leaky_relu(x + bias, 0.2) * sqrt(2): the bias is added before the activation."""
    return jax.nn.leaky_relu(x + bias, negative_slope) * scale


def conv2d(x, w, stride=1, padding=0, lhs_dilation=1, groups=1):
    """NHWC x HWIO convolution with explicit symmetric padding (never 'SAME': XLA pads
    strided convs asymmetrically, torch does not)."""
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=pad,
        lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=NHWC,
        feature_group_count=groups)


def normal_init(lr_mul: float = 1.0):
    return lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / lr_mul


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias followed by leaky ReLU with gain sqrt(2)."""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
        return fused_leaky_relu(x, bias.astype(self.dtype))


class EqualLinear(nn.Module):
    """x @ (W * lr_mul / sqrt(in)) + b * lr_mul, optionally followed by fused leaky ReLU."""
    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    lr_mul: float = 1.0
    activation: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        w = self.param("weight", normal_init(self.lr_mul), (fan_in, self.features), self.param_dtype)
        scale = self.lr_mul / math.sqrt(fan_in)
        # (W * scale) first, then the matmul: the official rounding order.
        # Scaled in the parameter dtype, then cast: one rounding under bfloat16 compute.
        out = jnp.dot(x.astype(self.dtype), (w * scale).astype(self.dtype))
        if not self.use_bias:
            return out
        b = (self.param("bias", nn.initializers.constant(self.bias_init), (self.features,),
                        self.param_dtype) * self.lr_mul).astype(self.dtype)
        return fused_leaky_relu(out, b) if self.activation else out + b


class EqualConv2d(nn.Module):
    """conv2d(x, W / sqrt(in * k * k), b) with explicit padding."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin, k = x.shape[-1], self.kernel_size
        w = self.param("weight", normal_init(), (k, k, cin, self.features), self.param_dtype)
        scale = 1.0 / math.sqrt(cin * k * k)
        out = conv2d(x.astype(self.dtype), (w * scale).astype(self.dtype), self.stride, self.padding)
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (self.features,),
                                   self.param_dtype).astype(self.dtype)
        return out


def _uniform(bound: float):
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class Linear(nn.Module):
    """torch.nn.Linear semantics and default init (U(+-1/sqrt(fan_in)) for weight and bias);
    used by the EEM's AdaIN MLPs and Audio2Lip."""
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        init = _uniform(1.0 / math.sqrt(fan_in))
        w = self.param("weight", init, (fan_in, self.features), self.param_dtype)
        b = self.param("bias", init, (self.features,), self.param_dtype)
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype)) + b.astype(self.dtype)


class Conv2d(nn.Module):
    """torch.nn.Conv2d semantics and default init (bias, explicit padding, int or (sh, sw) stride)."""
    features: int
    kernel_size: int
    stride: Any = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin, k = x.shape[-1], self.kernel_size
        init = _uniform(1.0 / math.sqrt(cin * k * k))
        w = self.param("weight", init, (k, k, cin, self.features), self.param_dtype)
        b = self.param("bias", init, (self.features,), self.param_dtype)
        stride = (self.stride, self.stride) if isinstance(self.stride, int) else tuple(self.stride)
        p = self.padding
        out = lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), stride,
                                       ((p, p), (p, p)), dimension_numbers=NHWC)
        return out + b.astype(self.dtype)
