"""The demo job: every inference mode of EDTalk on the embedded synthetic dataset.

Builds (or reuses) the synthetic dataset, loads the official checkpoints when given
(otherwise initialises the models randomly from the config and says so), encodes one
source face once, and renders a held-out speaker's clip in each mode, batched over
frames: EDTalk-V (lip, pose, expression from video), EDTalk-A (lip from the clip's audio
through Audio2Lip, smoothed as official), and the 8 predefined emotions. Writes one mp4
per mode (with the clip's audio), a contact sheet and `report.json` with timings.
"""

import json
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import inference, model_io
from edtalk_jax.models import build_model, example_inputs


def _model(kinds, cfg: Dict[str, Any], checkpoint: Optional[str], seed: int, dtype):
    """(model, variables, provenance): from `checkpoint` (its kind must be one of `kinds`)
    or randomly initialised as kinds[0] with `cfg`."""
    if checkpoint:
        kind, cfg, variables = model_io.load_any(checkpoint)
        if kind not in kinds:
            raise ValueError(f"{checkpoint}: holds a {kind}, expected one of {kinds}")
        source = checkpoint
    else:
        kind = kinds[0]
        model = build_model(kind, cfg)
        variables = jax.jit(model.init)(jax.random.PRNGKey(seed), *example_inputs(kind, cfg))
        source = "random init (no checkpoint given): the output is untrained"
    return build_model(kind, cfg, dtype=dtype), variables, source


def _to_uint8(images) -> np.ndarray:
    return np.asarray(jnp.round((jnp.clip(images, -1, 1) + 1) * 127.5), np.uint8)


def _render(fn, source, drivers: Dict[str, np.ndarray], chunk: int):
    """Runs `fn(source, **drivers)` over the frame axis in chunks of the compiled batch size.
    -> uint8 (T, S, S, 3) and the frames/s of the chunks after the first (which compiles)."""
    t = len(next(iter(drivers.values())))
    frames, timed, seconds = [], 0, 0.0
    for i in range(0, t, chunk):
        part = {k: v[i:i + chunk] for k, v in drivers.items()}
        n = len(next(iter(part.values())))
        if n < chunk:  # pad to the compiled batch size
            part = {k: np.concatenate([v, np.repeat(v[-1:], chunk - n, 0)]) for k, v in part.items()}
        start = time.perf_counter()
        frames.append(_to_uint8(fn(source, **part))[:n])
        if i:
            timed, seconds = timed + n, seconds + time.perf_counter() - start
    return np.concatenate(frames), (timed / seconds if timed else None)


def run_demo(config, workdir: str, checkpoint: Optional[str] = None, audio2lip: Optional[str] = None,
             chunk: int = 8, max_frames: int = 24, progress: bool = True) -> Dict[str, Any]:
    from data_pipeline import audio, schema, shards, synthetic
    from data_pipeline.video_io import write_video

    m = config.model
    kind = m.kind
    cfg = {k: m[k] for k in ("size", "width_div", "channels", "style_dim", "lip_dim", "pose_dim", "exp_dim",
                             "bank_mode", "eem_hidden") if m[k] is not None}
    dtype = jnp.dtype(m.dtype)
    data_dir = os.path.join(workdir, "data")
    syn = config.data.synthetic
    scfg = synthetic.SyntheticConfig(num_speakers=syn.speakers, clips_per_speaker=syn.clips_per_speaker,
                                     frames_per_clip=syn.frames_per_clip, size=m.size, seed=syn.seed)
    t0 = time.perf_counter()
    synthetic.write_dataset(scfg, data_dir, workers=config.data.workers, progress=progress)
    data_seconds = time.perf_counter() - t0

    kinds = (kind,) + tuple(k for k in ("generator", "lip_pose") if k != kind)  # a checkpoint decides
    model, variables, model_source = _model(kinds, cfg, checkpoint, config.seed, dtype)
    a2l, a2l_vars, a2l_source = _model(("audio2lip",), {"lip_dim": model.lip_dim}, audio2lip, config.seed, dtype)
    source_img = shards.ClipStore(data_dir, "train").clip(0)["frames"][:1]
    drive_clip = shards.ClipStore(data_dir, "test").clip(0)
    t = min(max_frames, len(drive_clip["frames"]))
    drive_clip.update(frames=drive_clip["frames"][:t], mel_windows=drive_clip["mel_windows"][:t],
                      audio=drive_clip["audio"][:t * schema.SAMPLES_PER_FRAME])
    frames = drive_clip["frames"].astype(np.float32) / 127.5 - 1

    encode = jax.jit(lambda v, x: inference.encode_source(model, v, x))
    source = encode(variables, jnp.asarray(source_img, jnp.float32) / 127.5 - 1)
    lip_alpha = inference.smooth_coefficients(
        jax.jit(a2l.apply)(a2l_vars, jnp.asarray(drive_clip["mel_windows"]))[None])[0]

    @jax.jit
    def render_chunk(v, src, **drivers):  # weights are an argument, not baked-in constants
        batch = jax.tree_util.tree_map(lambda a: jnp.repeat(a, chunk, 0), src)  # one source, `chunk` frames
        return inference.drive(model, v, batch, **drivers)["image"]

    render = lambda src, **drivers: render_chunk(variables, src, **drivers)

    modes = {"video": dict(lip_img=frames, pose_img=frames),
             "audio": dict(lip_alpha=np.asarray(lip_alpha), pose_img=frames)}
    if model.exp_dim:
        modes["video"]["exp_img"] = frames
        modes["audio"]["exp_img"] = frames
        for name, alpha in inference.predefined_emotions().items():
            if alpha.shape[0] == model.exp_dim:
                modes[f"emotion_{name}"] = dict(lip_alpha=np.asarray(lip_alpha), pose_img=frames,
                                                exp_alpha=np.repeat(alpha[None], len(frames), 0))
    out_dir = os.path.join(workdir, "demo")
    os.makedirs(out_dir, exist_ok=True)
    wav = audio.int16_to_wav(drive_clip["audio"])
    report = {"model": model_source, "audio2lip": a2l_source, "config": cfg, "dtype": str(dtype),
              "device": str(jax.devices()[0]), "synthetic_data_seconds": round(data_seconds, 2),
              "frames": len(frames), "modes": {}}
    sheet = [np.concatenate([source_img[0], drive_clip["frames"][len(frames) // 2]], axis=1)]
    for name, drivers in modes.items():
        video, fps = _render(render, source, drivers, chunk)
        path = os.path.join(out_dir, f"{name}.mp4")
        write_video(path, video, audio=wav)
        report["modes"][name] = {"video": path, "frames_per_second": fps and round(fps, 3)}
        sheet.append(np.concatenate([video[0], video[len(video) // 2]], axis=1))
        if progress:
            print(f"{name}: {len(video)} frames ({fps or float('nan'):.2f} frames/s after compile) -> {path}")
    _write_png(os.path.join(out_dir, "contact_sheet.png"), np.concatenate(sheet, axis=0))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    return report


def _write_png(path: str, rgb: np.ndarray) -> None:
    import cv2
    if not cv2.imwrite(path, rgb[..., ::-1]):
        raise OSError(f"could not write {path}")
