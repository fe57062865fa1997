"""The EDTalk generator: encoder, decoder, motion bank and navigation heads.

One module serves both official generators: `exp_dim=10` is EDTalk.pt (expression bank,
EEMs in the decoder), `exp_dim=0` is EDTalk_lip_pose.pt. Its methods compose; every
inference mode and training stage is built from them (see edtalk_jax.inference):

    source = encode(src)                     # once per source image
    h      = encode(drv)["latent"]           # per driving frame
    alphas = coefficients(h)                 # {"lip", "pose", "exp"}: bank coefficients
    motion = motion(alphas)                  # latent offset and its per-bank parts
    out    = decode(source, motion)          # {"image", "flows", "masks", ...}
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from edtalk_jax.models.decoder import Decoder
from edtalk_jax.models.encoder import Encoder
from edtalk_jax.models.heads import EqualMLP
from edtalk_jax.models.motion_bank import MotionBank

Dtype = Any


class Generator(nn.Module):
    size: int
    channels: Tuple[int, ...]  # for resolutions 4, 8, ..., size
    style_dim: int = 512
    lip_dim: int = 20
    pose_dim: int = 6
    exp_dim: int = 10
    bank_mode: str = "qr"
    eem_hidden: int = 128
    flow_init_scale: float = 1.0  # initial flow-head weight std (official: 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.style_dim
        self.enc = Encoder(self.size, self.channels, d, **kw)
        self.dec = Decoder(self.size, self.channels, d, use_eem=self.exp_dim > 0,
                           eem_hidden=self.eem_hidden, flow_init_scale=self.flow_init_scale, **kw)
        self.bank = MotionBank(self.lip_dim, self.pose_dim, self.exp_dim, d, self.bank_mode,
                               param_dtype=self.param_dtype)
        self.fc = EqualMLP((d, d, d, d), **kw)
        self.lip_fc = EqualMLP((d, d, self.lip_dim), **kw)
        self.pose_fc = EqualMLP((d, d, self.pose_dim), **kw)
        if self.exp_dim:
            self.exp_fc = EqualMLP((d, d, self.exp_dim), **kw)

    @property
    def parts(self) -> Tuple[str, ...]:
        return ("lip", "pose", "exp") if self.exp_dim else ("lip", "pose")

    def encode(self, img) -> Dict[str, Any]:
        """img (B, S, S, 3) in [-1, 1] -> {"latent": (B, D), "feats": skips coarse->fine}."""
        latent, feats = self.enc(img)
        return {"latent": latent, "feats": feats}

    def coefficients(self, latent, parts: Optional[Sequence[str]] = None) -> Dict[str, jnp.ndarray]:
        """Bank coefficients of a driving latent: lip_fc(fc(h)), pose_fc(fc(h)), exp_fc(fc(h))."""
        parts = self.parts if parts is None else tuple(parts)
        shared = self.fc(latent)
        heads = {"lip": self.lip_fc, "pose": self.pose_fc}
        if self.exp_dim:
            heads["exp"] = self.exp_fc
        unknown = set(parts) - set(heads)
        if unknown:
            raise ValueError(f"unknown coefficient parts {sorted(unknown)}; this model has {sorted(heads)}")
        return {p: heads[p](shared) for p in parts}

    def bases(self, joint: bool = True):
        """The orthonormal directions (D, K); joint=False gives the lip/pose bank alone."""
        return self.bank.bases(joint)

    def motion(self, alphas: Dict[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
        """{"offset", "lip", "pose"[, "exp"]} latents (B, D) from coefficients."""
        return self.bank(alphas)

    def decode(self, source: Dict[str, Any], motion: Dict[str, jnp.ndarray]) -> Dict[str, Any]:
        """Renders the source moved by `motion`: latent = source latent + motion offset;
        the expression part drives the EEMs."""
        latent = source["latent"].astype(motion["offset"].dtype) + motion["offset"]
        return self.dec(latent, source["feats"], motion.get("exp") if self.exp_dim else None)

    def orthogonality(self):
        return self.bank.orthogonality()

    def __call__(self, src, drv):
        """Self-reconstruction: every coefficient from `drv`, rendered on `src`. Returns the
        decoder outputs plus `alphas`, `motion`, `source_latent` and `driving_latent`."""
        source = self.encode(src)
        h = self.encode(drv)["latent"]
        alphas = self.coefficients(h)
        motion = self.motion(alphas)
        out = dict(self.decode(source, motion))
        out.update(alphas=alphas, motion=motion, source_latent=source["latent"], driving_latent=h)
        return out
