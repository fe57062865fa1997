"""Every layer against an independent numpy reference of the official PyTorch semantics.

The references are written in NCHW with torch's weight layouts (O, I, kh, kw) and (out, in),
straight from rosinality's StyleGAN2 / the official EDTalk modules; the Flax parameters are
transposed into them. Everything runs in float64 (x64), so agreement is to ~1e-12.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edtalk_jax.layers import conv, eem, equalized, modulated, norm, upfirdn, warp

F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
SQRT2 = math.sqrt(2)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def close(got, ref, tol=1e-10):
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def init(module, *args, seed=0):
    """`module`'s variables with every float leaf drawn from N(0, 1) (no zero biases). Shapes
    come from an abstract init: compiling the real random initialisers would dominate the runtime."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed + 100)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype)
                                  if jnp.issubdtype(a.dtype, jnp.floating) else jnp.zeros(a.shape, a.dtype), shapes)


def real_init(module, *args):
    """A real initialisation (for checks of initial values). The rbg key compiles much faster
    than the default threefry on CPU."""
    return module.init(jax.random.key(0, impl="unsafe_rbg"), *args)


def rand(*shape, seed=1, scale=1.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def chan(v):
    """A per-channel vector broadcast over NCHW."""
    return np.asarray(v)[None, :, None, None]


def oihw(w):
    return np.asarray(w).transpose(3, 2, 0, 1)


# ------------------------------------------------------------------ numpy references (NCHW)

def np_fused_lrelu(x, b):
    x = x + np.asarray(b).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, 0.2 * x) * SQRT2


