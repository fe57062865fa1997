"""Models: motion bank (QR and free bases, orthogonality loss), the VGG perceptual pyramid,
the discriminator end to end, the dtype policy (bf16 compute, float32 params) and sizes.

The numpy references of the layers come from layers_test (NCHW, torch semantics). Model
parameters are shaped by an abstract `init` (jax.eval_shape runs the same Python code,
dtype logic included, without compiling the random initialisers) and applies are jitted:
both keep this file fast on a 2-core CPU.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edtalk_jax.models import Audio2Lip, Discriminator, Generator, PerceptualNetwork, channel_table
from edtalk_jax.models import motion_bank, vgg
from layers_test import (chan, close, nchw, np_conv2d, np_conv_layer, np_equal_linear, np_minibatch_stddev, oihw,
                         real_init, rand)

KEY = jax.random.PRNGKey(0)


def shapes(module, *args):
    return jax.eval_shape(lambda key: module.init(key, *args), KEY)


def fast_jit(fn):
    """jit with XLA's cheap CPU compile settings: the smoke tests below only check shapes,
    dtypes and finiteness, and compiling dominates their runtime."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0,
                                         "xla_llvm_disable_expensive_passes": True})


def fill(tree, seed=0, fan_in_scaled=False):
    """Random values with the abstract tree's shapes and dtypes (floats N(0, 1), or
    N(0, 1/fan_in) for >=2-d leaves with `fan_in_scaled`; ints zero)."""
    rng = np.random.default_rng(seed)

    def leaf(a):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return jnp.zeros(a.shape, a.dtype)
        scale = 1 / math.sqrt(np.prod(a.shape[:-1])) if fan_in_scaled and len(a.shape) >= 2 else 1.0
        return jnp.asarray(rng.normal(size=a.shape) * scale, a.dtype)
    return jax.tree_util.tree_map(leaf, tree)


def alphas(batch=3, exp=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {"lip": rng.normal(size=(batch, 20)), "pose": rng.normal(size=(batch, 6))}
    if exp:
        out["exp"] = rng.normal(size=(batch, 10))
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


# ------------------------------------------------------------------ motion bank

def test_qr_bases_are_orthonormal_and_nested():
    bank = motion_bank.MotionBank()
    v = fill(shapes(bank, alphas()))  # N(0, 1), the official init
    q36 = np.asarray(bank.apply(v, True, method=bank.bases))
    q26 = np.asarray(bank.apply(v, False, method=bank.bases))
    assert q36.shape == (512, 36) and q26.shape == (512, 26) and q36.dtype == q26.dtype == np.float32
    for q in (q36, q26):
        assert np.abs(q.T @ q - np.eye(q.shape[1])).max() <= 1e-6
    assert np.abs(q36[:, :26] - q26).max() <= 1e-6  # Householder QR keeps the lip/pose bases
    assert np.abs(q26.T @ q36[:, 26:]).max() <= 1e-6  # expression orthogonal to lip/pose
    # LAPACK's column signs (torch.qr's), from W + 1e-8 as official.
    w = np.concatenate([v["params"]["lipnonlip"], v["params"]["exp"]], -1).astype(np.float64)
    assert np.abs(q36 - np.linalg.qr(w + 1e-8)[0]).max() <= 1e-5


@pytest.mark.parametrize("exp", [True, False])
def test_bank_offset_and_parts(exp):
    bank = motion_bank.MotionBank(exp_dim=10 if exp else 0)
    a = alphas(exp=exp)
    v = fill(shapes(bank, a))
    q = np.asarray(bank.apply(v, method=bank.bases), np.float64)
    out = {k: np.asarray(o, np.float64) for k, o in bank.apply(v, a).items()}
    names = ("lip", "pose", "exp") if exp else ("lip", "pose")
    assert sorted(out) == sorted(names + ("offset",))
    alpha = np.concatenate([np.asarray(a[n], np.float64) for n in names], -1)
    np.testing.assert_allclose(out["offset"], alpha @ q.T, atol=1e-5)  # official diag_embed(alpha) @ Q^T summed
    start = 0
    for n in names:
        d = a[n].shape[1]
        np.testing.assert_allclose(out[n], alpha[:, start:start + d] @ q[:, start:start + d].T, atol=1e-5)
        start += d
    np.testing.assert_allclose(sum(out[n] for n in names), out["offset"], atol=1e-5)
    with pytest.raises(ValueError, match="missing"):
        bank.apply(v, {"lip": a["lip"]})


def test_orthogonality_loss_value_and_gradient():
    with jax.enable_x64(True):
        b = rand(12, 5, seed=3) * 0.4
        ref = np.sum((b.T @ b - np.eye(5)) ** 2)
        close(motion_bank.orthogonality_loss(jnp.asarray(b)), np.asarray(ref))
        grad = np.asarray(jax.grad(motion_bank.orthogonality_loss)(jnp.asarray(b)))
        close(grad, 4 * b @ (b.T @ b - np.eye(5)))
        loss = lambda m: np.sum((m.T @ m - np.eye(5)) ** 2)
        e = np.zeros_like(b)
        e[2, 3] = 1e-6
        assert abs(grad[2, 3] - (loss(b + e) - loss(b - e)) / 2e-6) <= 1e-6  # finite difference


@pytest.mark.parametrize("exp_dim", [10, 0])
def test_free_bank(exp_dim):
    bank = motion_bank.MotionBank(exp_dim=exp_dim, mode="free")
    a = alphas(exp=exp_dim > 0)
    v = real_init(bank, a)
    names = ("lipnonlip", "exp") if exp_dim else ("lipnonlip",)
    w = np.concatenate([np.asarray(v["params"][n]) for n in names], -1)
    np.testing.assert_array_equal(bank.apply(v, method=bank.bases), w)  # the bases are W itself
    assert float(bank.apply(v, method=bank.orthogonality)) <= 1e-5  # starts orthonormal, within and across banks
    moved = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.asarray(rand(*x.shape, seed=5), x.dtype), v)
    wm = np.concatenate([np.asarray(moved["params"][n], np.float64) for n in names], -1)
    loss = float(bank.apply(moved, method=bank.orthogonality))
    assert loss > 0.1
    np.testing.assert_allclose(loss, np.sum((wm.T @ wm - np.eye(wm.shape[1])) ** 2), rtol=1e-4)
    np.testing.assert_allclose(bank.apply(moved, a)["offset"],
                               np.concatenate([np.asarray(a[n]) for n in a], -1) @ wm.T, atol=1e-4)


