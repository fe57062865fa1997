"""LSE-D and LSE-C: the lip-sync error metrics of talking-head papers (Wav2Lip onwards), as
joonson/syncnet_python's `SyncNetInstance.evaluate` computes them with `syncnet_v2.model`.

What they measure. SyncNet embeds every 5-frame window of mouth motion (0.2 s of 25 fps
video) and the 0.2 s of audio at the same time into one 1024-d space, where in-sync pairs
are close. For each window i and each shift k in -vshift..vshift (15 frames = 0.6 s either
way) it takes the Euclidean distance between video window i and audio window i + k (a zero
vector past either end), and averages over windows: a curve `mdist[k]` of 2*vshift+1 mean
distances.

* LSE-D (lip-sync error distance) = min_k mdist[k], the mean distance at the best shift.
  Lower is better.
* LSE-C (lip-sync error confidence) = median_k mdist[k] - min_k mdist[k]: how far the best
  shift stands out from the rest. Higher is better; near 0 means no audio-visual
  correspondence (silence, a still mouth, or unrelated speech).
* offset = vshift - argmin_k: the best shift in frames (0 for a video in sync; > 0: the lips
  move `offset` frames after the sound, i.e. video window i matches audio window i - offset).

Real talking-face footage scores roughly 6.5-7 LSE-D and 7-8 LSE-C; papers report these
per-video values averaged over a test set.

What the official pipeline does before `evaluate` (run_pipeline.py), which our callers
replace by passing face crops: ffmpeg converts the video to 25 fps (`-qscale:v 2`) and 16 kHz
mono s16 audio; S3FD detects faces (scale 0.25, confidence 0.9) on every frame; faces are
tracked by IoU within detected scenes (tracks of > 100 frames, faces > 100 px); the box
centre and half-size s are median-filtered (13 frames) and a square of side 2.8 s is cut,
from 1 s above the box centre to 1.8 s below and 1.4 s to either side (frame padded with
grey 110), resized to 224x224 with cv2.resize (bilinear) and written as an XVID avi;
`evaluate` then re-extracts it to JPEGs with ffmpeg and reads them with cv2.imread (BGR).
`lse` takes the crops directly: frames not already 224x224 are resized as crop_video does
(cv2 INTER_LINEAR), then their channels reversed to BGR (the order the released weights
expect); values stay 0..255, unnormalised. The XVID and JPEG round trips are not
replicated, so scores on the same crops differ slightly from the official tool's.

Computation, as `evaluate` (batch_size 20 and vshift 15 are run_syncnet.py's defaults):
  audio: python_speech_features.mfcc(int16 samples, 16000) (13 cepstra, 25 ms windows every
    10 ms, c0 replaced by the log frame energy), transposed to (13, steps); a float wav in
    [-1, 1] is first quantised to int16 as ffmpeg's pcm_s16le does (round to nearest even
    of x * 32768, clipped). (The scale only moves c0; the quantisation is kept for exactness.)
  length: min_length = min(video frames, floor(samples / 640)); lastframe = min_length - 5;
    windows v = 0 .. lastframe - 1 (the official loop stops one window short of the last
    complete one), so a clip needs at least 6 frames of video and 6 * 640 samples of audio.
  window v: frames v .. v+4 and MFCC steps 4v .. 4v+19.
  distances: calc_pdist: || video_emb[i] - audio_emb[i+k-vshift] + 1e-6 || (torch's
    pairwise_distance adds eps to the difference), audio zero-padded by vshift at both ends.
  median: torch.median (the lower middle value; 2*vshift+1 is odd, so the plain median).
  frame-wise confidence (`framewise=True`): median(mdist) - dist[i, argmin], median-filtered
    over 9 windows (scipy.signal.medfilt), as evaluate prints it.

The embeddings run in one jitted program per batch size (the weights are an argument, not
constants), each batch padded to `batch_size` windows so every clip length reuses it.

Dependencies: python_speech_features (MFCC) and, for frames not already 224x224, OpenCV;
both are in the `data` extra.
"""

import warnings
from functools import partial
from typing import Any, Dict, Tuple

import jax
import numpy as np