def np_conv2d(x, w, b=None, stride=1, pad=0, groups=1):
    """torch.nn.functional.conv2d: cross-correlation, w (O, I/groups, kh, kw)."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og, ho, wo = o // groups, (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, o, ho, wo))
    for g in range(groups):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out if b is None else out + np.asarray(b)[None, :, None, None]


def np_conv_transpose2d(x, w, stride, groups=1):
    """torch conv_transpose2d, padding 0, w (I, O/groups, kh, kw): scatter each input pixel."""
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = cin // groups
    out = np.zeros((n, og * groups, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for g in range(groups):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                out[:, g * og:(g + 1) * og, i:i + stride * (h - 1) + 1:stride, j:j + stride * (wd - 1) + 1:stride] += \
                    np.einsum("nchw,co->nohw", xs, ws[:, :, i, j])
    return out


def np_make_kernel(k=(1, 3, 3, 1)):
    k = np.asarray(k, np.float64)
    k = np.outer(k, k) if k.ndim == 1 else k
    return k / k.sum()


def np_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Literal transcription of rosinality's upfirdn2d_native (same up/down/pad on both axes)."""
    _, channel, in_h, in_w = x.shape
    kernel_h, kernel_w = kernel.shape
    p0, p1 = pad
    out = x.reshape(-1, in_h, 1, in_w, 1, 1)
    out = np.pad(out, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
    out = out.reshape(-1, in_h * up, in_w * up, 1)
    out = np.pad(out, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
    out = out[:, max(-p0, 0):out.shape[1] - max(-p1, 0), max(-p0, 0):out.shape[2] - max(-p1, 0), :]
    out = out.transpose(0, 3, 1, 2)
    out = np_conv2d(out, np.flip(kernel, (0, 1))[None, None])
    out = out.transpose(0, 2, 3, 1)[:, ::down, ::down, :]
    return out.reshape(-1, channel, out.shape[1], out.shape[2])


def np_blur(x, pad, factor=1):
    return np_upfirdn2d(x, np_make_kernel() * factor ** 2, pad=pad)


def np_upsample(x):  # rosinality Upsample(factor 2): p = 4 - 2, pad ((p+1)//2 + 1, p//2)
    return np_upfirdn2d(x, np_make_kernel() * 4, up=2, pad=(2, 1))


def np_equal_linear(x, p, lr_mul=1.0, activation=False):
    w = np.asarray(p["weight"]).T  # torch (out, in)
    out = x @ (w * lr_mul / math.sqrt(w.shape[1])).T
    if "bias" not in p:
        return out
    b = np.asarray(p["bias"]) * lr_mul
    return np_fused_lrelu(out, b) if activation else out + b


def np_equal_conv(x, p, stride=1, pad=0):
    w = oihw(p["weight"])
    return np_conv2d(x, w / math.sqrt(w[0].size), p.get("bias"), stride, pad)


def np_conv_layer(x, p, k, downsample=False, activate=True):
    """Official ConvLayer: [Blur] -> EqualConv2d -> [FusedLeakyReLU]."""
    if downsample:
        q = (4 - 2) + (k - 1)
        x = np_blur(x, ((q + 1) // 2, q // 2))
        x = np_equal_conv(x, p["conv"], stride=2)
    else:
        x = np_equal_conv(x, p["conv"], pad=k // 2)
    return np_fused_lrelu(x, p["act"]["bias"]) if activate else x


def np_modconv(x, style, p, k, demodulate=True, upsample=False):
    """Official fused ModulatedConv2d: per-sample weights, grouped (transposed) conv."""
    b, cin, h, w = x.shape
    weight = oihw(p["weight"])[None]  # (1, out, in, k, k)
    cout = weight.shape[1]
    s = np_equal_linear(style, p["modulation"])  # (B, in)
    weight = weight / math.sqrt(cin * k * k) * s[:, None, :, None, None]
    if demodulate:
        weight = weight / np.sqrt((weight ** 2).sum((2, 3, 4)) + 1e-8)[:, :, None, None, None]
    if upsample:
        wt = weight.transpose(0, 2, 1, 3, 4).reshape(b * cin, cout, k, k)
        out = np_conv_transpose2d(x.reshape(1, b * cin, h, w), wt, 2, groups=b)
        out = out.reshape(b, cout, out.shape[2], out.shape[3])
        q = (4 - 2) - (k - 1)
        return np_blur(out, ((q + 1) // 2 + 1, q // 2 + 1), factor=2)
    out = np_conv2d(x.reshape(1, b * cin, h, w), weight.reshape(b * cout, cin, k, k), pad=k // 2, groups=b)
    return out.reshape(b, cout, h, w)


def np_grid_sample(feat, grid):
    """torch grid_sample, bilinear, zeros padding, align_corners=False. feat NCHW, grid (N, Ho, Wo, 2)."""
    n, c, h, w = feat.shape
    out = np.zeros((n, c) + grid.shape[1:3])
    for b in range(n):
        for i in range(grid.shape[1]):
            for j in range(grid.shape[2]):
                x = ((grid[b, i, j, 0] + 1) * w - 1) / 2
                y = ((grid[b, i, j, 1] + 1) * h - 1) / 2
                x0, y0 = math.floor(x), math.floor(y)
                for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                    for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                        if 0 <= xx < w and 0 <= yy < h:
                            out[b, :, i, j] += wx * wy * feat[b, :, yy, xx]
    return out


def np_instance_norm(x):
    mean = x.mean((2, 3), keepdims=True)
    return (x - mean) / np.sqrt(x.var((2, 3), keepdims=True) + 1e-5)


def np_linear(x, p):
    return x @ np.asarray(p["weight"]) + np.asarray(p["bias"])  # flax (in, out) = torch weight.T


def np_adain(x, z, p):
    actv = np.maximum(np_linear(z, p["mlp_shared"]), 0)
    gamma = np_linear(actv, p["mlp_gamma"])[:, :, None, None]
    beta = np_linear(actv, p["mlp_beta"])[:, :, None, None]
    return np_instance_norm(x) * (1 + gamma) + beta


# ------------------------------------------------------------------ equalized layers

def test_fused_leaky_relu():
    x, b = rand(2, 3, 3, 4), rand(4, seed=2)
    close(equalized.fused_leaky_relu(jnp.asarray(x), jnp.asarray(b)), nhwc(np_fused_lrelu(nchw(x), b)))
    v = real_init(equalized.FusedLeakyReLU(**F64), x)
    assert v["params"]["bias"].shape == (4,) and not np.any(v["params"]["bias"])
    v = init(equalized.FusedLeakyReLU(**F64), x)
    close(equalized.FusedLeakyReLU(**F64).apply(v, x), nhwc(np_fused_lrelu(nchw(x), v["params"]["bias"])))


@pytest.mark.parametrize("lr_mul,bias_init,activation,use_bias",
                         [(1.0, 0.0, False, True), (0.01, 1.0, False, True), (0.5, 0.3, True, True),
                          (1.0, 0.0, False, False)])
def test_equal_linear(lr_mul, bias_init, activation, use_bias):
    layer = equalized.EqualLinear(64, use_bias=use_bias, bias_init=bias_init, lr_mul=lr_mul,
                                  activation=activation, **F64)
    x = rand(3, 48)
    p0 = real_init(layer, x)["params"]
    assert p0["weight"].shape == (48, 64)
    assert abs(np.std(p0["weight"]) * lr_mul - 1) < 0.1  # torch.randn(out, in) / lr_mul
    if use_bias:
        np.testing.assert_array_equal(p0["bias"], np.full(64, bias_init))
    v = init(layer, x)
    close(layer.apply(v, x), np_equal_linear(x, v["params"], lr_mul, activation))


@pytest.mark.parametrize("stride,padding,use_bias", [(1, 0, True), (1, 1, False), (2, 0, False), (2, 1, True)])
def test_equal_conv2d(stride, padding, use_bias):
    layer = equalized.EqualConv2d(5, 3, stride, padding, use_bias=use_bias, **F64)
    x = rand(2, 7, 8, 4)
    v = init(layer, x)
    assert ("bias" in v["params"]) == use_bias
    close(layer.apply(v, x), nhwc(np_equal_conv(nchw(x), v["params"], stride, padding)))


def test_linear_torch_default():
    layer, x = equalized.Linear(6, **F64), rand(4, 9)
    p0 = real_init(layer, x)["params"]
    assert np.abs(p0["weight"]).max() <= 1 / 3 and np.abs(p0["bias"]).max() <= 1 / 3  # U(+-1/sqrt(9))
    v = init(layer, x)
    w, b = np.asarray(v["params"]["weight"]).T, np.asarray(v["params"]["bias"])  # torch (out, in)
    close(layer.apply(v, x), x @ w.T + b)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), ((3, 1), 1), ((3, 2), 0)])
def test_conv2d_torch(stride, padding):
    layer, x = equalized.Conv2d(4, 3, stride, padding, **F64), rand(2, 10, 7, 3)
    v = init(layer, x)
    p = v["params"]
    close(layer.apply(v, x), nhwc(np_conv2d(nchw(x), oihw(p["weight"]), p["bias"], stride, padding)))


# ------------------------------------------------------------------ conv gradients (XLA:CPU VJPs)

def _lax_conv(x, w, stride, pad, lhs_dilation=(1, 1)):
    return jax.lax.conv_general_dilated(x, w, stride, pad, lhs_dilation=lhs_dilation,
                                        dimension_numbers=equalized.NHWC)


def _assert_same_vjp(f, ref, *args, tol=1e-11):
    """f and ref: same value, same VJP (both arguments) for a random cotangent."""
    y, vjp = jax.vjp(f, *args)
    y_ref, vjp_ref = jax.vjp(ref, *args)
    close(y, np.asarray(y_ref), tol)
    dy = jnp.asarray(rand(*y.shape, seed=7))
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        close(got, np.asarray(want), tol)


# (input h, w, kernel, stride, padding): every conv shape of the models (3x3 and 1x1 same,
# 3x3 and 1x1 stride 2 valid after the blur, the 4x4 valid head, Audio2Lip's (3, 1) and
# (1, 2) strides), plus asymmetric padding and more padding than the kernel.
CONV_CASES = [(7, 8, 3, 1, 1), (7, 8, 1, 1, 0), (9, 9, 3, 2, 0), (8, 8, 1, 2, 0), (4, 4, 4, 1, 0),
              (9, 7, 3, (3, 1), 1), (6, 9, 3, (1, 2), 1), (7, 7, 3, 1, ((0, 2), (1, 0))),
              (5, 6, 3, 1, 3), (10, 10, 4, 3, 2)]


@pytest.mark.parametrize("h,w,k,stride,padding", CONV_CASES)
def test_conv2d_gradients_match_xla_autodiff(h, w, k, stride, padding):
    """conv2d (with its per-tap weight-gradient VJP on CPU) against autodiff of plain
    lax.conv_general_dilated: values, first and second derivatives (R1 differentiates D's
    input gradient)."""
    x, wt = jnp.asarray(rand(2, h, w, 3)), jnp.asarray(rand(k, k, 3, 4, seed=2))
    st = equalized._stride2(stride)
    pad = equalized._pairs(padding)
    f = lambda x, w: equalized.conv2d(x, w, stride, padding)
    ref = lambda x, w: _lax_conv(x, w, st, pad)
    _assert_same_vjp(f, ref, x, wt)

    def r1(conv_fn):  # gradient of a function of the input gradient
        return jax.grad(lambda x, w: jnp.sum(jnp.square(jax.grad(
            lambda x: jnp.sum(jnp.sin(conv_fn(x, w))))(x))), (0, 1))(x, wt)
    for got, want in zip(r1(f), r1(ref)):
        close(got, np.asarray(want), 1e-10)


@pytest.mark.parametrize("h,w,k,stride,crop", [(4, 5, 3, 2, 0), (5, 4, 4, 2, 0), (3, 3, 1, 2, 0),
                                                (4, 4, 3, 3, 0), (4, 6, 3, (1, 2), 0),
                                                (4, 4, 3, 2, ((1, 0), (0, -1))), (5, 5, 3, 1, 1)])
def test_conv_transpose2d_matches_dilated_conv(h, w, k, stride, crop):
    """The polyphase transposed conv against the dilated-input form (torch conv_transpose2d
    semantics), values and VJP."""
    x, wt = jnp.asarray(rand(2, h, w, 3)), jnp.asarray(rand(k, k, 3, 4, seed=2))
    st = equalized._stride2(stride)
    (t, b), (l, r) = equalized._pairs(crop)
    ref = lambda x, w: _lax_conv(x, jnp.flip(w, (0, 1)), (1, 1),
                                 ((k - 1 - t, k - 1 - b), (k - 1 - l, k - 1 - r)), lhs_dilation=st)
    _assert_same_vjp(lambda x, w: equalized.conv_transpose2d(x, w, stride, crop), ref, x, wt)


@pytest.mark.parametrize("up,down,pad", [(1, 1, (2, 2)), (1, 1, (1, 1)), (1, 1, (0, 3)), (2, 1, (2, 1)),
                                         (1, 2, (1, 2)), (2, 2, (3, 0))])
def test_upfirdn2d_gradient_matches_depthwise_conv(up, down, pad):
    """upfirdn2d (shifted slices on CPU, own VJP at up = down = 1) against autodiff of the
    depthwise-conv form, first and second order."""
    x, kernel = jnp.asarray(rand(2, 6, 7, 3)), rand(4, 4, seed=3)
    p0, p1 = pad

    def ref(x):
        w = jnp.broadcast_to(jnp.asarray(np.flip(kernel, (0, 1)))[:, :, None, None], (4, 4, 1, 3))
        return jax.lax.conv_general_dilated(
            x, w, (down, down), ((p0, p1 + up - 1),) * 2, lhs_dilation=(up, up),
            dimension_numbers=equalized.NHWC, feature_group_count=3)
    f = lambda x: upfirdn.upfirdn2d(x, kernel, up, down, pad)
    _assert_same_vjp(f, ref, x)
    g2 = lambda fn: jax.grad(lambda x: jnp.sum(jnp.square(jax.grad(lambda x: jnp.sum(jnp.sin(fn(x))))(x))))(x)
    close(g2(f), np.asarray(g2(ref)), 1e-10)


# ------------------------------------------------------------------ upfirdn2d

def test_make_kernel():
    k = upfirdn.make_kernel()
    assert k.dtype == np.float32 and k.shape == (4, 4)
    np.testing.assert_array_equal(k, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
    k2 = np.arange(1.0, 7.0).reshape(2, 3)
    np.testing.assert_allclose(upfirdn.make_kernel(k2), k2 / 21, rtol=1e-7)


@pytest.mark.parametrize("up,down,pad,kshape", [(1, 1, (0, 0), (4, 4)), (2, 1, (2, 1), (4, 4)),
                                                 (1, 2, (1, 2), (4, 4)), (2, 2, (3, 0), (4, 4)),
                                                 (2, 1, (0, 2), (2, 3))])
def test_upfirdn2d(up, down, pad, kshape):
    x = rand(2, 5, 7, 3)
    kernel = rand(*kshape, seed=3)  # non-symmetric: a missing flip would show
    got = upfirdn.upfirdn2d(jnp.asarray(x), kernel, up, down, pad)
    close(got, nhwc(np_upfirdn2d(nchw(x), kernel, up, down, pad)))


def test_blur_and_upsample():
    x = rand(2, 6, 6, 3)
    close(upfirdn.blur(jnp.asarray(x), (2, 2)), nhwc(np_blur(nchw(x), (2, 2))))
    close(upfirdn.blur(jnp.asarray(x), (1, 1), upsample_factor=2), nhwc(np_blur(nchw(x), (1, 1), 2)))
    up = upfirdn.upsample(jnp.asarray(x))
    assert up.shape == (2, 12, 12, 3)
    close(up, nhwc(np_upsample(nchw(x))))


# ------------------------------------------------------------------ ConvLayer / ResBlock / minibatch stddev

@pytest.mark.parametrize("k,downsample,activate", [(3, False, True), (1, False, True), (3, True, True),
                                                   (1, True, False)])
def test_conv_layer(k, downsample, activate):
    layer = conv.ConvLayer(5, k, downsample, use_bias=activate, activate=activate, **F64)
    x = rand(2, 8, 8, 3)
    v = init(layer, x)
    p = v["params"]
    assert "bias" not in p["conv"] and ("act" in p) == activate  # the activation carries the bias
    got = layer.apply(v, x)
    assert got.shape == ((2, 4, 4, 5) if downsample else (2, 8, 8, 5))
    close(got, nhwc(np_conv_layer(nchw(x), p, k, downsample, activate)))


def test_conv_layer_rejects_unbiased_activation():
    with pytest.raises(ValueError, match="use_bias=False"):
        init(conv.ConvLayer(4, 3, use_bias=False, activate=True), jnp.zeros((1, 4, 4, 2)))


def test_resblock():
    block, x = conv.ResBlock(6, **F64), rand(2, 8, 8, 4)
    v = init(block, x)
    p = v["params"]
    xt = nchw(x)
    out = np_conv_layer(np_conv_layer(xt, p["conv1"], 3), p["conv2"], 3, downsample=True)
    skip = np_conv_layer(xt, p["skip"], 1, downsample=True, activate=False)
    close(block.apply(v, x), nhwc((out + skip) / SQRT2))


def np_minibatch_stddev(x, group_size=4, feat=1):
    """rosinality: view(group, -1, F, C/F, H, W), biased var over the group, mean, repeat."""
    b, c, h, w = x.shape
    group = min(b, group_size)
    s = x.reshape(group, -1, feat, c // feat, h, w)
    s = np.sqrt(s.var(0) + 1e-8)
    s = s.mean((2, 3, 4), keepdims=True).squeeze(2)
    return np.concatenate([x, np.tile(s, (group, 1, h, w))], 1)


@pytest.mark.parametrize("batch", [2, 4, 8])
def test_minibatch_stddev(batch):
    x = rand(batch, 3, 3, 5) * np.arange(1, batch + 1)[:, None, None, None]  # samples differ in scale
    got = conv.minibatch_stddev(jnp.asarray(x))
    assert got.shape == (batch, 3, 3, 6)
    close(got, nhwc(np_minibatch_stddev(nchw(x))))


def test_minibatch_stddev_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="batch 6 is not divisible by the group size 4"):
        conv.minibatch_stddev(jnp.zeros((6, 2, 2, 3)))


# ------------------------------------------------------------------ modulated layers

@pytest.mark.parametrize("k,demodulate,upsample", [(3, True, False), (3, False, False), (1, False, False),
                                                   (3, True, True), (3, False, True)])
def test_modulated_conv2d(k, demodulate, upsample):
    layer = modulated.ModulatedConv2d(4, k, demodulate, upsample, **F64)
    x, style = rand(2, 5, 5, 3), rand(2, 6, seed=2)
    v = init(layer, x, style)
    assert v["params"]["weight"].shape == (k, k, 3, 4) and v["params"]["modulation"]["weight"].shape == (6, 3)
    got = layer.apply(v, x, style)
    assert got.shape == ((2, 10, 10, 4) if upsample else (2, 5, 5, 4))
    close(got, nhwc(np_modconv(nchw(x), style, v["params"], k, demodulate, upsample)))


def test_modulation_bias_starts_at_one():
    v = real_init(modulated.ModulatedConv2d(4, 3), jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 6)))
    np.testing.assert_array_equal(v["params"]["modulation"]["bias"], np.ones(3))


@pytest.mark.parametrize("upsample", [False, True])
def test_styled_conv(upsample):
    layer = modulated.StyledConv(4, 3, upsample, **F64)
    x, style = rand(2, 4, 4, 3), rand(2, 6, seed=2)
    v = init(layer, x, style)
    assert v["unused"]["noise_weight"].shape == (1,)  # official NoiseInjection weight, never used
    p = v["params"]
    ref = np_fused_lrelu(np_modconv(nchw(x), style, p["conv"], 3, True, upsample), p["activate"]["bias"])
    close(layer.apply(v, x, style), nhwc(ref))


@pytest.mark.parametrize("with_skip", [False, True])
def test_to_rgb(with_skip):
    layer, x = modulated.ToRGB(**F64), rand(2, 6, 6, 5)
    skip = jnp.asarray(rand(2, 3, 3, 3, seed=4)) if with_skip else None
    v = init(layer, x, skip)
    p = v["params"]
    ref = np_conv_layer(nchw(x), p["conv"], 1) + chan(p["bias"])
    if with_skip:
        ref = ref + np_upsample(nchw(skip))
    close(layer.apply(v, x, skip), nhwc(ref))


def test_constant_input():
    layer = modulated.ConstantInput(5, 4, **F64)
    v = init(layer, 3)
    got = layer.apply(v, 3)
    assert got.shape == (3, 4, 4, 5)
    for b in range(3):
        close(got[b], np.asarray(v["params"]["input"][0]))


# ------------------------------------------------------------------ warping

def test_base_grid():
    g = np.asarray(warp.base_grid(7, jnp.float64))
    assert g.shape == (7, 7, 2) and g.dtype == np.float64
    xs = np.linspace(-1, 1, 7).astype(np.float32).astype(np.float64)  # the official `.float()`
    np.testing.assert_array_equal(g[..., 0], np.broadcast_to(xs[None, :], (7, 7)))  # x varies along columns
    np.testing.assert_array_equal(g[..., 1], np.broadcast_to(xs[:, None], (7, 7)))
    assert g[0, 2, 0] != -1 / 3  # rounded through float32, not float64 linspace


def test_grid_sample():
    feat = rand(2, 4, 6, 3)  # non-square: an x/y swap would show
    grid = rand(2, 5, 3, 2, seed=2, scale=0.8)
    grid[0, 0, 0] = (-1.0, -1.0)
    grid[0, 0, 1] = (1.0, 1.0)
    grid[0, 1, 0] = (-1.3, 0.2)  # partly and fully outside [-1, 1]
    grid[0, 1, 1] = (0.4, 1.2)
    grid[1, 2, 2] = (3.0, -3.0)
    got = warp.grid_sample(jnp.asarray(feat), jnp.asarray(grid))
    assert got.shape == (2, 5, 3, 3)
    close(got, nhwc(np_grid_sample(nchw(feat), grid)))
    assert not np.any(np.asarray(got[1, 2, 2]))


def _warp_case(seed=2):
    """A feature map and a grid with every kind of tap: inside, on pixel centres (zero
    fractional weights), partly and fully outside the image (non-square, Ho != H)."""
    feat = rand(2, 4, 6, 3, seed=seed)
    grid = rand(2, 5, 3, 2, seed=seed + 1, scale=0.8)
    grid[0, 0, 0] = (-1.0, -1.0)
    grid[0, 0, 1] = (1.0, 1.0)
    grid[0, 1, 0] = (-1.3, 0.2)
    grid[0, 1, 1] = (0.4, 1.2)
    grid[0, 2, 0] = ((2 * 0 + 1) / 6 - 1, (2 * 3 + 1) / 4 - 1)  # the centre of pixel (3, 0)
    grid[0, 2, 1] = ((2 * 5 + 1) / 6 - 1, (2 * 2 + 1) / 4 - 1)  # pixel (2, 5), next to the edge
    grid[1, 2, 2] = (3.0, -3.0)
    return jnp.asarray(feat), jnp.asarray(grid)


def test_grid_sample_gradients_match_autodiff_reference():
    """The hand-written VJP against JAX autodiff of the plain four-gather formulation."""
    feat, grid = _warp_case()
    ct = jnp.asarray(rand(2, 5, 3, 3, seed=9))
    out, vjp = jax.vjp(warp.grid_sample, feat, grid)
    ref, ref_vjp = jax.vjp(warp.reference_grid_sample, feat, grid)
    close(out, np.asarray(ref), tol=1e-14)
    for got, want in zip(vjp(ct), ref_vjp(ct)):
        close(got, np.asarray(want), tol=1e-12)
    # and jitted, in float32
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = jax.jit(lambda f, g, c: jax.vjp(warp.grid_sample, f, g)[1](c))(f32(feat), f32(grid), f32(ct))
    want = jax.vjp(warp.reference_grid_sample, f32(feat), f32(grid))[1](f32(ct))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))


def test_grid_sample_gradients_by_finite_differences():
    feat, grid = _warp_case()
    grid = grid + 1e-3  # off the pixel centres: the derivative jumps there
    ct = jnp.asarray(rand(2, 5, 3, 3, seed=9))
    loss = lambda f, g: jnp.vdot(warp.grid_sample(f, g), ct)
    dfeat, dgrid = jax.grad(loss, (0, 1))(feat, grid)
    rng = np.random.default_rng(0)
    for _ in range(3):
        vf, vg = jnp.asarray(rng.normal(size=feat.shape)), jnp.asarray(rng.normal(size=grid.shape)) * 1e-2
        eps = 1e-6
        fd = (loss(feat + eps * vf, grid + eps * vg) - loss(feat - eps * vf, grid - eps * vg)) / (2 * eps)
        assert abs(float(fd - jnp.vdot(dfeat, vf) - jnp.vdot(dgrid, vg))) <= 1e-6 * max(1.0, abs(float(fd)))


def test_grid_sample_bfloat16_features():
    feat, grid = _warp_case()
    fb = feat.astype(jnp.bfloat16)
    out, vjp = jax.vjp(warp.grid_sample, fb, grid.astype(jnp.float32))
    assert out.dtype == jnp.bfloat16
    dfeat, dgrid = vjp(jnp.ones_like(out))
    assert dfeat.dtype == jnp.bfloat16 and dgrid.dtype == jnp.float32
    ref = warp.reference_grid_sample(fb.astype(jnp.float64), grid)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=2e-2)


@pytest.mark.parametrize("with_skip", [False, True])
def test_to_flow(with_skip):
    layer = modulated.ToFlow(**F64)
    out_in, style, feat = rand(2, 6, 6, 4), rand(2, 5, seed=2), rand(2, 6, 6, 4, seed=3)
    skip = jnp.asarray(rand(2, 3, 3, 3, seed=4)) if with_skip else None
    v = init(layer, out_in, style, feat, skip)
    p = v["params"]
    logits = np_modconv(nchw(out_in), style, p["conv"], 1, demodulate=False) + chan(p["bias"])
    if with_skip:
        logits = logits + np_upsample(nchw(skip))
    xs = np.linspace(-1, 1, 6)
    grid = np.stack(np.meshgrid(xs, xs), 2).astype(np.float32)[None]
    flow = np.tanh(logits[:, 0:2]).transpose(0, 2, 3, 1) + grid
    mask = 1 / (1 + np.exp(-logits[:, 2:3]))
    feat_warp = np_grid_sample(nchw(feat), flow) * mask
    got = layer.apply(v, out_in, style, feat, skip)
    for g, r in zip(got, (nhwc(feat_warp), nhwc(feat_warp + nchw(out_in) * (1 - mask)), nhwc(logits),
                          flow, nhwc(mask))):
        close(g, np.asarray(r))


# ------------------------------------------------------------------ normalisation and EEM

def test_instance_norm():
    x = rand(2, 5, 4, 3, scale=3.0) + 2.0
    close(norm.instance_norm(jnp.asarray(x)), nhwc(np_instance_norm(nchw(x))))


def test_adain():
    layer, x, z = eem.AdaIN(7, **F64), rand(2, 4, 4, 3), rand(2, 5, seed=2)
    v = init(layer, x, z)
    close(layer.apply(v, x, z), nhwc(np_adain(nchw(x), z, v["params"])))


def test_eem():
    layer, x, z = eem.EEM(style_dim=5, hidden=7, **F64), rand(2, 4, 4, 3), rand(2, 5, seed=2)
    v = init(layer, x, z)
    p = v["params"]
    assert set(p) == {"conv2", "norm2"}
    c2 = np_conv2d(nchw(x), oihw(p["conv2"]["weight"]), p["conv2"]["bias"], 1, 1)
    close(layer.apply(v, x, z), nhwc(np_adain(c2, z, p["norm2"]) + nchw(x)))
    # conv1/norm1 (dead in the official forward) are kept in `unused` with the official shapes.
    shapes = jax.tree_util.tree_map(np.shape, v["unused"])
    assert shapes == {"conv1": {"weight": (3, 3, 3, 3), "bias": (3,)},
                      "norm1": {"mlp_shared": {"weight": (5, 7), "bias": (7,)},
                                "mlp_gamma": {"weight": (7, 3), "bias": (3,)},
                                "mlp_beta": {"weight": (7, 3), "bias": (3,)}}}
    ref = layer.apply(v, x, z)
    poked = dict(v, unused=jax.tree_util.tree_map(lambda a: a + 5.0, v["unused"]))
    np.testing.assert_array_equal(layer.apply(poked, x, z), ref)
    poked = dict(v, params=jax.tree_util.tree_map(lambda a: a + 0.1, v["params"]))
    assert np.abs(layer.apply(poked, x, z) - ref).max() > 1e-3
    # z None: identity, and init still creates the same variables.
    np.testing.assert_array_equal(layer.apply(v, x, None), x)
    v0 = jax.eval_shape(lambda key: layer.init(key, x, None), jax.random.PRNGKey(0))
    assert jax.tree_util.tree_map(np.shape, v0) == jax.tree_util.tree_map(np.shape, v)


def _bn_variables(c, seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"weight": jnp.asarray(rng.normal(size=c)), "bias": jnp.asarray(rng.normal(size=c))},
            "batch_stats": {"mean": jnp.asarray(rng.normal(size=c)), "var": jnp.asarray(rng.uniform(0.5, 2, c))}}


