"""Pure loss functions (no weights inside; the training step weights and reduces them).

Per-example where the official loss is per-example; the caller averages over the batch.
"""

import jax
import jax.numpy as jnp

from edtalk_jax.models.motion_bank import orthogonality_loss  # noqa: F401  (re-exported)

# The official VGGLoss weights every relu*_1 slice by 10 at every pyramid scale.
PERCEPTUAL_LAYER_WEIGHTS = (10.0, 10.0, 10.0, 10.0, 10.0)


def perceptual_loss(feats_pred, feats_target, layer_weights=PERCEPTUAL_LAYER_WEIGHTS):
    """Official VGG pyramid loss per example: the sum over scales and relu*_1 layers of
    weight * mean |phi(pred) - phi(target)|; target features get no gradient.

    feats_*: PerceptualNetwork outputs (a tuple over scales of 5 maps (B, h, w, c)).
    Returns (B,); the official loss is its batch mean.
    """
    total = 0.0
    for scale_pred, scale_target in zip(feats_pred, feats_target):
        for w, p, t in zip(layer_weights, scale_pred, scale_target):
            diff = jnp.abs(p.astype(jnp.float32) - jax.lax.stop_gradient(t).astype(jnp.float32))
            total = total + w * jnp.mean(diff, axis=(1, 2, 3))
    return total