from edtalk_jax.models.syncnet_v2 import LIP_SHAPE, MFCC_SHAPE, SyncNetV2, embed_dim_of

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_STEPS_PER_FRAME = 4  # 10 ms MFCC steps per 40 ms frame (the official's vframe * 4)
WINDOW = LIP_SHAPE[0]  # 5 frames
MFCC_WINDOW = MFCC_SHAPE[1]  # 20 steps
CROP = LIP_SHAPE[1]  # 224
MIN_FRAMES = WINDOW + 1  # evaluate scores min_length - 5 windows
PDIST_EPS = 1e-6  # torch.nn.functional.pairwise_distance's eps


def to_int16(wav: np.ndarray) -> np.ndarray:
    """Mono samples -> int16, as the official's ffmpeg `-acodec pcm_s16le` writes them: int16 is
    kept; floats in [-1, 1] become rint(x * 32768) clipped to [-32768, 32767]."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"LSE takes mono audio as a 1-D array of 16 kHz samples; got shape {wav.shape}")
    if wav.dtype == np.int16:
        return wav
    if wav.dtype.kind != "f":
        raise ValueError(f"LSE takes float audio in [-1, 1] or int16 samples; got dtype {wav.dtype}")
    return np.clip(np.rint(wav.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def mfcc_features(wav: np.ndarray) -> np.ndarray:
    """16 kHz mono audio -> (13, steps) float32 MFCCs, one step per 10 ms: the official's
    `numpy.stack(zip(*python_speech_features.mfcc(audio, 16000)))` on int16 samples."""
    try:
        import python_speech_features
    except ImportError as e:
        raise ImportError("LSE-C/D compute MFCCs with python_speech_features, as syncnet_python does: "
                          "pip install python_speech_features (part of edtalk-jax[data])") from e
    feats = python_speech_features.mfcc(to_int16(wav), SAMPLE_RATE)
    return np.ascontiguousarray(feats.T).astype(np.float32)


def _crops_bgr(frames: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) RGB -> (n, 224, 224, 3) BGR: cv2.resize's default bilinear as
    run_pipeline.crop_video, then the channel order cv2.imread gives the official."""
    if frames.shape[1:3] != (CROP, CROP):
        try:
            import cv2
        except ImportError as e:
            raise ImportError(f"LSE resizes {frames.shape[2]}x{frames.shape[1]} frames to {CROP}x{CROP} with "
                              "OpenCV, as syncnet_python does: pip install opencv-python-headless (part of "
                              "edtalk-jax[data]), or pass 224x224 crops") from e
        frames = np.stack([cv2.resize(f, (CROP, CROP), interpolation=cv2.INTER_LINEAR) for f in frames])
    return np.ascontiguousarray(frames[..., ::-1])


def window_count(num_frames: int, num_samples: int) -> int:
    """The number of 5-frame windows evaluate scores: min(frames, samples // 640) - 5.
    Raises ValueError when that is < 1, naming what is too short."""
    if num_frames < MIN_FRAMES:
        raise ValueError(f"LSE needs at least {MIN_FRAMES} video frames (the official scores "
                         f"min(frames, samples // 640) - {WINDOW} windows of {WINDOW} frames); got {num_frames}")
    audio_frames = num_samples // SAMPLES_PER_FRAME
    if audio_frames < MIN_FRAMES:
        raise ValueError(f"LSE needs at least {MIN_FRAMES * SAMPLES_PER_FRAME} audio samples ({MIN_FRAMES} "
                         f"frames of {SAMPLES_PER_FRAME} samples at {SAMPLE_RATE} Hz, 25 fps); got {num_samples} "
                         f"samples = {audio_frames} frames, shorter than the video's first window")
    return min(num_frames, audio_frames) - WINDOW


@partial(jax.jit, static_argnums=0)
def _embed_batch(model: SyncNetV2, variables, lips, mfcc):
    return (model.apply(variables, lips, method=SyncNetV2.embed_lip),
            model.apply(variables, mfcc, method=SyncNetV2.embed_audio))


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    return x if len(x) == n else np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])


