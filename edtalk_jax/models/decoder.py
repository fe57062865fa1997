"""The EDTalk decoder (official `Synthesis`, with EEM, and `Synthesis_lip_pose`, without).

A StyleGAN2 generator whose every level predicts a flow + mask that warps the source
image's encoder feature; the RGB image is built from the warped features only.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from edtalk_jax.layers.eem import EEM
from edtalk_jax.layers.modulated import ConstantInput, StyledConv, ToFlow, ToRGB
from edtalk_jax.layers.unused import keep_unused
from edtalk_jax.models.config import log2_size

Dtype = Any


class Decoder(nn.Module):
    size: int
    channels: Tuple[int, ...]  # for resolutions 4, 8, ..., size
    style_dim: int = 512
    use_eem: bool = True
    eem_hidden: int = 128
    flow_init_scale: float = 1.0  # initial flow-head weight std (official: 1; ToFlow)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, latent, feats, exp_latent: Optional[jnp.ndarray] = None):
        """latent (B, style_dim); feats: encoder skips coarse->fine (8..size); exp_latent
        (B, style_dim) drives the EEMs. Returns a dict: `image` (B, S, S, 3) unclamped, and
        per level `flows` (B, r, r, 2), `masks` (B, r, r, 1)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        levels = log2_size(self.size) - 2
        if len(feats) != levels:
            raise ValueError(f"decoder expects {levels} skip features, got {len(feats)}")
        if self.use_eem and exp_latent is None:
            raise ValueError("this decoder has EEMs: pass the expression latent")
        latent = latent.astype(self.dtype)
        out = ConstantInput(self.channels[0], name="input", **kw)(latent.shape[0])
        out = StyledConv(self.channels[0], 3, name="conv1", **kw)(out, latent)
        if self.is_initializing():  # official dec.to_rgb1: never used in the forward pass
            keep_unused(self, "to_rgb1", ToRGB(parent=None, **kw), out)
        skip_flow = skip_rgb = None
        flows, masks = [], []
        for lvl in range(levels):
            c = self.channels[lvl + 1]
            out = StyledConv(c, 3, upsample=True, name=f"convs_{2 * lvl}", **kw)(out, latent)
            out = StyledConv(c, 3, name=f"convs_{2 * lvl + 1}", **kw)(out, latent)
            feat = feats[lvl]
            if self.use_eem:
                feat = EEM(self.style_dim, self.eem_hidden, name=f"eem_{lvl}", **kw)(feat, exp_latent)
            feat_warp, out, skip_flow, flow, mask = ToFlow(self.flow_init_scale, name=f"to_flows_{lvl}", **kw)(
                out, latent, feat, skip_flow)
            skip_rgb = ToRGB(name=f"to_rgbs_{lvl}", **kw)(feat_warp, skip_rgb)
            flows.append(flow)
            masks.append(mask)
        return {"image": skip_rgb, "flows": tuple(flows), "masks": tuple(masks)}
