"""Motion banks: learnable bases for lip (20), pose (6) and expression (10) motion.

mode="qr" (official): Q = QR(W + 1e-8).Q, recomputed every call, with lip+pose as one
matrix (`Direction`) and expression orthonormalised against them by one QR of the
concatenation [lip | pose | exp] (`Direction_exp`). Householder QR processes columns in
order, so the first 26 columns of the joint Q equal the lip/pose Q, and the expression
bases are exactly orthogonal to span(lip, pose). Column signs follow LAPACK (jnp.linalg.qr
reproduces torch's); do not normalise them, the learned coefficients depend on them.

mode="free": the bases are W itself; orthogonality is encouraged by
`orthogonality_loss` (||B^T B - I||_F^2 over all banks, within and across).
"""

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
MODES = ("qr", "free")


def _qr_q(w):
    return jnp.linalg.qr(w + 1e-8, mode="reduced")[0]


def orthogonality_loss(bases):
    """||B^T B - I||_F^2 for bases (style_dim, K), in float32 (or wider)."""
    b = bases.astype(jnp.promote_types(bases.dtype, jnp.float32))
    gram = b.T @ b
    return jnp.sum(jnp.square(gram - jnp.eye(b.shape[1], dtype=b.dtype)))


def _complement_init(basis):
    """Orthonormal columns orthogonal to span(basis): in free mode the joint bases start
    orthonormal across banks too."""
    def init(key, shape, dtype):
        w = jax.random.normal(key, shape, jnp.float32)
        q = jnp.linalg.qr(jnp.concatenate([basis.astype(jnp.float32), w], axis=-1))[0]
        return q[:, basis.shape[1]:].astype(dtype)
    return init


class MotionBank(nn.Module):
    lip_dim: int = 20
    pose_dim: int = 6
    exp_dim: int = 10  # 0: the lip/pose-only bank of EDTalk_lip_pose.pt
    style_dim: int = 512
    mode: str = "qr"
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.mode not in MODES:
            raise ValueError(f"bank mode must be one of {MODES}, got {self.mode!r}")
        # QR mode: N(0, 1) columns, as official. Free mode: start orthonormal so the
        # orthogonality loss starts at ~0.
        init = nn.initializers.normal(1.0) if self.mode == "qr" else nn.initializers.orthogonal()
        self.lipnonlip = self.param("lipnonlip", init, (self.style_dim, self.lip_dim + self.pose_dim),
                                    self.param_dtype)
        if self.exp_dim:
            exp_init = init if self.mode == "qr" else _complement_init(self.lipnonlip)
            self.exp = self.param("exp", exp_init, (self.style_dim, self.exp_dim), self.param_dtype)

    @property
    def num_bases(self) -> int:
        return self.lip_dim + self.pose_dim + self.exp_dim

    def _weights(self, joint: bool):
        w = self.lipnonlip
        if joint and self.exp_dim:
            w = jnp.concatenate([w, self.exp], axis=-1)
        return w.astype(jnp.promote_types(w.dtype, jnp.float32))

    def bases(self, joint: bool = True):
        """(style_dim, K) directions: every bank (joint) or lip+pose only (`Direction`)."""
        w = self._weights(joint)
        return _qr_q(w) if self.mode == "qr" else w

    def __call__(self, alphas: Dict[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
        """alphas: `lip` (B, 20), `pose` (B, 6) and, with an expression bank, `exp` (B, 10).

        Returns the latent `offset` = sum_k alpha_k q_k and its parts `lip`, `pose`, `exp`
        (each (B, style_dim), float32 or wider)."""
        names = ("lip", "pose", "exp") if self.exp_dim else ("lip", "pose")
        missing = [n for n in names if n not in alphas]
        if missing:
            raise ValueError(f"motion bank needs coefficients {names}, missing {missing}")
        q = self.bases(joint=True)
        alpha = jnp.concatenate([alphas[n].astype(q.dtype) for n in names], axis=-1)
        out = {"offset": alpha @ q.T}
        start = 0
        for n, dim in zip(names, (self.lip_dim, self.pose_dim, self.exp_dim)):
            out[n] = alpha[:, start:start + dim] @ q[:, start:start + dim].T
            start += dim
        return out

    def orthogonality(self):
        """The orthogonality loss of the current bases (0 up to rounding in QR mode)."""
        return orthogonality_loss(self.bases(joint=True))
