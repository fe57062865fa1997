"""Equalized-learning-rate linear and conv layers and the fused bias + leaky ReLU
(StyleGAN2, rosinality's pure-PyTorch semantics, NHWC).

The equalization scale 1/sqrt(fan_in) is applied at run time, exactly as the official
code does, so converted weights are the official tensors, only transposed.
"""

import math
from functools import partial
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


def _pairs(padding):
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _stride2(stride):
    return (int(stride), int(stride)) if isinstance(stride, int) else tuple(int(s) for s in stride)


def conv2d(x, w, stride=1, padding=0, lhs_dilation=1, groups=1):
    """NHWC x HWIO cross-correlation with explicit padding (never 'SAME': XLA pads strided
    convs asymmetrically, torch does not). `stride`: int or (sh, sw); `padding`: int or
    ((top, bottom), (left, right)).

    On XLA:CPU, ungrouped convs take `_conv_cpu`, whose hand-written VJP computes the
    weight gradient as one dot per kernel tap (docs/benchmarks.md, "Convolution backward
    on XLA:CPU"): XLA's own weight-gradient convolution runs at a fifth of the forward's
    speed there. Strided convs compute their forward as row dots (`strided_conv_rows`).
    Elsewhere (GPU, TPU) XLA's convolution and its autodiff are used as is.
    `lhs_dilation` > 1 (a transposed conv written as a dilated-input conv) is left to XLA:
    use `conv_transpose2d`, which does not multiply the inserted zeros.
    """
    pad, stride = _pairs(padding), _stride2(stride)
    if groups == 1 and lhs_dilation == 1 and jax.default_backend() == "cpu":
        return _conv_cpu(x, w, stride, pad)
    return lax.conv_general_dilated(
        x, w, window_strides=stride, padding=pad,
        lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=NHWC,
        feature_group_count=groups)


def _xla_conv(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, stride, pad, dimension_numbers=NHWC)


def strided_conv_rows(x, w, stride, pad):
    """The strided conv as one dot per kernel row: the kw strided slices of a row of taps
    side by side along the channels (K = kw * C_in) against w[i] reshaped to match, the
    kh results summed. The same products as the conv, summed in another order. XLA:CPU
    runs a 3x3 stride-2 conv at a third to two thirds of this speed
    (docs/benchmarks.md, "Strided convolutions on XLA:CPU")."""
    (sh, sw), (kh, kw) = stride, w.shape[:2]
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pad[0], 0), (*pad[1], 0), (0, 0, 0)))
    b, hp, wp, c = xp.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1

    def tap(i, j):
        return lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))

    acc = jnp.promote_types(jnp.result_type(x, w), jnp.float32)  # bfloat16 rows summed in float32
    out = None
    for i in range(kh):
        row = jnp.concatenate([tap(i, j) for j in range(kw)], axis=-1) if kw > 1 else tap(i, 0)
        y = lax.dot_general(row, w[i].reshape(kw * c, w.shape[3]), (((3,), (0,)), ((), ())),
                            preferred_element_type=acc)
        out = y if out is None else out + y
    return out.astype(jnp.result_type(x, w))


def _conv_cpu_primal(x, w, stride, pad):
    if stride != (1, 1):
        return strided_conv_rows(x, w, stride, pad)
    return _xla_conv(x, w, stride, pad)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cpu(x, w, stride, pad):
    return _conv_cpu_primal(x, w, stride, pad)


def _conv_cpu_fwd(x, w, stride, pad):
    return _conv_cpu_primal(x, w, stride, pad), (x, w)


