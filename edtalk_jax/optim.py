"""Optimizers from config, with freezing and learning-rate multipliers by parameter path.

Paths are "/"-joined keys of the parameter tree, prefixed by the model: "gen/enc/...",
"gen/bank/lipnonlip", "dis/...", "audio2lip/mapping/...". A leaf whose path matches a
`freeze` regex (re.search) gets no optimizer state and is returned unchanged by
`apply_updates` (bitwise: not even +0.0 is added); the first matching
`lr_multipliers` entry scales the learning rate of the others.
"""

import re
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import optax

FROZEN = "frozen"


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def leaf_paths(tree) -> Dict[str, Any]:
    return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_regexes(patterns: Sequence[str], field: str) -> None:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{field}: bad regex {p!r}: {e}") from None


def labels(params, freeze: Sequence[str] = (), lr_multipliers: Sequence[Tuple[str, float]] = ()):
    """A tree of labels: "frozen", "lr<i>" (the i-th multiplier entry) or "base"."""
    def label(path, _):
        name = path_str(path)
        if any(re.search(p, name) for p in freeze):
            return FROZEN
        for i, (pattern, _mult) in enumerate(lr_multipliers):
            if re.search(pattern, name):
                return f"lr{i}"
        return "base"
    return jax.tree_util.tree_map_with_path(label, params)


def trainable_mask(params, freeze: Sequence[str] = ()):
    """True for every leaf that is not frozen."""
    return jax.tree.map(lambda lab: lab != FROZEN, labels(params, freeze))


def _single(cfg: Mapping[str, Any], lr_scale: float, total_steps: int) -> optax.GradientTransformation:
    name = cfg["name"]
    reg = cfg.get("reg_every", 0) or 0
    ratio = reg / (reg + 1) if reg else 1.0  # StyleGAN2's lazy-regularisation correction
    lr = cfg["lr"] * ratio * lr_scale
    schedule = cfg.get("schedule", "constant")
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, max(1, total_steps))
    elif schedule != "constant":
        raise ValueError(f"optimizer.*.schedule: unknown schedule {schedule!r} (constant | cosine)")
    if name == "adam":
        tx = optax.adam(lr, b1=cfg["b1"] ** ratio, b2=cfg["b2"] ** ratio, eps=cfg["eps"])
    elif name == "adamw":
        tx = optax.adamw(lr, b1=cfg["b1"] ** ratio, b2=cfg["b2"] ** ratio, eps=cfg["eps"],
                         weight_decay=cfg.get("weight_decay", 1e-4))
    elif name == "sgd":
        tx = optax.sgd(lr, momentum=cfg["b1"] or None)
    else:
        raise ValueError(f"optimizer.*.name: unknown optimizer {name!r} (adam | adamw | sgd)")
    if cfg.get("grad_clip"):
        tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]), tx)
    return tx


def make_optimizer(cfg: Mapping[str, Any], params, freeze: Sequence[str] = (),
                   lr_multipliers: Sequence[Tuple[str, float]] = (),
                   field: str = "optimizer", total_steps: int = 1) -> optax.GradientTransformation:
    """The optimizer of one parameter group (G side or D) from its config section;
    `total_steps` is the length of a decaying schedule."""
    _check_regexes(freeze, f"{field}.freeze")
    _check_regexes([p for p, _ in lr_multipliers], f"{field}.lr_multipliers")
    transforms = {"base": _single(cfg, 1.0, total_steps), FROZEN: optax.set_to_zero()}
    for i, (_pattern, mult) in enumerate(lr_multipliers):
        transforms[f"lr{i}"] = _single(cfg, float(mult), total_steps)
    return optax.multi_transform(transforms, labels(params, freeze, lr_multipliers))


def apply_updates(params, updates, mask):
    """params + updates where `mask` (trainable_mask) is True; frozen leaves untouched."""
    return jax.tree.map(lambda p, u, m: (p + u.astype(p.dtype)) if m else p, params, updates, mask)


def ema_update(ema, params, decay: float):
    return jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype), ema, params)
