"""EDTalk model family. `build_model(kind, cfg)` maps a kind and a (converter-inferred or
config-file) model configuration to a Flax module; `example_inputs` gives init inputs."""

from typing import Any, Dict

import jax.numpy as jnp

from edtalk_jax.models.audio2lip import Audio2Lip
from edtalk_jax.models.config import channel_table
from edtalk_jax.models.discriminator import Discriminator
from edtalk_jax.models.generator import Generator
from edtalk_jax.models.vgg import PerceptualNetwork

GENERATOR_FIELDS = ("size", "channels", "style_dim", "lip_dim", "pose_dim", "exp_dim", "bank_mode", "eem_hidden",
                    "flow_init_scale")


def build_model(kind: str, cfg: Dict[str, Any], dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    if kind in ("generator", "lip_pose"):
        fields = {k: cfg[k] for k in GENERATOR_FIELDS if k in cfg}
        fields["channels"] = channel_table(cfg["size"], cfg.get("width_div", 1), cfg.get("channels"))
        if kind == "lip_pose":
            fields["exp_dim"] = 0
        return Generator(**fields, **kw)
    if kind == "discriminator":
        return Discriminator(cfg["size"], channel_table(cfg["size"], cfg.get("width_div", 1), cfg.get("channels")), **kw)
    if kind == "audio2lip":
        return Audio2Lip(cfg.get("lip_dim", 20), **kw)
    if kind == "vgg19":
        return PerceptualNetwork(**kw)
    raise ValueError(f"unknown model kind {kind!r}")


def example_inputs(kind: str, cfg: Dict[str, Any], batch: int = 1):
    """Arguments for `model.init` (shapes only matter)."""
    if kind in ("generator", "lip_pose", "discriminator"):
        s = cfg["size"]
        x = jnp.zeros((max(batch, 1), s, s, 3))
        return (x, x) if kind != "discriminator" else (x,)
    if kind == "audio2lip":
        return (jnp.zeros((batch, 80, 16)),)
    if kind == "vgg19":
        return (jnp.zeros((batch, 128, 128, 3)),)
    raise ValueError(f"unknown model kind {kind!r}")
