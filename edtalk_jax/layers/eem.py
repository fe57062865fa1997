"""EEM, the Emotion Enhancement Module (official `EEM` / `FineADAINResBlock2d`).

Official forward: dx = actvn(norm1(conv1(x), z)); dx = norm2(conv2(x), z); return dx + x.
The first line's result is overwritten, so conv1/norm1 never affect the output (zero
gradient). Their weights are kept in the `unused` collection (created at init, filled by
the converter) so exports stay lossless, and they are not computed.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from edtalk_jax.layers.equalized import Conv2d, Linear
from edtalk_jax.layers.norm import instance_norm
from edtalk_jax.layers.unused import keep_unused

Dtype = Any


class AdaIN(nn.Module):
    """InstanceNorm(x) * (1 + gamma(z)) + beta(z), with a shared ReLU MLP (official ADAIN)."""
    hidden: int = 128
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, z):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        actv = jax.nn.relu(Linear(self.hidden, name="mlp_shared", **kw)(z))
        gamma = Linear(c, name="mlp_gamma", **kw)(actv)[:, None, None, :]
        beta = Linear(c, name="mlp_beta", **kw)(actv)[:, None, None, :]
        return instance_norm(x) * (1 + gamma) + beta


class EEM(nn.Module):
    """x + AdaIN_z(conv2(x)); identity when z is None."""
    style_dim: int = 512
    hidden: int = 128
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, z: Optional[jnp.ndarray]):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        if self.is_initializing():
            self._init_dead_branch(x)
        conv2 = Conv2d(c, 3, padding=1, name="conv2", **kw)
        norm2 = AdaIN(self.hidden, name="norm2", **kw)
        if z is None:
            if self.is_initializing():  # still create the parameters
                norm2(conv2(x), jnp.zeros((x.shape[0], self.style_dim), self.dtype))
            return x
        return norm2(conv2(x), z) + x.astype(self.dtype)

    def _init_dead_branch(self, x):
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, parent=None)  # detached
        xs = jnp.zeros((1, 3, 3, c), self.dtype)
        keep_unused(self, "conv1", Conv2d(c, 3, padding=1, **kw), xs)
        keep_unused(self, "norm1", AdaIN(self.hidden, **kw), xs, jnp.zeros((1, self.style_dim), self.dtype))