def test_batchnorm_eval():
    layer, x = norm.BatchNorm(**F64), rand(3, 4, 5, 6, scale=2.0)
    v0 = real_init(layer, x)
    np.testing.assert_array_equal(v0["batch_stats"]["var"], np.ones(6))
    np.testing.assert_array_equal(v0["batch_stats"]["mean"], np.zeros(6))
    v = _bn_variables(6)
    p, s = v["params"], v["batch_stats"]
    ref = (nchw(x) - chan(s["mean"])) / np.sqrt(chan(s["var"]) + 1e-5) * chan(p["weight"]) + chan(p["bias"])
    close(layer.apply(v, x), nhwc(ref))


def test_batchnorm_train_updates_running_stats_like_torch():
    layer, x = norm.BatchNorm(**F64), rand(3, 4, 5, 6, scale=2.0) + 1.0
    v = _bn_variables(6)
    got, updates = layer.apply(v, x, train=True, mutable=["batch_stats"])
    xt = nchw(x)
    mean, var = xt.mean((0, 2, 3)), xt.var((0, 2, 3))  # biased: used to normalise
    p = v["params"]
    ref = (xt - chan(mean)) / np.sqrt(chan(var) + 1e-5) * chan(p["weight"]) + chan(p["bias"])
    close(got, nhwc(ref))
    n = 3 * 4 * 5
    close(updates["batch_stats"]["mean"], 0.9 * np.asarray(v["batch_stats"]["mean"]) + 0.1 * mean)
    close(updates["batch_stats"]["var"], 0.9 * np.asarray(v["batch_stats"]["var"]) + 0.1 * var * n / (n - 1))
