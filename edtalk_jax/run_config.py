"""Checks a training config before anything compiles, and resolves what it leaves open:
the model shape (from the checkpoint it starts from, else the official one) and the
dataset directory.

Every error names the config field (`model.size`, `loss.latent_reduction`, ...).
"""

import os
from typing import Any, Dict, Mapping, Optional

from configs.base import OFFICIAL_SHAPE, STAGES
from edtalk_jax.models.config import channel_table, log2_size
from edtalk_jax.steps import STAGES as STAGE_SPECS

SHAPE_FIELDS = ("size", "style_dim", "lip_dim", "pose_dim", "exp_dim", "eem_hidden")
CHOICES = {
    "init_prng": ("threefry2x32", "rbg", "unsafe_rbg"),
    "model.kind": ("generator", "lip_pose"),
    "model.bank_mode": ("qr", "free"),
    "model.dtype": ("float32", "bfloat16"),
    "loss.latent_reduction": ("mean", "sum"),
    "syncnet.audio_window": ("aligned", "official"),
    "audio2lip.target": ("absolute", "offset"),
    "perceptual.backbone": ("vgg19", "lpips_vgg16", "random_vgg19", "random_vgg16"),
}


class ConfigError(ValueError):
    """A config value the trainer cannot run; the message names the field."""


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config) -> None:
    """Field-level checks that need no model or data."""
    if config.stage not in STAGES:
        raise ConfigError(f"stage={config.stage!r}: expected one of {STAGES}")
    for field, choices in CHOICES.items():
        if _get(config, field) not in choices:
            raise ConfigError(f"{field}={_get(config, field)!r}: expected one of {choices}")
    spec = STAGE_SPECS[config.stage]
    if config.model.kind not in spec.gen_kinds:
        raise ConfigError(f"model.kind={config.model.kind!r}: {config.stage} trains {spec.gen_kinds}")
    positive = ("batch_size", "total_steps", "keep_checkpoints", "data.T", "loss.r1_every")
    for field in positive:
        if _get(config, field) < 1:
            raise ConfigError(f"{field}={_get(config, field)!r}: must be >= 1")
    for field in ("log_every_steps", "eval_every_steps", "images_every_steps",
                  "checkpoint_every_steps", "keep_every_steps", "eval_batches", "data.workers", "peak_flops"):
        if _get(config, field) < 0:
            raise ConfigError(f"{field}={_get(config, field)!r}: must be >= 0")
    if not 0 <= config.ema_decay < 1:
        raise ConfigError(f"ema_decay={config.ema_decay!r}: must be in [0, 1)")
    for name in config.loss:
        value = config.loss[name]
        if isinstance(value, float) and value < 0:
            raise ConfigError(f"loss.{name}={value!r}: weights must be >= 0")
    if config.stage == "stage4" and config.syncnet.path and config.data.T != 5:
        raise ConfigError(f"data.T={config.data.T}: the SyncNet loss (syncnet.path) needs T = 5 frames")
    if config.stage == "stage4" and config.data.T < 2 and config.loss.smooth:
        raise ConfigError("data.T must be >= 2 for the smoothness loss (loss.smooth)")
    for field in ("init_from", "resume_from", "perceptual.path", "syncnet.path", "audio2lip.init"):
        path = _get(config, field)
        if path and not os.path.exists(path):
            raise ConfigError(f"{field}={path!r}: no such file or directory")


def check_discriminator_batch(config) -> None:
    """D's minibatch-stddev layer splits the images of each call into groups of
    min(n, 4) (official, rosinality): n must divide evenly (stage 2 scores 2B and 4B
    images per call, stage 4 B x T frames). Called after the mesh check, whose message
    says more when both fail."""
    from edtalk_jax.models.discriminator import Discriminator

    if not (config.loss.gan or config.train_discriminator):
        return
    b, group = config.batch_size, Discriminator.stddev_group
    sizes = {"stage2": (2 * b, 4 * b), "stage4": (b * config.data.T,)}.get(config.stage, (b,))
    for n in sizes:
        if n % min(n, group):
            fields = f"batch_size={b} x data.T={config.data.T}" if config.stage == "stage4" else f"batch_size={b}"
            raise ConfigError(f"{fields}: the discriminator scores {n} images per call, which its "
                              f"minibatch-stddev layer splits into groups of {group}; make it a multiple of {group}")


def resolve_model(config, source: Optional[Mapping[str, Any]] = None,
                  source_name: str = "init_from") -> Dict[str, Any]:
    """The model config to build, as `build_model` takes it. `source` is the model config
    of the checkpoint the run starts from ({"kind", "size", "channels", ...}); its shape
    fills the fields the config leaves None, and a set field that contradicts it is an
    error naming both. Fields of another generator kind (exp_dim, eem_hidden of a
    lip-pose checkpoint) do not constrain the new model."""
    m = config.model
    kind = m.kind
    source = dict(source or {})
    same_kind = source.get("kind") == kind or not source.get("kind")
    out: Dict[str, Any] = {"kind": kind, "bank_mode": m.bank_mode, "flow_init_scale": m.flow_init_scale}
    for field in SHAPE_FIELDS:
        mine = m[field]
        theirs = source.get(field)
        if field in ("exp_dim", "eem_hidden") and not same_kind:
            theirs = None
        if mine is not None and theirs is not None and int(mine) != int(theirs):
            raise ConfigError(f"model.{field}={mine} conflicts with {source_name} "
                              f"({source.get('path', 'checkpoint')}: {field}={theirs})")
        out[field] = mine if mine is not None else theirs if theirs is not None else OFFICIAL_SHAPE[field]
    if kind == "lip_pose":
        out["exp_dim"] = 0
    elif out["exp_dim"] < 1:
        raise ConfigError(f"model.exp_dim={out['exp_dim']}: the 'generator' kind needs an expression bank")
    bases = out["lip_dim"] + out["pose_dim"] + out["exp_dim"]
    if bases > out["style_dim"]:  # QR would return style_dim columns, not one per coefficient
        raise ConfigError(f"model.style_dim={out['style_dim']}: the motion bank has {bases} orthonormal bases "
                          f"(lip_dim + pose_dim + exp_dim), more than the latent width can hold")
    try:
        log2_size(out["size"])
    except ValueError as e:
        raise ConfigError(f"model.size={out['size']}: {e}") from None
    mine_channels = None
    if m.channels is not None or m.width_div is not None:
        try:
            mine_channels = channel_table(out["size"], m.width_div or 1, m.channels)
        except ValueError as e:
            raise ConfigError(f"model.channels/width_div: {e}") from None
    theirs_channels = source.get("channels")
    if theirs_channels is None and "width_div" in source:
        theirs_channels = channel_table(out["size"], source["width_div"])
    if mine_channels is not None and theirs_channels is not None \
            and tuple(mine_channels) != tuple(theirs_channels):
        raise ConfigError(f"model.width_div/channels give widths {tuple(mine_channels)}, but "
                          f"{source_name} ({source.get('path', 'checkpoint')}) has {tuple(theirs_channels)}")
    out["channels"] = tuple(mine_channels or theirs_channels or channel_table(out["size"], OFFICIAL_SHAPE["width_div"]))
    return out


def resolve_data_dir(config, workdir: str) -> str:
    """config.data.shards_dir as a directory the readers open ("" = WORKDIR/data, the
    synthetic dataset, built by the caller)."""
    from data_pipeline.records import directory

    if not config.data.shards_dir:
        return os.path.join(workdir, "data")
    try:
        return directory.resolve_dataset_dir(config.data.shards_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.shards_dir: {e}") from None
