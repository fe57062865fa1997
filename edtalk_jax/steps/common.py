"""What every stage shares: the train state, GAN losses, weighting and the G/D step.

A stage module provides `compute_losses(ctx, params, batch, consts, train)` returning a
`LossOutput`: per-example losses keyed by their `config.loss` weight name, the images
D scores, image grid columns and the reconstruction PSNR is measured on. Training and
evaluation use that one function (no second forward pass for eval):

    train_step(state, batch, rng) -> (state, metrics)     # G update, then D update
    eval_step(state, batch) -> metrics                    # the same losses + PSNR

`params` is one dict over models: {"gen": ..., "dis": ..., ["audio2lip": ...]}; the G
side is every model but "dis". Constants the losses read but never train (perceptual
network, SyncNet) travel in `consts`, an argument of the jitted step, never baked into
the compiled program.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from edtalk_jax import losses as L
from edtalk_jax import optim
from edtalk_jax.layers.warp import grid_sample
from edtalk_jax.metrics import tree_norm

Array = jnp.ndarray


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: updates done
    params: Dict[str, Any]  # {"gen", "dis", ["audio2lip"]}: trained collections
    g_opt: Any  # optimizer state of the G side (every model but "dis")
    d_opt: Any  # optimizer state of D
    ema: Any  # EMA of the G-side params, or None
    model_state: Dict[str, Any]  # non-trained collections per model (batch_stats, unused)


def g_side(params: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in params.items() if k != "dis"}


def d_side(params: Mapping[str, Any]) -> Dict[str, Any]:
    return {"dis": params["dis"]}


@dataclasses.dataclass(frozen=True)
class Context:
    """Static (hashable by identity) description of a stage's computation."""
    name: str
    models: Mapping[str, nn.Module]  # "gen", "dis", ["audio2lip"], ["perceptual"], ["syncnet"]
    weights: Mapping[str, float]  # config.loss weights of the terms this stage computes
    loss_cfg: Any  # config.loss (reductions, r1)
    config: Any  # the whole run config (stage-specific fields)
    compute_losses: Callable
    image_keys: Tuple[str, ...]
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    g_mask: Any  # trainable_mask of the G side
    d_mask: Any
    train_d: bool
    ema_decay: float
    sum_losses: Tuple[str, ...] = ()  # terms reduced by batch sum instead of mean

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, 0.0))


@dataclasses.dataclass
class LossOutput:
    losses: Dict[str, Array]  # name -> (B,) per example, or () for parameter terms
    real: Array  # images D sees as real
    fake: Array  # images D sees as fake (gradients stopped for the D update)
    recon: Array  # the self-reconstruction PSNR is measured on ...
    target: Array  # ... against this
    images: Sequence[Tuple[str, Array]] = ()  # grid columns
    scalars: Dict[str, Array] = dataclasses.field(default_factory=dict)  # logged as is
    model_state: Optional[Dict[str, Any]] = None  # updated non-trained collections


jax.tree_util.register_dataclass(
    LossOutput, data_fields=["losses", "real", "fake", "recon", "target", "images", "scalars",
                             "model_state"], meta_fields=[])


# ---- losses shared by stages -------------------------------------------------------------

def to_float_images(batch: Mapping[str, Array], keys: Sequence[str]) -> Dict[str, Array]:
    """uint8 image keys -> float32 in [-1, 1] (x / 127.5 - 1, as the loaders convert)."""
    out = dict(batch)
    for k in keys:
        if k in out and out[k].dtype == jnp.uint8:
            out[k] = out[k].astype(jnp.float32) / 127.5 - 1
    return out


def l1(pred, target) -> Array:
    """Per-example mean |pred - target|."""
    d = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
    return jnp.mean(d.reshape(d.shape[0], -1), axis=1)


def psnr(pred, target) -> Array:
    """Per-example PSNR in dB of images in [-1, 1] (clipped), on the [0, 1] scale."""
    p = (jnp.clip(pred.astype(jnp.float32), -1, 1) + 1) / 2
    t = (jnp.clip(target.astype(jnp.float32), -1, 1) + 1) / 2
    mse = jnp.mean(jnp.square(p - t).reshape(p.shape[0], -1), axis=1)
    return -10 * jnp.log10(jnp.maximum(mse, 1e-10))


MOUTH_CROP = 96


