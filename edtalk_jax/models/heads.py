"""Latent navigation heads (the paper's MLN/PLN/ELN): affine MLPs of EqualLinear layers.

The official MLPs have no activation, so each head is an affine map of the latent; they
are evaluated layer by layer (folding them would round differently).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from edtalk_jax.layers.equalized import EqualLinear

Dtype = Any


class EqualMLP(nn.Module):
    features: Sequence[int]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = EqualLinear(f, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x)
        return x
