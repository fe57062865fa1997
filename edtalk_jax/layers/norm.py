"""Normalisation with PyTorch semantics; statistics always in (at least) float32."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def _stat_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def instance_norm(x, eps: float = 1e-5):
    """InstanceNorm2d(affine=False): per sample and channel, biased variance (NHWC)."""
    y = x.astype(_stat_dtype(x.dtype))
    mean = jnp.mean(y, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(y - mean), axis=(1, 2), keepdims=True)
    return ((y - mean) / jnp.sqrt(var + eps)).astype(x.dtype)


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d over the last axis.

    Eval (`train=False`): (x - running_mean) / sqrt(running_var + eps) * weight + bias.
    Train: batch statistics (biased variance) normalise the input; the running statistics
    are updated torch-style (momentum 0.1, unbiased variance) in the mutable `batch_stats`.
    """
    momentum: float = 0.1
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = x.shape[-1]
        sdt = _stat_dtype(self.dtype)
        weight = self.param("weight", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype))
        if self.is_initializing():  # exported as torch's num_batches_tracked
            self.variable("unused", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        y = x.astype(sdt)
        axes = tuple(range(x.ndim - 1))
        if train:
            mean = jnp.mean(y, axis=axes)
            var = jnp.mean(jnp.square(y - mean), axis=axes)
            if not self.is_initializing():
                n = y.size // c
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(self.param_dtype)
                ra_var.value = ((1 - m) * ra_var.value + m * unbiased).astype(self.param_dtype)
        else:
            mean, var = ra_mean.value.astype(sdt), ra_var.value.astype(sdt)
        out = (y - mean) / jnp.sqrt(var + self.eps) * weight.astype(sdt) + bias.astype(sdt)
        return out.astype(self.dtype)
