"""Inference compositions: source caching, drivers, smoothing, predefined emotions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edtalk_jax import inference
from edtalk_jax.layers import modulated, warp
from edtalk_jax.models import build_model, example_inputs

CFG = dict(size=32, width_div=16, style_dim=64, lip_dim=4, pose_dim=2, exp_dim=3)


@pytest.fixture(scope="module")
def model_and_vars():
    model = build_model("generator", CFG)
    x = jnp.zeros((2, 32, 32, 3))
    return model, jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, x)  # rbg: compiles in seconds


@pytest.fixture(scope="module")
def lip_pose_and_vars():
    """A lip-pose generator (exp_dim 0, no EEMs) with N(0, 1) weights: shapes from
    eval_shape, so no init compile (the equalized layers scale N(0, 1) weights anyway)."""
    cfg = dict(CFG, exp_dim=0)
    model = build_model("lip_pose", cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_inputs("lip_pose", cfg))
    rng = np.random.default_rng(0)
    return model, jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def _images(seed, *batches):
    r = np.random.RandomState(seed)
    return [jnp.asarray(r.uniform(-1, 1, (b, 32, 32, 3)), jnp.float32) for b in batches]


def _render(model):
    """jitted (variables, source image, drivers dict) -> drive's image."""
    return jax.jit(lambda v, src, d: inference.drive(model, v, inference.encode_source(model, v, src), **d)["image"])


def _count(jaxpr, primitive: str) -> int:
    """Occurrences of `primitive` in a jaxpr, nested jaxprs (pjit, custom_vjp, ...) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == primitive
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    n += _count(sub, primitive)
    return n


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
    source = {"latent": jnp.zeros((2, CFG["style_dim"])), "feats": ()}  # every check precedes decode
    alphas = {f"{p}_alpha": jnp.zeros((3, CFG[f"{p}_dim"])) for p in ("lip", "pose", "exp")}
    with pytest.raises(ValueError, match="nothing drives lip: give lip_img, lip_alpha or img"):
        inference.drive(model, v, source, pose_img=x, exp_img=x)
    with pytest.raises(ValueError, match="at most one of lip_img and lip_alpha"):
        inference.drive(model, v, source, lip_img=x, **alphas)
    with pytest.raises(ValueError, match="unknown drivers"):
        inference.drive(model, v, source, lip_img=x, pose_img=x, exp_img=x, eye_img=x)
    with pytest.raises(ValueError, match="img drives no part"):
        inference.drive(model, v, source, img=x, **alphas)
    with pytest.raises(ValueError, match="batch sizes differ"):
        inference.drive(model, v, source, **alphas)  # source 2, drivers 3


@pytest.mark.parametrize("kind", ["lip_pose", "generator"])
def test_one_source_drives_a_batch(kind, lip_pose_and_vars, model_and_vars, monkeypatch):
    """One encoded source face (batch 1) and 3 driving frames: the same images as driving
    each frame alone (the lip-pose model has no EEM that would broadcast the features)."""
    model, v = lip_pose_and_vars if kind == "lip_pose" else model_and_vars
    src, lip, pose = _images(1, 1, 3, 3)
    render = _render(model)
    drivers = dict(lip_img=lip, pose_img=pose)
    if model.exp_dim:
        drivers["exp_alpha"] = jnp.linspace(-1, 1, model.exp_dim)  # (K,): one vector for every frame
    out = render(v, src, drivers)
    assert out.shape == (3, 32, 32, 3)
    per_frame = [render(v, src, {k: a if k == "exp_alpha" else a[i:i + 1] for k, a in drivers.items()})
                 for i in range(3)]
    # The flow warp amplifies float32 rounding of batch-size-dependent kernels (max ~1e-4
    # at 32^2 for the generator; in float64 the two agree to 2e-13).
    np.testing.assert_allclose(out, jnp.concatenate(per_frame), rtol=0, atol=1e-3)
    assert np.abs(out[0] - out[1]).max() > 1e-3  # the frames differ: not one frame broadcast
    # The source features reach every warp at the drivers' batch, so a warp that needs equal
    # batches (the reference one, which reshapes by the feature batch) works too.
    monkeypatch.setattr(modulated, "grid_sample", warp.reference_grid_sample)
    assert jax.eval_shape(_render(model), v, src, drivers).shape == (3, 32, 32, 3)


def test_shared_driver_is_encoded_once(model_and_vars):
    model, v = model_and_vars
    src, frames = _images(2, 1, 2)
    render = _render(model)
    convs = lambda d: _count(jax.make_jaxpr(render)(v, src, d).jaxpr, "conv_general_dilated")
    encoder = _count(jax.make_jaxpr(lambda x: inference.encode_source(model, v, x))(frames).jaxpr,
                     "conv_general_dilated")
    alphas = {f"{p}_alpha": jnp.zeros((2, CFG[f"{p}_dim"])) for p in ("lip", "pose", "exp")}
    base = convs(alphas)  # source encoder + decoder
    assert encoder > 0
    assert convs({"img": frames}) == base + encoder  # lip, pose and exp from one encoder pass
    assert convs({"lip_alpha": alphas["lip_alpha"], "img": frames}) == base + encoder
    unshared = dict(lip_img=frames, pose_img=frames, exp_img=frames)
    assert convs(unshared) == base + 3 * encoder  # no deduplication by object identity
    np.testing.assert_allclose(render(v, src, {"img": frames}), render(v, src, unshared), rtol=0, atol=1e-6)


def test_coefficient_fn_chunks_and_compiles_once(lip_pose_and_vars):
    model, v = lip_pose_and_vars
    bs = 4
    fn = inference.coefficient_fn(model, v, ("lip", "pose"), batch_size=bs)
    (frames,) = _images(3, 3 * bs + 2)
    frames = np.asarray(frames)
    single = [fn(frames[i:i + 1]) for i in range(len(frames))]
    for n in (1, bs, bs + 1, 3 * bs + 2):
        out = fn(frames[:n])
        for k in ("lip", "pose"):
            assert out[k].shape == (n, CFG[f"{k}_dim"])
            np.testing.assert_allclose(out[k], np.concatenate([s[k] for s in single[:n]]), rtol=1e-6, atol=1e-6)
    assert fn(frames[:0])["lip"].shape == (0, CFG["lip_dim"])
    assert fn.jitted._cache_size() == 1  # one program for every length
    # The weights are arguments, not HLO constants: the program text is far smaller than them.
    weight_bytes = sum(a.nbytes for a in jax.tree.leaves(v))
    assert len(fn.jitted.lower(v, frames[:bs]).as_text()) < weight_bytes / 4


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