def test_invalid_bank_mode():
    with pytest.raises(ValueError, match="bank mode"):
        shapes(motion_bank.MotionBank(mode="svd"), alphas())


# ------------------------------------------------------------------ VGG pyramid

def fomm_kernel(scale):
    """FOMM AntiAliasInterpolation2d: product of 1-d Gaussians on a float32 meshgrid, normalised."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    kernel = 1
    for m in np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij"):
        kernel = kernel * np.exp(-(m - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


@pytest.mark.parametrize("scale,size", [(0.5, 5), (0.25, 13), (0.125, 29)])
def test_gaussian_kernel(scale, size):
    k = vgg.gaussian_kernel(scale)
    assert k.shape == (size, size) and k.dtype == np.float32
    np.testing.assert_allclose(k, fomm_kernel(scale), rtol=1e-6, atol=1e-9)


def np_anti_alias(x, scale):
    """NCHW: zero pad (ka, kb), depthwise conv with the FOMM kernel, keep every 1/scale-th pixel."""
    if scale == 1.0:
        return x
    k = fomm_kernel(scale).astype(np.float64)
    ka = k.shape[0] // 2
    kb = ka - 1 if k.shape[0] % 2 == 0 else ka
    x = np.pad(x, ((0, 0), (0, 0), (ka, kb), (ka, kb)))
    c = x.shape[1]
    out = np_conv2d(x, np.broadcast_to(k, (c, 1) + k.shape), groups=c)
    return out[:, :, ::int(1 / scale), ::int(1 / scale)]


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.125])
def test_anti_alias_downsample(scale):
    with jax.enable_x64(True):
        x = rand(2, 16, 16, 2)
        got = vgg.anti_alias_downsample(jnp.asarray(x), scale)
        close(got, np_anti_alias(nchw(x), scale).transpose(0, 2, 3, 1), tol=1e-6)  # float32 kernel



@pytest.mark.parametrize("scale,h,w", [(0.5, 16, 16), (0.25, 12, 17), (0.125, 16, 16), (0.125, 21, 9)])
def test_anti_alias_downsample_dots_match_depthwise_conv(scale, h, w):
    """The CPU path (selection + banded-matrix dots) against the depthwise conv it replaces
    (values and VJP, float64), odd sizes included."""
    with jax.enable_x64(True):
        x = jnp.asarray(rand(2, h, w, 3))
        k = vgg.gaussian_kernel(scale)
        ka = k.shape[0] // 2
        kb = ka - 1 if k.shape[0] % 2 == 0 else ka
        step = int(1 / scale)

        def ref(x):
            wt = jnp.broadcast_to(jnp.asarray(k, x.dtype)[:, :, None, None], k.shape + (1, 3))
            out = jax.lax.conv_general_dilated(x, wt, (1, 1), ((ka, kb), (ka, kb)),
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)
            return out[:, ::step, ::step]
        f = lambda x: vgg._blur_subsample_dots(x, k, (ka, kb), step)
        y, vjp = jax.vjp(f, x)
        y_ref, vjp_ref = jax.vjp(ref, x)
        close(y, np.asarray(y_ref), tol=1e-12)
        dy = jnp.asarray(rand(*y.shape, seed=5))
        close(vjp(dy)[0], np.asarray(vjp_ref(dy)[0]), tol=1e-12)


# torchvision vgg19 (cfg "E") `features`, and the official slices relu1_1 ... relu5_1.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))


def np_vgg19(img, params):
    x = (np.clip(img, -1, 1) + 1) / 2
    x = (x - chan([0.485, 0.456, 0.406])) / chan([0.229, 0.224, 0.225])
    layers = []
    for v in VGG19_CFG:
        layers += ["M"] if v == "M" else ["conv", "relu"]
    feats = []
    for start, end in SLICES:
        for i in range(start, end):
            if layers[i] == "conv":
                p = params[f"features_{i}"]
                x = np_conv2d(x, oihw(p["weight"]), p["bias"], 1, 1)
            elif layers[i] == "relu":
                x = np.maximum(x, 0)
            else:
                n, c, h, w = x.shape
                x = x.reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))
        feats.append(x)
    return feats


def test_perceptual_network_matches_numpy_vgg19():
    with jax.enable_x64(True):
        net = PerceptualNetwork(scales=(1.0, 0.5), dtype=jnp.float64, param_dtype=jnp.float64)
        img = rand(1, 32, 32, 3, scale=0.8)
        img[0, :4] = 1.7  # outside [-1, 1]: the clamp matters
        v = fill(shapes(net, img), fan_in_scaled=True)
        got = jax.jit(net.apply)(v, img)
        assert len(got) == 2 and all(len(f) == 5 for f in got)
        for scale, feats in zip((1.0, 0.5), got):
            ref = np_vgg19(np_anti_alias(nchw(img), scale), v["params"]["vgg"])
            for g, r in zip(feats, ref):
                close(g, r.transpose(0, 2, 3, 1), tol=1e-6)


# ------------------------------------------------------------------ discriminator

def test_discriminator_matches_numpy_reference():
    with jax.enable_x64(True):
        model = Discriminator(16, channel_table(16, channels=(6, 5, 4)), dtype=jnp.float64, param_dtype=jnp.float64)
        x = rand(4, 16, 16, 3)
        v = fill(shapes(model, x), fan_in_scaled=False)
        p = v["params"]
        h = np_conv_layer(nchw(x), p["convs_0"], 1)
        for i in (1, 2):
            pi = p[f"convs_{i}"]
            out = np_conv_layer(np_conv_layer(h, pi["conv1"], 3), pi["conv2"], 3, downsample=True)
            h = (out + np_conv_layer(h, pi["skip"], 1, downsample=True, activate=False)) / math.sqrt(2)
        h = np_conv_layer(np_minibatch_stddev(h), p["final_conv"], 3)  # (B, 6, 4, 4)

        def head(flat):
            return np_equal_linear(np_equal_linear(flat, p["final_linear_0"], activation=True), p["final_linear_1"])
        got = np.asarray(jax.jit(model.apply)(v, x))
        close(got, head(h.reshape(4, -1)), tol=1e-8)  # torch's (C, H, W) flatten
        assert np.abs(got - head(h.transpose(0, 2, 3, 1).reshape(4, -1))).max() > 1e-3  # an HWC flatten differs


# ------------------------------------------------------------------ dtype policy and sizes

def tiny_generator(size, exp_dim=10, dtype=jnp.float32):
    channels = channel_table(size, channels=(8,) * (int(math.log2(size)) - 1))
    return Generator(size, channels, style_dim=64, exp_dim=exp_dim, dtype=dtype)


def assert_float32_params(variables):
    dtypes = {jax.tree_util.keystr(k): a.dtype for k, a in jax.tree_util.tree_leaves_with_path(variables["params"])}
    wrong = {k: d for k, d in dtypes.items() if d != jnp.float32}
    assert dtypes and not wrong, wrong


def assert_finite(tree):
    for a in jax.tree_util.tree_leaves(tree):
        assert np.all(np.isfinite(np.asarray(a, np.float32)))


@pytest.mark.parametrize("exp_dim", [10, 0])
def test_generator_bf16_keeps_float32_params(exp_dim):
    model = tiny_generator(32, exp_dim, jnp.bfloat16)
    x = jnp.asarray(rand(2, 32, 32, 3, scale=0.5), jnp.float32)
    abstract = shapes(model, x, x)
    assert_float32_params(abstract)
    v = fill(abstract, fan_in_scaled=True)
    out = fast_jit(model.apply)(v, x, x)
    assert out["image"].shape == (2, 32, 32, 3) and out["image"].dtype == jnp.bfloat16
    assert_finite(out)
    # Bases (QR) and the motion offset stay float32 under bf16 compute.
    q = model.apply(v, method=model.bases)
    assert q.dtype == jnp.float32 and out["motion"]["offset"].dtype == jnp.float32
    bank = v["params"]["bank"]
    w = np.concatenate([bank["lipnonlip"]] + ([bank["exp"]] if exp_dim else []), -1).astype(np.float64)
    assert np.abs(q - np.linalg.qr(w + 1e-8)[0]).max() <= 1e-5


def test_discriminator_audio2lip_vgg_bf16_keep_float32_params():
    runs = [(Discriminator(32, channel_table(32, channels=(8,) * 4), dtype=jnp.bfloat16), (4, 32, 32, 3), (4, 1)),
            (Audio2Lip(dtype=jnp.bfloat16), (2, 80, 16), (2, 20)),
            (PerceptualNetwork(scales=(1.0, 0.5), dtype=jnp.bfloat16), (1, 32, 32, 3), None)]
    for model, in_shape, out_shape in runs:
        x = jnp.asarray(rand(*in_shape), jnp.float32)
        abstract = shapes(model, x)
        assert_float32_params(abstract)
        v = fill(abstract, fan_in_scaled=True)
        if "batch_stats" in v:  # running variances must be positive
            v["batch_stats"] = jax.tree_util.tree_map(jnp.abs, v["batch_stats"])
        out = fast_jit(model.apply)(v, x)
        assert_finite(out)
        assert all(a.dtype == jnp.bfloat16 for a in jax.tree_util.tree_leaves(out))
        if out_shape:
            assert out.shape == out_shape
        if isinstance(model, Audio2Lip):
            a2l = model, v, x
    # Audio2Lip training mode: the BatchNorm statistics are updated in float32.
    model, v, x = a2l
    _, upd = fast_jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(upd))
    assert_finite(upd)


@pytest.mark.parametrize("size", [64, 128])
def test_generator_sizes(size):
    model = tiny_generator(size, exp_dim=0)
    x = jnp.asarray(rand(1, size, size, 3, scale=0.5), jnp.float32)
    v = fill(shapes(model, x, x), fan_in_scaled=True)
    out = fast_jit(model.apply)(v, x, x)
    levels = int(math.log2(size)) - 2
    assert out["image"].shape == (1, size, size, 3)
    assert [f.shape[1] for f in out["flows"]] == [8 * 2 ** i for i in range(levels)]
    assert_finite(out)


def test_size_errors():
    with pytest.raises(ValueError, match="power of two"):
        shapes(Generator(48, (8, 8, 8, 8)), jnp.zeros((1, 48, 48, 3)), jnp.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match="power of two"):
        channel_table(48)
    with pytest.raises(ValueError, match="channels must list 5 widths"):
        channel_table(64, channels=(8, 8, 8))
    assert channel_table(256) == (512, 512, 512, 512, 256, 128, 64)
    assert channel_table(64, 8) == (64, 64, 64, 64, 32)


@pytest.mark.parametrize("size", [256, 512])
def test_official_widths_at_large_sizes_trace(size):
    """The official channel table (full widths) at 256² and 512², traced without compute:
    every level's shapes line up and the image has the requested size."""
    model = Generator(size, channel_table(size))
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, x)
    out = jax.eval_shape(model.apply, variables, x, x)
    assert out["image"].shape == (1, size, size, 3)
    assert variables["params"]["enc"]["convs_0"]["conv"]["weight"].shape == (1, 1, 3, channel_table(size)[-1])
