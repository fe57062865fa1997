"""Inference compositions: source caching, drivers, smoothing, predefined emotions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edtalk_jax import inference
from edtalk_jax.models import build_model

CFG = dict(size=32, width_div=16, style_dim=64, lip_dim=4, pose_dim=2, exp_dim=3)


@pytest.fixture(scope="module")
def model_and_vars():
    model = build_model("generator", CFG)
    x = jnp.zeros((2, 32, 32, 3))
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), x, x)


def test_drive_equals_self_reconstruction(model_and_vars):
    model, v = model_and_vars
    r = np.random.RandomState(0)
    src, drv = (jnp.asarray(r.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32) for _ in range(2))
    full = model.apply(v, src, drv)
    source = inference.encode_source(model, v, src)
    out = inference.drive(model, v, source, lip_img=drv, pose_img=drv, exp_img=drv)
    np.testing.assert_allclose(out["image"], full["image"], atol=1e-6)
    # coefficients given directly reproduce the image-driven result
    out2 = inference.drive(model, v, source, lip_alpha=out["alphas"]["lip"], pose_img=drv,
                           exp_alpha=out["alphas"]["exp"])
    np.testing.assert_allclose(out2["image"], out["image"], atol=1e-6)


def test_drive_rejects_ambiguous_or_unknown_drivers(model_and_vars):
    model, v = model_and_vars
    x = jnp.zeros((1, 32, 32, 3))
    source = inference.encode_source(model, v, x)
    with pytest.raises(ValueError, match="exactly one of lip_img and lip_alpha"):
        inference.drive(model, v, source, pose_img=x, exp_img=x)
    with pytest.raises(ValueError, match="unknown drivers"):
        inference.drive(model, v, source, lip_img=x, pose_img=x, exp_img=x, eye_img=x)


def test_smooth_coefficients_matches_official_conv_feat():
    a = np.random.RandomState(1).randn(2, 7, 5).astype(np.float32)
    k = inference.SMOOTH_KERNEL
    padded = np.pad(a, ((0, 0), (1, 1), (0, 0)))
    ref = np.stack([sum(k[j] * padded[:, i + j] for j in range(3)) for i in range(7)], axis=1)
    np.testing.assert_allclose(inference.smooth_coefficients(jnp.asarray(a)), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(k, [0.27406862, 0.45186276, 0.27406862])  # normalised Gaussian sigma 1
    assert abs(k.sum() - 1) < 1e-6


def test_predefined_emotions_are_the_official_vectors(samples_dir):
    emotions = inference.predefined_emotions()
    files = sorted((samples_dir / "predefined_exp_weights").glob("*.npy"))
    assert sorted(emotions) == [f.stem for f in files]
    for f in files:
        np.testing.assert_array_equal(emotions[f.stem], np.load(f)[0])