def crop_boxes(images, boxes, size: int = MOUTH_CROP):
    """images (N, H, W, C), boxes (N, 4) pixel (x1, y1, x2, y2) -> (N, size, size, C),
    bilinear (sg2im crop_bbox_batch: sample points spread evenly from x1 to x2)."""
    n, h, w, _ = images.shape
    t = jnp.linspace(0.0, 1.0, size)
    boxes = boxes.astype(jnp.float32)
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t  # (N, size) pixels
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t
    gx = (x / w) * 2 - 1  # normalised like sg2im: box / image side, then [0, 1] -> [-1, 1]
    gy = (y / h) * 2 - 1
    grid = jnp.stack(jnp.broadcast_arrays(gx[:, None, :], gy[:, :, None]), axis=-1)
    return grid_sample(images, grid)


def mouth_l1(pred, target, boxes) -> Array:
    """Per-example L1 of the mouth crops: 96x96 (official stage 4) at 256² and above,
    scaled with the frame below (a 32² frame's mouth is a few pixels: 12x12 crops)."""
    size = max(8, min(MOUTH_CROP, round(MOUTH_CROP * pred.shape[1] / 256)))
    return l1(crop_boxes(pred, boxes, size), crop_boxes(target, boxes, size))


def perceptual(ctx: Context, consts, pred, target) -> Array:
    """Per-example VGG pyramid loss. Two network calls, as the official loss makes: one on
    `pred`, one on the gradient-stopped `target`, so the backward pass runs through the
    predictions only (one call on [pred; target] back-propagated through both halves: 2x
    the VGG backward). Calls on the same target array inside one jitted step (stage 2's
    self and cross reconstructions) are identical programs, which XLA's CSE merges into
    one (docs/benchmarks.md, "Stage-2 step at 128² on CPU")."""
    net = ctx.models["perceptual"]
    pred_f = net.apply(consts["perceptual"], pred)
    target_f = net.apply(consts["perceptual"], jax.lax.stop_gradient(target.astype(pred.dtype)))
    return L.perceptual_loss(pred_f, target_f)


def reconstruction(ctx: Context, consts, pred, target, prefix: str = "") -> Dict[str, Array]:
    """{prefix+"l1", prefix+"perceptual"} per example; terms with weight 0 are skipped."""
    out = {}
    if ctx.weight(prefix + "l1"):
        out[prefix + "l1"] = l1(pred, target)
    if ctx.weight(prefix + "perceptual"):
        out[prefix + "perceptual"] = perceptual(ctx, consts, pred, target)
    return out


def discriminate(ctx: Context, d_params, images) -> Array:
    return ctx.models["dis"].apply({"params": d_params}, images)[:, 0].astype(jnp.float32)


def gan_g(ctx: Context, d_params, fake, groups: int = 1) -> Array:
    """Non-saturating G loss softplus(-D(fake)) per example; `groups` stacked image sets
    (fake = [set_1; ...; set_g]) are averaged per example."""
    loss = jax.nn.softplus(-discriminate(ctx, d_params, fake))
    return loss.reshape(groups, -1).mean(axis=0)


def ortho_terms(ctx: Context, gen_params) -> Tuple[Dict[str, Array], Dict[str, Array]]:
    """(losses, scalars): the bases' orthogonality error, a loss term in free bank mode."""
    gen = ctx.models["gen"]
    err = gen.apply({"params": gen_params}, method=gen.orthogonality)
    losses = {"ortho": err} if gen.bank_mode == "free" and ctx.weight("ortho") else {}
    return losses, {"bank/orthogonality_error": err}


# ---- the step ----------------------------------------------------------------------------

def total_loss(ctx: Context, losses: Mapping[str, Array]) -> Tuple[Array, Dict[str, Array]]:
    """(weighted total, per-term batch reductions)."""
    reduced = {}
    total = jnp.zeros((), jnp.float32)
    for name, value in losses.items():
        value = value.astype(jnp.float32)
        r = jnp.sum(value) if name in ctx.sum_losses else jnp.mean(value)
        reduced[name] = r
        total = total + ctx.weight(name) * r
    return total, reduced


