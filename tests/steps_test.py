"""The trainer's losses and their weighting (edtalk_jax/steps) against numpy.

Stub models (a linear discriminator, an Audio2Lip that reads the mel directly) keep the
numpy side short; the per-stage compute_losses run with every image term at 0, so no
generator is rendered.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stage2 as stage2_config
from configs import stage4 as stage4_config
from edtalk_jax import run_config, train
from edtalk_jax.models import build_model
from edtalk_jax.steps import common, stage2, stage4


class LinearD(nn.Module):
    """D(x) = <x, w> + b: its input gradient is w for every image, so R1 = ||w||^2."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))


class MelLips(nn.Module):
    """Audio2Lip stand-in: lips (B, T, L) = scale * mel[..., :L, 0]."""
    lip_dim: int = 3

    @nn.compact
    def __call__(self, mel, train: bool = False):
        return self.param("scale", nn.initializers.ones, ()) * mel[..., :self.lip_dim, 0]


def _ctx(weights=None, models=None, loss_cfg=None, config=None, sum_losses=(), compute_losses=None):
    return common.Context(
        name="test", models=models or {}, weights=weights or {}, loss_cfg=loss_cfg, config=config,
        compute_losses=compute_losses, image_keys=(), g_tx=None, d_tx=None, g_mask=None, d_mask=None,
        train_d=True, ema_decay=0.0, sum_losses=tuple(sum_losses))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _images(seed, n=3, s=8):
    return np.random.RandomState(seed).uniform(-1.2, 1.2, (n, s, s, 3)).astype(np.float32)


