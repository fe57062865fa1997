"""Wav2Lip's colour lip-sync expert (`SyncNet_color`, models/syncnet.py), frozen, for the
stage-4 sync loss; and the Wav2Lip audio encoder that Audio2Lip starts from.

Layout exactly as Wav2Lip: a face encoder over 5 stacked lower-half face crops (15
channels, 48x96 HxW) and an audio encoder over one (80, 16) log-mel window (the same
stack as Audio2Lip's, `AUDIO_ENCODER`), each a column of Conv2d + BatchNorm (+ residual)
+ ReLU blocks ending in a 1x1x512 map, flattened and L2-normalised. BatchNorm runs in
eval mode (running statistics): the expert is never trained here.

Weights: a user's Wav2Lip `lipsync_expert.pth` through `load_syncnet` (read by the safe
`torch_io` reader; no torch needed). Variables use Audio2Lip's naming:
{"params" | "batch_stats" | "unused": {"face_encoder_<i>" | "audio_encoder_<i>": {"conv", "bn"}}}.

In a training step, with `frames` (B, 5, S, S, 3) the generated frames t-2..t+2 in
[-1, 1] and `mel` (B, 80, 16) the window of frame t (`data_pipeline.preprocess.audio.frame_windows`
already aligns frame t's window that way):

    sync_vars = load_syncnet(config.syncnet.path)       # once; pass it to the jitted step as an
                                                        # argument (a closure embeds 64 MB of constants)
    a, v = SyncNet().apply(sync_vars, lower_half_crops(frames), mel)
    loss = sync_loss(a, v)                              # (B,); gradients reach the generator via v
"""

from typing import Any, Dict, List

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import convert_torch as ct
from edtalk_jax import torch_io
from edtalk_jax.models.audio2lip import AUDIO_ENCODER, Audio2Lip, ConvBlock

Dtype = Any

# (out channels, kernel, stride (h, w), padding, residual): SyncNet_color.face_encoder.
FACE_ENCODER = (
    (32, 7, 1, 3, False),
    (64, 5, (1, 2), 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 2, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, 2, 1, False), (256, 3, 1, 1, True), (256, 3, 1, 1, True),
    (512, 3, 2, 1, False), (512, 3, 1, 1, True), (512, 3, 1, 1, True),
    (512, 3, 2, 1, False), (512, 3, 1, 0, False), (512, 1, 1, 0, False),
)
FACE_SHAPE = (48, 96, 15)  # lower halves of 5 colour 96x96 crops, stacked on channels
MEL_SHAPE = (80, 16)
SYNC_FRAMES = 5  # FACE_SHAPE[-1] / 3


def _encode(table, prefix: str, x, **kw):
    """A column of ConvBlocks named `<prefix>_<i>`, BatchNorm in eval mode."""
    for i, (c, k, s, p, r) in enumerate(table):
        x = ConvBlock(c, k, s, p, r, name=f"{prefix}_{i}", **kw)(x, False)
    return x


def _l2_normalise(x, eps=1e-12):
    """F.normalize(x, p=2, dim=1)."""
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SyncNet(nn.Module):
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, faces, mel):
        """faces (B, 48, 96, 15) in [0, 1]: the lower halves of 5 consecutive 96x96 face
        crops, channels frame-major in Wav2Lip's BGR order (`lower_half_crops`);
        mel (B, 80, 16) log-mel window (mel bins, steps) in [-4, 4].
        -> (audio_emb, face_emb), each (B, 512) float32, unit L2 norm."""
        if faces.shape[-3:] != FACE_SHAPE or mel.shape[-2:] != MEL_SHAPE:
            raise ValueError(f"SyncNet takes faces (B, {', '.join(map(str, FACE_SHAPE))}) and mel "
                             f"(B, {', '.join(map(str, MEL_SHAPE))}); got {faces.shape} and {mel.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        face = _encode(FACE_ENCODER, "face_encoder", faces.astype(self.dtype), **kw)
        audio = _encode(AUDIO_ENCODER, "audio_encoder", mel[..., None].astype(self.dtype), **kw)
        return _l2_normalise(audio), _l2_normalise(face)


def sync_loss(audio_emb, face_emb):
    """Wav2Lip's `cosine_loss` against label 1, per example (B,): BCE(cos(a, v), 1) =
    -log(cos), with cos clipped to [0, 1] and the log clamped at -100 like torch's BCELoss."""
    a = audio_emb.astype(jnp.float32)
    v = face_emb.astype(jnp.float32)
    # cosine_similarity with torch's eps = 1e-8 on the norms (the embeddings are unit norm anyway).
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), 1e-8)
    nv = jnp.maximum(jnp.linalg.norm(v, axis=-1), 1e-8)
    cos = jnp.clip(jnp.sum(a * v, axis=-1) / (na * nv), 0.0, 1.0)
    positive = cos > 0
    log = jnp.where(positive, jnp.log(jnp.where(positive, cos, 1.0)), -100.0)  # no NaN gradient at 0
    return -jnp.maximum(log, -100.0)