def d_loss_fn(ctx: Context, d_params, real, fake, step) -> Tuple[Array, Dict[str, Array]]:
    real_logits = discriminate(ctx, d_params, real)
    fake_logits = discriminate(ctx, d_params, fake)
    loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    metrics = {"gan/d_loss": loss, "gan/d_real": jnp.mean(real_logits), "gan/d_fake": jnp.mean(fake_logits)}
    gamma, every = float(ctx.loss_cfg.r1), int(ctx.loss_cfg.r1_every)
    if gamma:
        def r1(_):
            g = jax.grad(lambda x: jnp.sum(discriminate(ctx, d_params, x)))(real)
            return jnp.mean(jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), axis=1))
        penalty = jax.lax.cond(step % every == 0, r1, lambda _: jnp.zeros((), jnp.float32), None)
        loss = loss + gamma / 2 * every * penalty  # lazy: scaled by the interval
        metrics["gan/r1"] = penalty
    return loss, metrics


def train_step(ctx: Context, state: TrainState, batch, rng, consts) -> Tuple[TrainState, Dict[str, Array]]:
    """One G update then one D update (on the same batch, fakes detached)."""
    del rng  # the models are deterministic; stages that add noise use fold_in(rng, state.step)
    batch = to_float_images(batch, ctx.image_keys)
    params = state.params

    def g_objective(g_params):
        full = dict(g_params, dis=params["dis"])
        out = ctx.compute_losses(ctx, full, state.model_state, batch, consts, train=True)
        total, reduced = total_loss(ctx, out.losses)
        return total, (out, reduced)

    g_params = g_side(params)
    (g_total, (out, reduced)), g_grads = jax.value_and_grad(g_objective, has_aux=True)(g_params)
    g_updates, g_opt = ctx.g_tx.update(g_grads, state.g_opt, g_params)
    new_g = optim.apply_updates(g_params, g_updates, ctx.g_mask)
    metrics = {f"loss/{k}": v for k, v in reduced.items()}
    metrics.update(out.scalars)
    metrics["loss/g_total"] = g_total
    metrics["opt/g_grad_norm"] = tree_norm(g_grads)
    metrics["opt/g_param_norm"] = tree_norm(new_g)
    if out.recon is not None:
        metrics["train/psnr"] = jnp.mean(psnr(out.recon, out.target))

    d_params, d_opt = d_side(params), state.d_opt
    if ctx.train_d:
        (d_total, d_metrics), d_grads = jax.value_and_grad(
            lambda d: d_loss_fn(ctx, d["dis"], out.real, jax.lax.stop_gradient(out.fake), state.step),
            has_aux=True)(d_params)
        d_updates, d_opt = ctx.d_tx.update(d_grads, d_opt, d_params)
        d_params = optim.apply_updates(d_params, d_updates, ctx.d_mask)
        metrics.update(d_metrics)
        metrics["opt/d_grad_norm"] = tree_norm(d_grads)

    ema = state.ema
    if ema is not None:
        ema = optim.ema_update(ema, new_g, ctx.ema_decay)
    model_state = state.model_state if out.model_state is None else out.model_state
    new_state = state.replace(step=state.step + 1, params=dict(new_g, **d_params), g_opt=g_opt,
                              d_opt=d_opt, ema=ema, model_state=model_state)
    return new_state, metrics


def eval_params(state: TrainState) -> Dict[str, Any]:
    """The parameters evaluation and export use: the EMA of the G side when kept."""
    if state.ema is None:
        return state.params
    return dict(state.ema, dis=state.params["dis"])


def eval_step(ctx: Context, state: TrainState, batch, consts) -> Tuple[Dict[str, Array], Dict[str, Array]]:
    """(metrics, images): the training losses on held-out data (same compute_losses, no
    update) plus PSNR, and the stage's grid columns keyed "<index> <label>"."""
    batch = to_float_images(batch, ctx.image_keys)
    out = ctx.compute_losses(ctx, eval_params(state), state.model_state, batch, consts, train=False)
    total, reduced = total_loss(ctx, out.losses)
    metrics = {f"eval/{k}": v for k, v in reduced.items()}
    metrics["eval/g_total"] = total
    if out.recon is not None:
        metrics["eval/psnr"] = jnp.mean(psnr(out.recon, out.target))
    metrics.update({f"eval/{k}": v for k, v in out.scalars.items()})
    return metrics, {f"{i:02d} {label}": x for i, (label, x) in enumerate(out.images)}