def test_l1_and_psnr_match_numpy():
    pred, target = _images(0), _images(1)
    np.testing.assert_allclose(common.l1(pred, target), np.abs(pred - target).mean(axis=(1, 2, 3)), rtol=1e-6)
    p, t = (np.clip(pred, -1, 1) + 1) / 2, (np.clip(target, -1, 1) + 1) / 2
    ref = -10 * np.log10(np.mean((p - t) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(common.psnr(pred, target), ref, rtol=1e-5)
    # identical images: capped by the 1e-10 floor, not infinite
    np.testing.assert_allclose(common.psnr(target, target), 100.0, rtol=1e-6)


def _linear_d(seed=0, s=8):
    d = LinearD()
    params = d.init(jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))["params"]
    w = np.asarray(params["Dense_0"]["kernel"])[:, 0]
    b = float(params["Dense_0"]["bias"][0])
    return d, params, w, b


def test_gan_g_loss_is_non_saturating_per_example_and_groups_average():
    d, params, w, b = _linear_d()
    ctx = _ctx(models={"dis": d})
    fake = _images(2, n=4)
    logits = fake.reshape(4, -1) @ w + b
    np.testing.assert_allclose(common.gan_g(ctx, params, fake), _softplus(-logits), rtol=1e-5)
    # two stacked sets of 2: each example averages its two images
    np.testing.assert_allclose(common.gan_g(ctx, params, fake, groups=2),
                               _softplus(-logits).reshape(2, 2).mean(axis=0), rtol=1e-5)


def _r1_cfg(gamma, every):
    return types.SimpleNamespace(r1=gamma, r1_every=every)


@pytest.mark.parametrize("step", [0, 1, 3, 4])
def test_d_loss_and_lazy_r1_match_numpy(step):
    d, params, w, b = _linear_d()
    real, fake = _images(3), _images(4)
    real_logits, fake_logits = real.reshape(3, -1) @ w + b, fake.reshape(3, -1) @ w + b
    base = _softplus(-real_logits).mean() + _softplus(fake_logits).mean()

    loss, m = common.d_loss_fn(_ctx(models={"dis": d}, loss_cfg=_r1_cfg(0.0, 4)), params, real, fake,
                               jnp.asarray(step))
    np.testing.assert_allclose(loss, base, rtol=1e-5)
    np.testing.assert_allclose(m["gan/d_real"], real_logits.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["gan/d_fake"], fake_logits.mean(), rtol=1e-5, atol=1e-6)
    assert "gan/r1" not in m  # off unless its weight is set

    gamma, every = 10.0, 4
    loss, m = common.d_loss_fn(_ctx(models={"dis": d}, loss_cfg=_r1_cfg(gamma, every)), params, real, fake,
                               jnp.asarray(step))
    penalty = float(np.sum(w.astype(np.float64) ** 2)) if step % every == 0 else 0.0
    np.testing.assert_allclose(m["gan/r1"], penalty, rtol=1e-5)
    np.testing.assert_allclose(loss, base + gamma / 2 * every * penalty, rtol=1e-5)


def test_d_loss_r1_is_the_squared_input_gradient_of_a_nonlinear_d():
    class TanhD(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnp.sum(jnp.tanh(x.reshape(x.shape[0], -1) * 0.7), axis=1, keepdims=True)

    real = _images(5)
    ctx = _ctx(models={"dis": TanhD()}, loss_cfg=_r1_cfg(2.0, 1))
    _, m = common.d_loss_fn(ctx, {}, real, _images(6), jnp.asarray(7))
    grad = 0.7 * (1 - np.tanh(0.7 * real.astype(np.float64)) ** 2)  # d/dx sum tanh(0.7 x)
    np.testing.assert_allclose(m["gan/r1"], np.mean(np.sum(grad.reshape(3, -1) ** 2, axis=1)), rtol=1e-5)


def _torch_cos(torch, x, y, eps=1e-8):
    return torch.nn.functional.cosine_similarity(torch.from_numpy(x), torch.from_numpy(y), dim=-1,
                                                 eps=eps).numpy()


def _numpy_cos(x, y, eps=1e-8):
    """torch.nn.functional.cosine_similarity: each norm clamped at eps."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    nx = np.maximum(np.linalg.norm(x, axis=-1), eps)
    ny = np.maximum(np.linalg.norm(y, axis=-1), eps)
    return np.sum(x * y, axis=-1) / (nx * ny)


def test_latent_consistency_is_exp_of_minus_torch_cosine(torch):
    r = np.random.RandomState(7)
    x = r.randn(5, 16).astype(np.float32)
    y = r.randn(5, 16).astype(np.float32)
    y[1] = -3 * x[1]  # opposite: exp(1)
    y[2] = 2 * x[2]  # same direction: exp(-1)
    x[3] = 0.0  # zero latent: cos 0 thanks to eps, exp(0) = 1
    x[4] *= 1e-10  # a norm below eps: clamped, so |cos| < 1
    got = np.asarray(stage2.latent_consistency(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(got, np.exp(-_numpy_cos(x, y)), rtol=1e-5)
    np.testing.assert_allclose(got, np.exp(-_torch_cos(torch, x, y)), rtol=1e-5)
    np.testing.assert_allclose(got[1:4], [np.e, 1 / np.e, 1.0], rtol=1e-5)
    assert 1 / np.e < got[4] < np.e


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_total_loss_weights_and_reduces_as_configured(reduction):
    """make_context reads loss.latent_reduction: the stage-2 latent terms are batch sums
    with "sum" (the official reduction) and means otherwise; every term is weighted by
    its config.loss field, and terms with weight 0 are reported but add nothing."""
    config = stage2_config.get_config("tiny")
    config.loss.update(l1=2.0, gan=0.0, latent_lip=0.5, latent_pose=3.0, latent_reduction=reduction)

    class FakeModels:
        def as_dict(self):
            return {}

    abstract = {"gen": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)},
                "dis": {"v": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    ctx = train.make_context(config, FakeModels(), abstract)
    r = np.random.RandomState(8)
    losses = {k: r.rand(4).astype(np.float32) for k in ("l1", "gan", "latent_lip", "latent_pose")}
    losses["ortho"] = np.float32(0.25)  # a parameter term: shape ()
    total, reduced = common.total_loss(ctx, {k: jnp.asarray(v) for k, v in losses.items()})
    red = np.sum if reduction == "sum" else np.mean
    want = {"l1": losses["l1"].mean(), "gan": losses["gan"].mean(), "latent_lip": red(losses["latent_lip"]),
            "latent_pose": red(losses["latent_pose"]), "ortho": 0.25}
    assert set(reduced) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(reduced[k], v, rtol=1e-6, err_msg=k)
    ref = 2.0 * want["l1"] + 0.5 * want["latent_lip"] + 3.0 * want["latent_pose"] + 1.0 * 0.25
    np.testing.assert_allclose(total, ref, rtol=1e-6)


def _bank_generator(mode, seed=0):
    """A lip-pose generator with only its bank initialised (random, non-orthogonal bases)."""
    config = stage2_config.get_config("tiny")
    config.model.update(size=16, channels=(8, 8, 8), style_dim=12, lip_dim=4, pose_dim=2, bank_mode=mode)
    gen = build_model("lip_pose", run_config.resolve_model(config))
    params = gen.init(jax.random.PRNGKey(seed), method=gen.orthogonality)["params"]
    raw = np.random.RandomState(seed).randn(12, 6).astype(np.float32)
    return gen, {"bank": {"lipnonlip": jnp.asarray(raw)}}, raw, set(params) == {"bank"}


@pytest.mark.parametrize("mode", ["qr", "free"])
def test_orthogonality_term_added_in_free_mode_and_logged_in_both(mode):
    gen, params, raw, only_bank = _bank_generator(mode)
    assert only_bank
    weight = 0.3
    ctx = _ctx(weights={"ortho": weight, "l1": 1.0}, models={"gen": gen})
    losses, scalars = common.ortho_terms(ctx, params)
    if mode == "free":  # the raw bases
        ref = np.sum((raw.T.astype(np.float64) @ raw - np.eye(6)) ** 2)
        np.testing.assert_allclose(scalars["bank/orthogonality_error"], ref, rtol=1e-5)
        assert set(losses) == {"ortho"}
        np.testing.assert_allclose(losses["ortho"], ref, rtol=1e-5)
        l1 = jnp.asarray([0.5, 1.5])
        total, reduced = common.total_loss(ctx, dict(losses, l1=l1))
        np.testing.assert_allclose(total, 1.0 + weight * ref, rtol=1e-5)
        np.testing.assert_allclose(reduced["ortho"], ref, rtol=1e-5)
    else:  # QR bases are orthonormal: logged (about 0), never a loss term
        assert losses == {}
        assert float(scalars["bank/orthogonality_error"]) < 1e-9
    # weight 0: logged, not a term
    losses0, scalars0 = common.ortho_terms(_ctx(weights={"ortho": 0.0}, models={"gen": gen}), params)
    assert losses0 == {} and "bank/orthogonality_error" in scalars0


def _stage4_batch(b=2, t=4, lip=3, seed=9):
    r = np.random.RandomState(seed)
    return {"mel": r.randn(b, t, 80, 16).astype(np.float32),
            "frames": r.uniform(-1, 1, (b, t, 8, 8, 3)).astype(np.float32),
            "identity": r.uniform(-1, 1, (b, 8, 8, 3)).astype(np.float32),
            "lip_targets": r.randn(b, t, lip).astype(np.float32),
            "pose_targets": r.randn(b, t, 6).astype(np.float32),
            "identity_lip": r.randn(b, lip).astype(np.float32),
            "mouth_boxes": np.tile(np.float32([1, 2, 6, 7]), (b, t, 1))}


def test_stage4_coefficient_and_smoothness_losses_match_numpy():
    config = stage4_config.get_config("tiny")
    weights = {"coeff": 1.0, "smooth": 0.1, "l1": 0.0, "perceptual": 0.0, "gan": 0.0, "mouth_l1": 0.0,
               "sync": 0.0}
    a2l = MelLips()
    variables = a2l.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 80, 16)))
    scale = 1.7
    params = {"audio2lip": {"scale": jnp.asarray(scale)}}
    ctx = _ctx(weights=weights, models={"gen": None, "audio2lip": a2l}, config=config)
    batch = _stage4_batch()
    out = stage4.compute_losses(ctx, params, {"audio2lip": {}}, {k: jnp.asarray(v) for k, v in batch.items()},
                                {}, train=True)
    lips = scale * batch["mel"][..., :3, 0].astype(np.float64)
    tgt = batch["lip_targets"].astype(np.float64)
    np.testing.assert_allclose(out.losses["coeff"], np.mean((lips - tgt) ** 2, axis=(1, 2)), rtol=1e-5)
    d = np.diff(lips, axis=1) - np.diff(tgt, axis=1)
    np.testing.assert_allclose(out.losses["smooth"], np.mean(d ** 2, axis=(1, 2)), rtol=1e-5)
    assert set(out.losses) == {"coeff", "smooth"} and out.recon is None  # training renders nothing
    np.testing.assert_allclose(out.scalars["stage4/lip_mse"], np.mean((lips - tgt) ** 2), rtol=1e-5)
    base = np.mean((tgt - tgt.mean(axis=(0, 1), keepdims=True)) ** 2)  # no lip_mean: the batch's
    np.testing.assert_allclose(out.scalars["stage4/mean_baseline_mse"], base, rtol=1e-5)
    motion = lambda x: x - x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out.scalars["stage4/lip_motion_mse"], np.mean((motion(lips) - motion(tgt)) ** 2),
                               rtol=1e-5)
    np.testing.assert_allclose(out.scalars["stage4/still_baseline_mse"], np.mean(motion(tgt) ** 2), rtol=1e-5)
    lip_mean = np.float32([0.3, -0.2, 0.1])  # the trainer's: the training split's mean target
    out2 = stage4.compute_losses(ctx, params, {"audio2lip": {}}, {k: jnp.asarray(v) for k, v in batch.items()},
                                 {"lip_mean": jnp.asarray(lip_mean)}, train=True)
    np.testing.assert_allclose(out2.scalars["stage4/mean_baseline_mse"], np.mean((tgt - lip_mean) ** 2), rtol=1e-5)
    ident = batch["identity_lip"].astype(np.float64)[:, None]
    np.testing.assert_allclose(out.scalars["stage4/identity_baseline_mse"], np.mean((tgt - ident) ** 2), rtol=1e-5)
    assert set(variables["params"]) == {"scale"}
    # target="offset": the prediction is the identity frame's coefficients plus the output
    config.audio2lip.target = "offset"
    out3 = stage4.compute_losses(ctx, params, {"audio2lip": {}}, {k: jnp.asarray(v) for k, v in batch.items()},
                                 {}, train=True)
    np.testing.assert_allclose(out3.losses["coeff"], np.mean((ident + lips - tgt) ** 2, axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out3.losses["smooth"], out.losses["smooth"], rtol=1e-5)  # a constant shift


def _bilinear_zero_pad(img, py, px):
    """Bilinear sample of img (H, W, C) at pixel coordinates (py, px), taps outside = 0."""
    h, w, _ = img.shape
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    out = np.zeros(py.shape + (img.shape[-1],))
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = y0 + dy, x0 + dx
            wt = (1 - np.abs(py - yi)) * (1 - np.abs(px - xi))
            ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            tap = img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
            out += np.where(ok, wt, 0.0)[..., None] * tap
    return out


@pytest.mark.parametrize("side, crop", [(32, 12), (16, 8), (256, 96), (512, 96)])
def test_mouth_l1_crops_scale_with_the_frame(side, crop):
    """96x96 crops at 256² (official) and above, side * 96 / 256 below, at least 8."""
    r = np.random.RandomState(side)
    pred, target = (r.uniform(-1, 1, (2, side, side, 3)).astype(np.float32) for _ in range(2))
    boxes = np.float32([[side * 0.3, side * 0.5, side * 0.7, side * 0.9], [0, 0, side / 2, side / 2]])
    got = np.asarray(common.mouth_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(boxes)))
    t = np.linspace(0.0, 1.0, crop)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
        py, px = np.meshgrid(y1 + (y2 - y1) * t - 0.5, x1 + (x2 - x1) * t - 0.5, indexing="ij")
        ref = np.mean(np.abs(_bilinear_zero_pad(pred[i].astype(np.float64), py, px)
                             - _bilinear_zero_pad(target[i].astype(np.float64), py, px)))
        np.testing.assert_allclose(got[i], ref, rtol=1e-4)


def test_mouth_crop_matches_numpy_bilinear_sampling():
    """sg2im crop_bbox_batch: `size` points spread evenly from x1 to x2 (pixels), sampled
    like torch grid_sample(align_corners=False): pixel x is read at x - 0.5."""
    r = np.random.RandomState(10)
    n, h, w, size = 3, 12, 10, 7
    images = r.randn(n, h, w, 3).astype(np.float32)
    boxes = np.float32([[2, 3, 8, 9],  # inside
                        [0.5, 1.25, 4.75, 11.5],  # fractional
                        [-2, 6, 12, 14]])  # partly outside: zero padding
    got = np.asarray(common.crop_boxes(jnp.asarray(images), jnp.asarray(boxes), size=size))
    assert got.shape == (n, size, size, 3)
    t = np.linspace(0.0, 1.0, size)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
        xs, ys = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
        py, px = np.meshgrid(ys - 0.5, xs - 0.5, indexing="ij")
        np.testing.assert_allclose(got[i], _bilinear_zero_pad(images[i].astype(np.float64), py, px),
                                   rtol=1e-5, atol=1e-5, err_msg=f"box {i}")