def lower_half_crops(frames, size: int = 96, bgr: bool = True):
    """Face crops (B, T, H, W, 3) RGB in [-1, 1] -> SyncNet input (B, size/2, size, 3T) in [0, 1].

    Each frame is resized to size x size (bilinear, antialiased), its lower half kept, and
    the T frames concatenated on channels in time order. `bgr` reverses the colour
    channels: Wav2Lip read its training frames with cv2 (BGR), so the expert sees BGR.
    """
    b, t, _, _, c = frames.shape
    x = jax.image.resize(frames.astype(jnp.float32), (b, t, size, size, c), "bilinear", antialias=True)
    x = (x[:, :, size // 2:] + 1) / 2
    if bgr:
        x = x[..., ::-1]
    return jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b, size - size // 2, size, t * c)


# ---------------------------------------------------------------- Wav2Lip checkpoints
def _block_entries(torch_prefix: str, name: str) -> List[Any]:
    """One Wav2Lip Conv2d (conv_block = [Conv2d, BatchNorm2d]) -> our ConvBlock `name`."""
    t = f"{torch_prefix}.conv_block"
    return ct._linear(f"{t}.0", (name, "conv"), layout="conv") + [
        ct.Entry(f"{t}.1.weight", "params", (name, "bn", "weight"), "same"),
        ct.Entry(f"{t}.1.bias", "params", (name, "bn", "bias"), "same"),
        ct.Entry(f"{t}.1.running_mean", "batch_stats", (name, "bn", "mean"), "same"),
        ct.Entry(f"{t}.1.running_var", "batch_stats", (name, "bn", "var"), "same"),
        ct.Entry(f"{t}.1.num_batches_tracked", "unused", (name, "bn", "num_batches_tracked"), "same")]


def _encoder_entries(prefix: str, table) -> List[Any]:
    return [e for i in range(len(table)) for e in _block_entries(f"{prefix}.{i}", f"{prefix}_{i}")]


def _wav2lip_state_dict(path: str) -> Dict[str, Any]:
    """Wav2Lip's checkpoint dict ({"state_dict", "optimizer", "global_step", ...}) or a bare
    state_dict, with DataParallel's `module.` prefixes removed (as Wav2Lip's load_checkpoint)."""
    ckpt = torch_io.load_pt(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(isinstance(v, np.ndarray) for v in sd.values()):
        keys = sorted(map(str, ckpt))[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ct.ConversionError(f"{path}: not a Wav2Lip checkpoint (no 'state_dict' of tensors; top level: {keys})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_syncnet(path: str) -> Dict[str, Any]:
    """A Wav2Lip `lipsync_expert.pth` -> SyncNet variables (float32 numpy trees)."""
    if not path:
        raise ValueError("syncnet.path is empty: the sync loss needs Wav2Lip's lip-sync expert "
                         "(lipsync_expert.pth from the Wav2Lip release)")
    entries = _encoder_entries("face_encoder", FACE_ENCODER) + _encoder_entries("audio_encoder", AUDIO_ENCODER)
    shapes = jax.eval_shape(SyncNet().init, jax.random.PRNGKey(0), jnp.zeros((1,) + FACE_SHAPE),
                            jnp.zeros((1,) + MEL_SHAPE))
    return ct.convert_entries(_wav2lip_state_dict(path), entries, shapes, path, "a Wav2Lip SyncNet_color")


def load_wav2lip_audio_encoder(path: str) -> Dict[str, Any]:
    """The `audio_encoder.*` tensors of a Wav2Lip checkpoint (wav2lip.pth, wav2lip_gan.pth or
    lipsync_expert.pth: the same stack) -> Audio2Lip's `audio_encoder_<i>` variables:
    {"params", "batch_stats", "unused"}, each {"audio_encoder_<i>": ...}. Merge them into an
    initialised Audio2Lip's collections; its `mapping` layer stays as initialised."""
    entries = _encoder_entries("audio_encoder", AUDIO_ENCODER)
    shapes = jax.eval_shape(Audio2Lip().init, jax.random.PRNGKey(0), jnp.zeros((1,) + MEL_SHAPE))
    return ct.convert_entries(_wav2lip_state_dict(path), entries, shapes, path, "a Wav2Lip audio encoder",
                              only="audio_encoder.")
