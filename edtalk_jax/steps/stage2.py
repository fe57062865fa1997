"""Stage 2: mouth-pose decoupling by cross-reconstruction (edtalk_spec.md §3).

Clips A and B of two speakers; `mouth_a_on_b` carries A's mouth on B's face and pose
(official `imageb_a`), `mouth_b_on_a` B's mouth on A's (`imagea_b`). Self: A's
coefficients render A on A's identity frame (B likewise). Cross: A is rebuilt from the
lip coefficients of `mouth_a_on_b` (A's mouth) and the pose coefficients of
`mouth_b_on_a` (A's pose); B symmetrically. Losses: L1 + perceptual of the self and
cross reconstructions (the official sums over A and B), GAN on all four, and
exp(-cos) consistency of the lip and pose latents (z = sum_k alpha_k q_k, 512-d)
between each cross reconstruction and its self reconstruction. Not official, off by
default: `loss.mouth_l1`, the L1 of the mouth crops of all four reconstructions (A's and
B's mouth boxes); at low resolution the mouth is too few pixels for the whole-image
terms to make the lip space encode it (docs/training.md).

All six images go through the encoder in one call and all four reconstructions through
the decoder in one call (batch 6B and 4B): same numbers, fewer, larger ops.
"""

import jax.numpy as jnp

from edtalk_jax.steps import common


def _cos(x, y, eps=1e-8):
    """torch.nn.functional.cosine_similarity along the last axis."""
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    nx = jnp.maximum(jnp.linalg.norm(x, axis=-1), eps)
    ny = jnp.maximum(jnp.linalg.norm(y, axis=-1), eps)
    return jnp.sum(x * y, axis=-1) / (nx * ny)


def latent_consistency(cross, own):
    """exp(-cos(cross, own)) per example."""
    return jnp.exp(-_cos(cross, own))


def forward(gen, a_id, b_id, a, b, mouth_a_on_b, mouth_b_on_a):
    """-> images (4B: self A, self B, cross A, cross B) and the motion of each."""
    n = a.shape[0]
    enc = gen.encode(jnp.concatenate([a_id, b_id, a, b, mouth_a_on_b, mouth_b_on_a]))
    latent = enc["latent"]
    coef = gen.coefficients(latent[2 * n:], parts=("lip", "pose"))
    lip = jnp.split(coef["lip"], 4)  # a, b, a's mouth on b, b's mouth on a
    pose = jnp.split(coef["pose"], 4)
    alphas = {"lip": jnp.concatenate([lip[0], lip[1], lip[2], lip[3]]),
              "pose": jnp.concatenate([pose[0], pose[1], pose[3], pose[2]])}
    if gen.exp_dim:  # a full generator: expression coefficients of each rendered clip's frame
        exp = jnp.split(gen.coefficients(latent[2 * n:], parts=("exp",))["exp"], 4)
        alphas["exp"] = jnp.concatenate([exp[0], exp[1], exp[0], exp[1]])
    motion = gen.motion(alphas)
    ids = [slice(0, n), slice(n, 2 * n), slice(0, n), slice(n, 2 * n)]
    source = {"latent": jnp.concatenate([latent[s] for s in ids]),
              "feats": tuple(jnp.concatenate([f[s] for s in ids]) for f in enc["feats"])}
    return gen.decode(source, motion)["image"], motion


def compute_losses(ctx: common.Context, params, model_state, batch, consts, train: bool):
    del model_state, train
    gen = ctx.models["gen"]
    a, b = batch["a"], batch["b"]
    n = a.shape[0]
    images, motion = gen.apply({"params": params["gen"]}, batch["a_identity"], batch["b_identity"], a, b,
                               batch["mouth_a_on_b"], batch["mouth_b_on_a"], method=forward)
    own, cross = images[:2 * n], images[2 * n:]
    targets = jnp.concatenate([a, b])
    pair = lambda v: v.reshape(2, n).sum(axis=0)  # official: loss(A) + loss(B)
    losses = {k: pair(v) for k, v in common.reconstruction(ctx, consts, own, targets).items()}
    losses.update({k: pair(v) for k, v in
                   common.reconstruction(ctx, consts, cross, targets, prefix="cross_").items()})
    if ctx.weight("mouth_l1"):
        boxes = jnp.concatenate([batch["a_mouth_box"], batch["b_mouth_box"]])
        losses["mouth_l1"] = (pair(common.mouth_l1(own, targets, boxes))
                              + pair(common.mouth_l1(cross, targets, boxes)))
    if ctx.weight("gan"):
        losses["gan"] = common.gan_g(ctx, params["dis"], images, groups=4)
    for part in ("lip", "pose"):
        z = jnp.split(motion[part], 4)  # self A, self B, cross A, cross B
        losses[f"latent_{part}"] = latent_consistency(z[3], z[1]) + latent_consistency(z[2], z[0])
    ortho, scalars = common.ortho_terms(ctx, params["gen"])
    losses.update(ortho)
    ids = jnp.concatenate([batch["a_identity"], batch["b_identity"]])
    scalars["recon/copy_source_psnr"] = jnp.mean(common.psnr(ids, targets))  # the baseline
    scalars["recon/cross_psnr"] = jnp.mean(common.psnr(cross, targets))
    grid = (("identity A", batch["a_identity"]), ("A", a), ("self A", images[:n]),
            ("B mouth on A", batch["mouth_b_on_a"]), ("A mouth on B", batch["mouth_a_on_b"]),
            ("cross A", cross[:n]))
    return common.LossOutput(losses=losses, real=targets, fake=cross, recon=own, target=targets,
                             images=grid, scalars=scalars)