def conv_weight_grad(x, dy, kernel_shape, stride, pad):
    """d/dw of conv2d(x, w, stride, pad) against the output cotangent dy, as one dot per tap:
    dw[i, j] = (sum over (b, p, q) of dy[b, p, q, :]^T xpad[b, sh*p + i, sw*q + j, :])^T."""
    kh, kw = kernel_shape
    sh, sw = stride
    b, _, _, c = x.shape
    _, ho, wo, o = dy.shape
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), pad[0] + (0,), pad[1] + (0,), (0, 0, 0)))
    acc = jnp.promote_types(x.dtype, jnp.float32)
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                           (1, sh, sw, 1))
            # dy as the left operand, (O, C) out: XLA:CPU then transposes dy once for all
            # taps; with xs on the left it wrote a transposed copy of every tap's slice,
            # which cost as much as the dots (docs/benchmarks.md, "Stage-2 step at 128² on CPU").
            taps.append(lax.dot_general(dy, xs, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                        preferred_element_type=acc))
    return jnp.swapaxes(jnp.stack(taps).reshape(kh, kw, o, c), 2, 3)


def _conv_cpu_bwd(stride, pad, res, dy):
    x, w = res
    kh, kw = w.shape[:2]
    dw = conv_weight_grad(x, dy, (kh, kw), stride, pad).astype(w.dtype)
    # dx: the transposed conv of dy, cropped to the unpadded input (padded rows that no
    # window reaches get zero gradient).
    crop = []
    for a, k in enumerate((kh, kw)):
        full = (dy.shape[1 + a] - 1) * stride[a] + k
        hp = x.shape[1 + a] + pad[a][0] + pad[a][1]
        crop.append((pad[a][0], full - hp + pad[a][1]))
    dx = conv_transpose2d(dy, jnp.swapaxes(w, 2, 3), stride, tuple(crop))
    return dx.astype(x.dtype), dw


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def conv_transpose2d(x, w, stride=2, crop=0):
    """torch conv_transpose2d(x, w, stride, padding=crop) in NHWC/HWIO (I = x's channels):
    out[b, sh*p + i, sw*q + j] += x[b, p, q] @ w[i, j], of height (H - 1) * sh + kh before
    the crop. `stride`: int or (sh, sw); `crop`: int or ((top, bottom), (left, right)); a
    negative crop appends zeros.

    Polyphase: the output rows/columns of phase (a, c) (mod s) are an ordinary conv of x
    with the flipped taps w[a::s, c::s], interleaved afterwards (depth to space), so
    nothing multiplies the zeros that the dilated-input form (lhs_dilation = s) inserts:
    s^2 times less work. Every phase goes through `conv2d` and its VJP."""
    kh, kw = w.shape[:2]
    b, h, wd, _ = x.shape
    o = w.shape[3]
    sh, sw = _stride2(stride)
    crop = _pairs(crop)
    if sh == sw == 1:  # one conv: the crop becomes (less) padding
        return conv2d(x, jnp.flip(w, (0, 1)),
                      padding=tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), crop)))
    oh, ow = (h - 1) * sh + kh, (wd - 1) * sw + kw
    lh, lw = -(-oh // sh), -(-ow // sw)  # rows / columns per phase, padded to equal lengths
    rows = []
    for a in range(sh):
        cols = []
        for c in range(sw):
            sub = w[a::sh, c::sw]
            nh, nw = sub.shape[:2]
            if nh == 0 or nw == 0:  # kernel smaller than the stride: this phase is zero
                cols.append(jnp.zeros((b, lh, lw, o), x.dtype))
                continue
            y = conv2d(x, jnp.flip(sub, (0, 1)), padding=((nh - 1, nh - 1), (nw - 1, nw - 1)))
            cols.append(jnp.pad(y, ((0, 0), (0, lh - y.shape[1]), (0, lw - y.shape[2]), (0, 0))))
        rows.append(jnp.stack(cols, axis=3))  # (B, lh, lw, sw, O): column phase
    y = jnp.stack(rows, axis=2).reshape(b, lh * sh, lw * sw, o)  # (B, lh, sh, lw, sw, O) interleaved
    (t, bt), (l, r) = crop
    return lax.pad(y, jnp.zeros((), y.dtype),
                   ((0, 0, 0), (-t, oh - lh * sh - bt, 0), (-l, ow - lw * sw - r, 0), (0, 0, 0)))


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
        out = conv2d(x.astype(self.dtype), w.astype(self.dtype), stride, p)
        return out + b.astype(self.dtype)
