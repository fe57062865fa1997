"""Losses against numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import losses


def test_perceptual_loss_matches_numpy_and_stops_target_gradient():
    r = np.random.RandomState(0)
    shapes = [(2, 8, 8, 4), (2, 4, 4, 8), (2, 2, 2, 8), (2, 1, 1, 16), (2, 1, 1, 16)]
    pred = tuple(tuple(r.randn(*s).astype(np.float32) for s in shapes) for _ in range(2))
    target = tuple(tuple(r.randn(*s).astype(np.float32) for s in shapes) for _ in range(2))
    ref = sum(10 * np.abs(p - t).mean(axis=(1, 2, 3)) for ps, ts in zip(pred, target) for p, t in zip(ps, ts))
    np.testing.assert_allclose(losses.perceptual_loss(pred, target), ref, rtol=1e-5)
    g = jax.grad(lambda t: losses.perceptual_loss(pred, t).sum())(target)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(g))


def test_orthogonality_loss_is_reexported_and_matches_numpy():
    b = np.random.RandomState(1).randn(16, 5).astype(np.float32)
    ref = np.sum((b.T @ b - np.eye(5)) ** 2)
    np.testing.assert_allclose(losses.orthogonality_loss(jnp.asarray(b)), ref, rtol=1e-5)
