"""Self-reconstruction stages: stage 1 (encoder + generator pre-training, LIA), stage 3
(expression decoupling) and person-specific fine-tuning. They share one loss function;
they differ by model kind, what is frozen and where they start (configs/).

Batch: `source` and `target` (stages 1 and fine-tune) or `identity` and `target` (stage
3): every coefficient comes from the target, rendered on the source's features.

Stage 3, "self-reconstruction complementary learning" (docs/training.md): the lip and
pose heads and bank are frozen, so the lip and pose coefficients of the target explain
what they already explained in stage 2; the expression head, bank and EEMs are the only
trained parts and must learn what remains. Evaluation also renders without the
expression part (`recon/psnr_without_exp`): the gap is what the expression space adds.
"""

import jax.numpy as jnp

from edtalk_jax.steps import common


def compute_losses(ctx: common.Context, params, model_state, batch, consts, train: bool):
    del model_state
    gen = ctx.models["gen"]
    source = batch["identity"] if "identity" in batch else batch["source"]
    target = batch["target"]
    out = gen.apply({"params": params["gen"]}, source, target)
    recon = out["image"]
    losses = common.reconstruction(ctx, consts, recon, target)
    if ctx.weight("gan"):
        losses["gan"] = common.gan_g(ctx, params["dis"], recon)
    ortho, scalars = common.ortho_terms(ctx, params["gen"])
    losses.update(ortho)
    scalars["recon/copy_source_psnr"] = jnp.mean(common.psnr(source, target))  # the baseline
    if gen.exp_dim and not train:
        neutral = dict(out["alphas"], exp=jnp.zeros_like(out["alphas"]["exp"]))
        without = gen.apply({"params": params["gen"]}, source, neutral, method=_render_alphas)
        scalars["recon/psnr_without_exp"] = jnp.mean(common.psnr(without, target))
    images = (("source", source), ("driving", target), ("reconstruction", recon))
    return common.LossOutput(losses=losses, real=target, fake=recon, recon=recon, target=target,
                             images=images, scalars=scalars)


def _render_alphas(gen, source_img, alphas):
    return gen.decode(gen.encode(source_img), gen.motion(alphas))["image"]