def embeddings(frames: np.ndarray, wav: np.ndarray, variables, *, batch_size: int = 20
               ) -> Tuple[np.ndarray, np.ndarray]:
    """The official's (im_feat, cc_feat): (n, D) float32 video and audio embeddings of the
    n = window_count(...) windows. frames: uint8 (T, H, W, 3) RGB face crops at 25 fps;
    wav: 16 kHz mono (float in [-1, 1], or int16); variables: `load_syncnet_v2`."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"LSE takes uint8 RGB face crops (T, H, W, 3); got {frames.dtype} {frames.shape}")
    wav = to_int16(wav)
    n = window_count(len(frames), len(wav))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    mfcc = mfcc_features(wav)
    if mfcc.shape[1] < MFCC_STEPS_PER_FRAME * (n - 1) + MFCC_WINDOW:  # (cannot happen for 16 kHz audio)
        raise ValueError(f"audio gives {mfcc.shape[1]} MFCC steps, fewer than the {n} windows need")
    model = SyncNetV2(embed_dim_of(variables))
    variables = jax.device_put(variables)  # once, not per batch
    video, audio = [], []
    for i in range(0, n, batch_size):
        m = min(n, i + batch_size) - i
        crops = _crops_bgr(frames[i:i + m + WINDOW - 1])
        lips = np.stack([crops[v:v + WINDOW] for v in range(m)])
        cc = np.stack([mfcc[:, s:s + MFCC_WINDOW] for s in range(MFCC_STEPS_PER_FRAME * i,
                                                                   MFCC_STEPS_PER_FRAME * (i + m),
                                                                   MFCC_STEPS_PER_FRAME)])
        v, a = _embed_batch(model, variables, _pad(lips, batch_size), _pad(cc, batch_size))
        video.append(v[:m])
        audio.append(a[:m])
    return np.concatenate([np.asarray(v) for v in video]), np.concatenate([np.asarray(a) for a in audio])


def sync_distances(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = 15) -> np.ndarray:
    """The official calc_pdist as an (n, 2*vshift+1) array: [i, k] = || video_emb[i] -
    audio_emb[i + k - vshift] + 1e-6 ||, the audio zero-padded by vshift at both ends."""
    v = np.asarray(video_emb, np.float32)
    a = np.asarray(audio_emb, np.float32)
    n = len(v)
    padded = np.concatenate([np.zeros((vshift,) + a.shape[1:], a.dtype), a,
                             np.zeros((vshift,) + a.shape[1:], a.dtype)])
    out = np.empty((n, 2 * vshift + 1), np.float64)
    for k in range(2 * vshift + 1):
        diff = (v - padded[k:k + n]) + np.float32(PDIST_EPS)  # float32, as torch
        out[:, k] = np.sqrt(np.sum(np.square(diff, dtype=np.float64), axis=1))
    return out


def _lower_median(x: np.ndarray) -> float:
    """torch.median: the lower of the two middle values for an even count."""
    return float(np.sort(x)[(len(x) - 1) // 2])


def scores(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = 15, framewise: bool = False
           ) -> Dict[str, Any]:
    """LSE-D, LSE-C and the offset from the official (im_feat, cc_feat) (see the module docstring)."""
    dists = sync_distances(video_emb, audio_emb, vshift)
    mdist = dists.mean(axis=0)
    minidx = int(np.argmin(mdist))
    minval = float(mdist[minidx])
    median = _lower_median(mdist)
    out = {"lse_d": minval, "lse_c": median - minval, "offset": vshift - minidx, "frames": len(dists)}
    if framewise:
        from scipy import signal
        with warnings.catch_warnings():  # clips under 9 windows: zero-padded, as the official
            warnings.filterwarnings("ignore", "kernel_size exceeds volume extent")
            conf = signal.medfilt(median - dists[:, minidx], kernel_size=9)
        out["frame_conf"] = conf.astype(np.float32)
    return out


def lse(frames: np.ndarray, wav: np.ndarray, variables, batch_size: int = 20, *, vshift: int = 15,
        framewise: bool = False) -> Dict[str, Any]:
    """LSE-D / LSE-C of one clip, as syncnet_python's SyncNetInstance.evaluate.

    frames: uint8 (T, H, W, 3) RGB face crops at 25 fps (resized to 224x224 and reversed to BGR
    here; see the module docstring for the crop the official pipeline makes); wav: 16 kHz mono,
    float32 in [-1, 1] (or int16); variables: `models.syncnet_v2.load_syncnet_v2(path)`.
    -> {"lse_d": float (lower is better), "lse_c": float (higher is better), "offset": int
    (frames; 0 in sync), "frames": int (windows scored: min(T, samples // 640) - 5)}, plus
    "frame_conf" (frames,) float32 with `framewise=True`. ValueError for a clip under 6 frames
    of video or audio."""
    video, audio = embeddings(frames, wav, variables, batch_size=batch_size)
    return scores(video, audio, vshift, framewise)
