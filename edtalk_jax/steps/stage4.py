"""Stage 4: audio to lip (edtalk_spec.md §3). Audio2Lip maps each frame's 80x16 mel
window to the 20 lip coefficients; the generator renders them with the frame's pose
coefficients on the identity frame.

With `audio2lip.target="offset"` Audio2Lip's output is added to the identity frame's
lip coefficients (`batch["identity_lip"]`): the coefficients of a held-out speaker's
closed mouth cannot be heard, but they can be read from the source image.

Losses per example (averaged over the T frames): `coeff` MSE to the lip targets,
`smooth` MSE of their temporal differences, and on the rendered frames `l1`,
`perceptual`, `gan`, `mouth_l1` (96x96 crops of the mouth boxes at 256², sg2im's
crop_bbox_batch; common.mouth_l1) and `sync` (Wav2Lip's colour SyncNet on the lower halves of the T
rendered face crops, only when `syncnet.path` is set). Terms with weight 0 are not
computed; with every image term at 0 training renders nothing (evaluation still renders,
for its PSNR and the sample grid).

The official sync loss pairs the visual window (frames r..r+4) with the mel window of
frame r, which covers frames r-2..r+2: `syncnet.audio_window="official"` keeps that,
the default "aligned" takes the middle frame's window.
"""

import jax
import jax.numpy as jnp

from edtalk_jax.steps import common

def render(gen, identity, lip, pose, t: int):
    """identity (B, S, S, 3), lip/pose (B*T, K) -> (B*T, S, S, 3)."""
    src = gen.encode(identity)
    src = jax.tree.map(lambda x: jnp.repeat(x, t, axis=0), src)
    alphas = {"lip": lip, "pose": pose}
    if gen.exp_dim:  # a full generator renders with a neutral expression
        alphas["exp"] = jnp.zeros((lip.shape[0], gen.exp_dim), lip.dtype)
    return gen.decode(src, gen.motion(alphas))["image"]


def predict_lips(ctx: common.Context, params, model_state, mel, train: bool):
    """-> (lip coefficients (B, T, L), updated model_state or None)."""
    a2l = ctx.models["audio2lip"]
    variables = {"params": params["audio2lip"], **model_state["audio2lip"]}
    if train and ctx.config.audio2lip.batchnorm_train:
        lips, updates = a2l.apply(variables, mel, train=True, mutable=["batch_stats"])
        new_state = dict(model_state, audio2lip=dict(model_state["audio2lip"], **updates))
        return lips, new_state
    return a2l.apply(variables, mel), None


def compute_losses(ctx: common.Context, params, model_state, batch, consts, train: bool):
    gen = ctx.models["gen"]
    mel, frames = batch["mel"], batch["frames"]
    b, t = mel.shape[:2]
    lips, new_state = predict_lips(ctx, params, model_state, mel, train)
    lips = lips.astype(jnp.float32)
    target = batch["lip_targets"].astype(jnp.float32)
    identity_lip = batch["identity_lip"].astype(jnp.float32)[:, None]
    if ctx.config.audio2lip.target == "offset":
        lips = lips + identity_lip
    per_frame = lambda v: v.reshape(b, t).mean(axis=1)
    losses = {"coeff": jnp.mean(jnp.square(lips - target), axis=(1, 2)),
              "smooth": jnp.mean(jnp.square(jnp.diff(lips, axis=1) - jnp.diff(target, axis=1)), axis=(1, 2))}
    # Predict-the-mean baseline: the training split's mean lip target (consts["lip_mean"],
    # set by the trainer); without it (cost-only callers) the batch's own mean.
    mean = consts["lip_mean"] if "lip_mean" in consts else jnp.mean(target, axis=(0, 1))
    # The motion within the T frames (each clip's window mean removed): what the audio
    # can say whatever the speaker; its baseline predicts no motion.
    motion = lambda x: x - jnp.mean(x, axis=1, keepdims=True)
    scalars = {"stage4/lip_mse": jnp.mean(losses["coeff"]),
               "stage4/mean_baseline_mse": jnp.mean(jnp.square(target - mean)),
               # Copy the identity frame's mouth: what the source image alone says.
               "stage4/identity_baseline_mse": jnp.mean(jnp.square(target - identity_lip)),
               "stage4/lip_motion_mse": jnp.mean(jnp.square(motion(lips) - motion(target))),
               "stage4/still_baseline_mse": jnp.mean(jnp.square(motion(target)))}
    flat = frames.reshape((b * t,) + frames.shape[2:])
    recon = None
    image_terms = any(ctx.weight(k) for k in ("l1", "perceptual", "gan", "mouth_l1", "sync"))
    if image_terms or not train:  # evaluation renders for its PSNR and samples in any case
        recon = gen.apply({"params": params["gen"]}, batch["identity"], lips.reshape(b * t, -1),
                          batch["pose_targets"].reshape(b * t, -1).astype(jnp.float32), t, method=render)
    if image_terms:
        losses.update({k: per_frame(v) for k, v in common.reconstruction(ctx, consts, recon, flat).items()})
        if ctx.weight("gan"):
            losses["gan"] = per_frame(common.gan_g(ctx, params["dis"], recon))
        if ctx.weight("mouth_l1"):
            boxes = batch["mouth_boxes"].reshape(b * t, 4)
            losses["mouth_l1"] = per_frame(common.mouth_l1(recon, flat, boxes))
        if ctx.weight("sync") and "syncnet" in ctx.models:
            losses["sync"] = sync_loss(ctx, consts, recon.reshape(frames.shape), mel)
    images = (("identity", batch["identity"]), ("target", frames[:, t // 2]))
    if recon is not None:
        images += (("audio-driven", recon.reshape(frames.shape)[:, t // 2]),)
    return common.LossOutput(losses=losses, real=flat, fake=recon if recon is not None else flat,
                             recon=recon, target=flat if recon is not None else None,
                             images=images, scalars=scalars, model_state=new_state)


def sync_loss(ctx: common.Context, consts, recon, mel):
    """Wav2Lip's expert loss per example on the lower halves of the rendered frames."""
    from edtalk_jax.models import syncnet

    t = mel.shape[1]
    index = 0 if ctx.config.syncnet.audio_window == "official" else t // 2
    faces = syncnet.lower_half_crops(recon)
    audio_emb, face_emb = ctx.models["syncnet"].apply(consts["syncnet"], faces, mel[:, index])
    return syncnet.sync_loss(audio_emb, face_emb)
