"""Synthetic talking heads: procedurally drawn faces with known per-frame factors.

The embedded default dataset (docs/synthetic.md). Per speaker an identity (face shape,
colours, hair, voice pitch, background); per clip one emotion + level (MEAD style),
smooth random head pose, blinks, gaze, and speech-like audio whose amplitude envelope
drives the mouth. Each clip is a schema record: frames, mel windows of its own audio,
the drawn dlib-68 landmarks and the factors. Everything is deterministic from the seed.

Head frame: x right, y down, z toward the camera; the face is an ellipsoid with
half-height 1. Pose R = Rz(roll) Rx(pitch) Ry(yaw), orthographic projection: yaw > 0
turns the nose toward image +x, pitch > 0 tilts it down, roll > 0 turns the face
clockwise on screen.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import time

import cv2
import numpy as np

from data_pipeline import audio, schema, shards

FACTOR_NAMES = (
    "yaw", "pitch", "roll",  # degrees
    "tx", "ty", "scale",  # translation in fractions of the frame side; face scale
    "mouth_open", "lip_round",  # speech: 0..1 (see speech_factors)
    "blink", "gaze_x", "gaze_y",  # 0..1 eyelid closure; -1..1 iris offset
    "expr_intensity",  # level scale x ramp-in, 0 for neutral
    "brow_raise", "brow_furrow", "brow_tilt", "eye_open", "mouth_corner", "mouth_width",
    "mouth_asym", "lip_raise", "jaw_open",  # expression parameters (face units)
)
_EXPR = FACTOR_NAMES[12:]
# Expression parameters at level 3; levels 1 and 2 scale them by LEVEL_SCALE.
EMOTION_PARAMS = {
    #            raise furrow tilt  eye   corner width asym  l.raise jaw
    "neutral":   (0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),
    "angry":     (-0.04, 0.07, -0.08, 0.10, -0.04, -0.10, 0.00, 0.00, 0.00),
    "contempt":  (0.02, 0.00, 0.00, -0.15, 0.02, 0.00, 0.08, 0.00, 0.00),
    "disgusted": (-0.02, 0.05, -0.04, -0.30, -0.05, -0.05, 0.00, 0.05, 0.00),
    "fear":      (0.08, 0.04, 0.07, 0.45, -0.03, 0.15, 0.00, 0.00, 0.05),
    "happy":     (0.02, 0.00, 0.00, -0.30, 0.10, 0.20, 0.00, 0.00, 0.02),
    "sad":       (0.00, 0.03, 0.10, -0.25, -0.07, -0.05, 0.00, 0.00, 0.00),
    "surprised": (0.13, 0.00, 0.02, 0.60, 0.00, -0.15, 0.00, 0.00, 0.12),
}
LEVEL_SCALE = {1: 0.45, 2: 0.75, 3: 1.0}
POSE_RANGE = {"yaw": 25.0, "pitch": 15.0, "roll": 10.0, "tx": 0.05, "ty": 0.05, "scale": 0.1}
# Background stripes with a period under this many pixels would alias into moire
# patterns (at 32^2 the widest are 2.6 px); they are drawn as their mean shade instead.
MIN_STRIPE_PERIOD_PX = 4.0
ENVELOPE_WINDOW = 1280  # 80 ms Hann window for mouth_open / lip_round


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_speakers: int = 8
    clips_per_speaker: int = 4
    frames_per_clip: int = 125  # 5 s at 25 fps, as the official clips
    size: int = 256  # frame side in pixels (64..512)
    jpeg_quality: int = schema.JPEG_QUALITY  # the one default (schema.py, measured)
    seed: int = 0
    emotions: tuple[str, ...] = schema.EMOTIONS  # emotions used; see clip_emotion


def clip_emotion(cfg: SyntheticConfig, speaker: int, clip_index: int) -> tuple[str, int]:
    """Clip 0 of every speaker is neutral (level 1), so stage 1 always finds a neutral
    source; clip c > 0 takes the non-neutral emotions in turn, offset by speaker, at
    level 1 + ((c - 1) // n_emotions + speaker) % 3."""
    others = [e for e in cfg.emotions if e != "neutral"]
    has_neutral = "neutral" in cfg.emotions
    if (has_neutral and clip_index == 0) or not others:
        return "neutral", 1
    k = clip_index - 1 if has_neutral else clip_index
    return others[(k + speaker) % len(others)], 1 + (k // len(others) + speaker) % 3


# --- identity ---------------------------------------------------------------------------

_HAIR = np.array([(25, 20, 20), (60, 40, 28), (110, 72, 40), (195, 160, 100), (150, 65, 30),
                  (165, 165, 160)], np.float64)
_IRIS = np.array([(80, 50, 30), (60, 100, 150), (70, 110, 70), (110, 110, 120)], np.float64)


def identity(cfg: SyntheticConfig, speaker: int) -> dict:
    """The constant look and voice of a speaker."""
    rng = np.random.default_rng([cfg.seed, 0, speaker])
    u = rng.uniform
    tone = u(0, 1)
    skin = np.array([238, 205, 180]) * (1 - tone) + np.array([105, 68, 50]) * tone
    skin = np.clip(skin + u(-10, 10, 3), 0, 255)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] + u(-12, 12, 3), 0, 255)
    return {
        "brow": np.minimum(hair, skin * 0.75) * 0.7,  # darker than the skin, whatever the hair
        "a": u(0.68, 0.82), "c": u(0.75, 0.9), "jaw": u(0.15, 0.4),
        "skin": skin, "lip": np.clip(skin * [0.8, 0.5, 0.5] + [45, 5, 10], 0, 255), "hair": hair,
        "iris": np.clip(_IRIS[rng.integers(len(_IRIS))] + u(-10, 10, 3), 0, 255),
        "clothes": u(30, 220, 3), "bg": (u(40, 230, 3), u(40, 230, 3)),
        "bg_angle": u(0, 2 * np.pi), "bg_stripes": int(rng.integers(0, 3)) * u(0.03, 0.08),
        "hair_len": u(0, 1), "hair_vol": u(0, 1), "hairline": u(-0.72, -0.5),
        "hair_wave": u(0, 0.06), "hair_part": u(-0.1, 0.1),
        "eye_y": u(-0.16, -0.1), "eye_x": u(0.29, 0.35), "eye_w": u(0.2, 0.24),
        "eye_h": u(0.07, 0.09), "brow_gap": u(0.17, 0.22), "brow_th": u(0.04, 0.06),
        "brow_arch": u(0.02, 0.06), "nose_y": u(0.18, 0.26), "nose_len": u(0.15, 0.25),
        "nose_w": u(0.9, 1.2), "mouth_y": u(0.48, 0.55), "mouth_w": u(0.25, 0.31),
        "lip_up": u(0.05, 0.07), "lip_lo": u(0.07, 0.09), "max_open": u(0.16, 0.22),
        "f0": u(95, 230),
    }


# --- per-frame factors ------------------------------------------------------------------

def _smooth(rng, t: int, max_hz: float = 0.5) -> np.ndarray:
    """A smooth random trajectory in [-1, 1]: offset + three sinusoids."""
    freq, phase = rng.uniform(0.05, max_hz, (3, 1)), rng.uniform(0, 2 * np.pi, (3, 1))
    amp = rng.uniform(0.2, 1, (3, 1))
    amp *= 0.75 / amp.sum()
    waves = amp * np.sin(2 * np.pi * freq * np.arange(t) / schema.FPS + phase)
    return rng.uniform(-0.25, 0.25) + waves.sum(0)


def _blinks(rng, t: int) -> np.ndarray:
    blink, k = np.zeros(t), int(rng.integers(0, 60))
    while k < t:
        d = int(rng.integers(4, 7))
        idx = np.arange(k, min(t, k + d))
        blink[idx] = np.sin(np.pi * (idx - k + 0.5) / d)
        k += d + int(rng.integers(40, 120))
    return blink


def speech(rng, num_samples: int, f0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speech-like audio: syllables at 3-6 Hz with sin^2 amplitude envelopes (peak
    0.35..1), voiced harmonics of `f0` shaped by two formants set by each syllable's
    lip rounding (0 = spread "ae", 1 = rounded "u"), unvoiced noise bursts before some
    syllables, and a faint noise floor. Returns (wav float32 in [-1, 1], envelope,
    rounding), the last two per sample."""
    sr = schema.SAMPLE_RATE
    env, rnd = np.zeros(num_samples), np.zeros(num_samples)
    syl = np.zeros(num_samples, np.int64)
    wav = 0.003 * rng.standard_normal(num_samples)
    t, weights = rng.uniform(0, 0.3), [np.zeros(1)]
    while t * sr < num_samples:
        if rng.random() < 0.15:
            t += rng.uniform(0.15, 0.5)  # a pause between phrases
        dur, peak, rounding = rng.uniform(1 / 6, 1 / 3), rng.uniform(0.35, 1), rng.random()
        s0, s1 = int(t * sr), min(num_samples, int((t + dur) * sr))
        if s1 > s0:
            env[s0:s1] = peak * np.sin(np.pi * (np.arange(s0, s1) - t * sr) / (dur * sr)) ** 2
            rnd[s0:s1], syl[s0:s1] = rounding, len(weights)
            harmonics = f0 * np.arange(1, int(3800 / f0) + 1)
            f1, f2 = 700 - 350 * rounding, 2000 - 1200 * rounding
            w = (np.exp(-0.5 * ((harmonics - f1) / 90) ** 2)
                 + 0.6 * np.exp(-0.5 * ((harmonics - f2) / 120) ** 2) + 0.15 * f0 / harmonics)
            weights.append(w / np.sqrt((w ** 2).sum() / 2))  # unit RMS per syllable
        if rng.random() < 0.5:  # a consonant-like burst centred on the syllable onset
            n = int(rng.uniform(0.02, 0.06) * sr)
            b0 = max(0, s0 - n // 2)
            burst = np.diff(rng.standard_normal(n + 1)) * np.hanning(n) * 0.12 * peak
            wav[b0:b0 + n] += burst[: len(wav[b0:b0 + n])]
        t += dur
    k_max = max(len(w) for w in weights)
    table = np.zeros((len(weights), k_max))
    for i, w in enumerate(weights):
        table[i, : len(w)] = w
    time_s = np.arange(num_samples) / sr
    pitch = f0 * (1 + 0.06 * np.sin(2 * np.pi * 0.5 * time_s + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    # sin((k+1) phase) by the Chebyshev recurrence: one multiply-add per harmonic.
    two_cos, previous, current = 2 * np.cos(phase), np.zeros(num_samples), np.sin(phase)
    voiced = table[syl, 0] * current
    for k in range(1, k_max):
        previous, current = current, two_cos * current - previous
        voiced += table[syl, k] * current
    wav += 0.25 * env * voiced
    return np.clip(wav, -1, 1).astype(np.float32), env, rnd


def speech_factors(env: np.ndarray, rounding: np.ndarray,
                   num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """mouth_open[k] = sum_n w(n) env(c_k + n) / sum w, with w an 80 ms Hann window
    centred on frame k's centre sample c_k = 640 k + 320 (no lag; the mel window of
    frame k is centred there too). lip_round uses env * rounding the same way."""
    half = ENVELOPE_WINDOW // 2
    w = np.hanning(ENVELOPE_WINDOW + 1)
    w /= w.sum()
    centres = np.arange(num_frames) * schema.SAMPLES_PER_FRAME + schema.SAMPLES_PER_FRAME // 2
    idx = centres[:, None] + np.arange(-half, half + 1)
    pad = lambda x: np.pad(x, (half, half))[idx + half]  # noqa: E731
    return np.clip(pad(env) @ w, 0, 1), np.clip(pad(env * rounding) @ w, 0, 1)


def clip_factors(cfg: SyntheticConfig, ident: dict, speaker: int, clip_index: int):
    """(factors (T, F) float32, audio int16, emotion, level) of one clip."""
    t = cfg.frames_per_clip
    rng = np.random.default_rng([cfg.seed, 1, speaker, clip_index])
    f = {name: POSE_RANGE[name] * _smooth(rng, t) for name in ("yaw", "pitch", "roll", "tx", "ty")}
    f["scale"] = 1 + POSE_RANGE["scale"] * _smooth(rng, t)
    wav, env, rounding = speech(rng, t * schema.SAMPLES_PER_FRAME, ident["f0"])
    f["mouth_open"], f["lip_round"] = speech_factors(env, rounding, t)
    f["blink"] = _blinks(rng, t)
    f["gaze_x"], f["gaze_y"] = _smooth(rng, t, 0.3), 0.5 * _smooth(rng, t, 0.3)
    emotion, level = clip_emotion(cfg, speaker, clip_index)
    ramp_frames = int(rng.integers(0, 13))
    ramp = np.clip((np.arange(t) + 1) / (ramp_frames + 1), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    f["expr_intensity"] = (0.0 if emotion == "neutral" else LEVEL_SCALE[level]) * ramp
    for name, value in zip(_EXPR, EMOTION_PARAMS[emotion]):
        f[name] = value * LEVEL_SCALE[level] * ramp
    factors = np.stack([np.broadcast_to(f[n], (t,)) for n in FACTOR_NAMES], 1).astype(np.float32)
    return factors, audio.wav_to_int16(wav), emotion, level


# --- geometry ---------------------------------------------------------------------------

FACE_PX = 0.36  # face half-height in frame sides at scale 1 (a FOMM-style crop)
CENTER = (0.5, 0.48)  # head centre in frame sides at tx = ty = 0
_U13 = np.linspace(0, 1, 13)
_EYE_LMK = [0, 4, 8, 12, 16, 20]  # 36-41 / 42-47 in an eye contour (upper 13 + lower 11)
_OUTER_LMK = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]  # 48-59 in the outer lip contour
_INNER_LMK = [0, 4, 6, 8, 12, 16, 18, 20]  # 60-67 in the inner lip contour


def _rotation(f: dict) -> np.ndarray:
    """(T, 3, 3) R = Rz(roll) Rx(pitch) Ry(yaw)."""
    y, p, r = (np.radians(f[k]) for k in ("yaw", "pitch", "roll"))
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], -1)
    rx = np.stack([one, zero, zero, zero, np.cos(p), np.sin(p), zero, -np.sin(p), np.cos(p)], -1)
    rz = np.stack([np.cos(r), -np.sin(r), zero, np.sin(r), np.cos(r), zero, zero, zero, one], -1)
    return rz.reshape(-1, 3, 3) @ rx.reshape(-1, 3, 3) @ ry.reshape(-1, 3, 3)


def _contour(x_up, y_up, x_lo, y_lo, z_fn, lift=0.0):
    """Closed contour: upper curve (13 points, left to right), lower curve back (11)."""
    x = np.concatenate([x_up, x_lo[:, -2:0:-1]], 1)
    y = np.concatenate([y_up, y_lo[:, -2:0:-1]], 1)
    return np.stack([x, y, z_fn(x, y) + lift], -1)


def _geometry(ident: dict, f: dict, size: int) -> tuple[dict, np.ndarray]:
    """Projected 2D points (pixels) of every drawn part, (T, n, 2) each, and the
    per-frame pixels per face unit."""
    a, c = ident["a"], ident["c"]
    t = len(f["yaw"])
    col = lambda v: np.asarray(v, np.float64).reshape(-1, 1)  # noqa: E731
    surf = lambda x, y: c * np.sqrt(np.clip(1 - (x / a) ** 2 - y ** 2, 0.02, 1))  # noqa: E731
    rot = _rotation(f)
    opening = col(ident["max_open"] * f["mouth_open"] + f["jaw_open"])
    parts = {}

    # Silhouette of the head ellipsoid: the ellipse where its normal is perpendicular
    # to the view direction, parametrised so that angle 0 is +x and pi/2 the chin.
    diag = np.array([a * a, 1.0, c * c])
    normal = rot[:, 2, :] / diag
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    u1 = np.array([1.0, 0, 0]) - normal[:, :1] * normal
    u1 /= np.linalg.norm(u1, axis=1, keepdims=True)
    u2 = np.cross(normal, u1)
    u2 *= np.sign(u2[:, 1:2])

    def ring(angles):
        d = np.cos(angles)[:, None] * u1[:, None] + np.sin(angles)[:, None] * u2[:, None]
        return d / np.sqrt((d * d / diag).sum(-1, keepdims=True))

    def jaw(p):
        below = np.clip((p[..., 1] - 0.1) / 0.9, 0, 1)
        p[..., 0] *= 1 - ident["jaw"] * below ** 1.5
        p[..., 1] += 0.55 * opening * np.clip((p[..., 1] - 0.35) / 0.65, 0, 1)
        return p

    d = 0.12
    jaw_t = np.pi + d - np.linspace(0, 1, 33) * (np.pi + 2 * d)
    top_t = -d - np.linspace(0, 1, 25)[1:-1] * (np.pi - 2 * d)
    parts["outline"] = jaw(ring(np.concatenate([jaw_t, top_t])))
    back = ring(np.linspace(0, 2 * np.pi, 48, endpoint=False))
    grow = 1.08 + 0.15 * ident["hair_vol"]
    back[..., 0] *= grow
    # Short hair ends above the ears, long hair falls below the chin.
    back[..., 1] = np.where(back[..., 1] < 0, back[..., 1] * grow,
                            np.minimum(back[..., 1] * 2, -0.3 + 2.3 * ident["hair_len"]))
    parts["hair_back"] = back
    h0 = np.arcsin(-ident["hairline"])
    # 3 % outside the face edge, so no anti-aliased seam of skin shows through.
    parts["hair_arc"] = 1.03 * ring(-h0 - np.linspace(0, 1, 16) * (np.pi - 2 * h0))
    hx = np.linspace(-1, 1, 16) * a * np.cos(h0)
    hy = ident["hairline"] + ident["hair_wave"] * np.sin(9 * hx) + ident["hair_part"] * hx
    parts["hairline"] = np.stack([hx, hy, surf(hx, hy)], -1)[None]
    parts["ears"] = np.array([[[-0.97 * a, 0.02, -0.15 * c], [0.97 * a, 0.02, -0.15 * c]]])
    parts["neck"] = np.array([[[-0.32, 0.6, -0.3 * c], [0.32, 0.6, -0.3 * c]]])

    # Brows: centre lines (landmarks) and the filled, tapered outline around them.
    w = np.linspace(0, 1, 9)[None]  # inner (0) to outer (1)
    furrow, tilt = col(f["brow_furrow"]), col(f["brow_tilt"])
    inner, outer = 0.09 - 0.4 * furrow, ident["eye_x"] + ident["eye_w"] / 2 + 0.05
    arch = ident["brow_arch"] * np.sin(np.pi * (0.15 + 0.7 * w))
    by = (ident["eye_y"] - ident["brow_gap"] - col(f["brow_raise"]) - arch
          - (tilt - 0.5 * furrow) * (1 - w))
    half = ident["brow_th"] * (1 - 0.5 * w) / 2
    for side, sign in (("l", -1), ("r", 1)):
        bx = sign * (inner + w * (outer - inner))
        if sign < 0:  # image-left brow: landmarks 17-21 run outer to inner
            bx, by_s, half_s = bx[:, ::-1], by[:, ::-1], half[:, ::-1]
        else:
            by_s, half_s = by, half
        bx = np.broadcast_to(bx, by_s.shape)
        parts[f"brow_{side}"] = np.stack([bx, by_s, surf(bx, by_s) + 0.03], -1)
        px = np.concatenate([bx, bx[:, ::-1]], 1)
        py = np.concatenate([by_s - half_s, (by_s + half_s)[:, ::-1]], 1)
        parts[f"brow_{side}_fill"] = np.stack([px, py, surf(px, py) + 0.03], -1)

    # Eyes: lids as sine arcs; the upper lid closes onto the lower one.
    openness = col(np.clip((1 + f["eye_open"]) * (1 - f["blink"]), 0, 2))
    s = np.sin(np.pi * _U13)[None] ** 0.9
    h = ident["eye_h"]
    for side, sign in (("l", -1), ("r", 1)):
        cx = sign * ident["eye_x"]
        ex = np.broadcast_to(cx + (_U13 - 0.5)[None] * ident["eye_w"], (t, 13))
        y_lo = ident["eye_y"] + 0.6 * h * s
        y_up = ident["eye_y"] + (0.6 * h - (1.6 * h) * openness) * s
        parts[f"eye_{side}"] = _contour(ex, y_up, ex, np.broadcast_to(y_lo, (t, 13)), surf, 0.02)
        gx = cx + 0.25 * ident["eye_w"] * col(f["gaze_x"])
        gy = ident["eye_y"] + 0.3 * h * col(f["gaze_y"])
        parts[f"iris_{side}"] = np.stack([gx, gy, surf(gx, gy) + 0.02], -1)

    ny, nl = ident["nose_y"], ident["nose_len"]
    k = np.linspace(0, 1, 4)
    y = ident["eye_y"] + (ny - ident["eye_y"]) * k
    parts["nose_bridge"] = np.stack([0 * k, y, surf(0, y) + nl * (0.1 + 0.9 * k)], -1)[None]
    x = np.array([-0.11, -0.055, 0, 0.055, 0.11]) * ident["nose_w"]
    y = ny + np.array([0.05, 0.07, 0.08, 0.07, 0.05])
    z = surf(x, y) + nl * np.array([0.35, 0.55, 0.6, 0.55, 0.35])
    parts["nose_base"] = np.stack([x, y, z], -1)[None]

    # Mouth: corner curvature and asymmetry bend the mouth line; the opening is
    # parabolic in x and the lower lip carries 70 % of it (the jaw drops).
    mw = ident["mouth_w"] * (1 + col(f["mouth_width"])) * (1 - 0.25 * col(f["lip_round"]))
    lift = col(f["lip_raise"])

    def lip_lines(u):
        """(upper inner, lower inner, mouth line, opening profile) at x = mw * u."""
        line = (ident["mouth_y"] - col(f["mouth_corner"]) * u ** 2
                - col(f["mouth_asym"]) * np.maximum(u, 0) ** 2)
        prof = 1 - u ** 2
        return line - (0.3 * opening + lift) * prof, line + 0.7 * opening * prof, line, prof

    u = np.linspace(-1, 1, 13)[None]
    up, lo, _, prof = lip_lines(u)
    bow = 0.25 * ident["lip_up"] * np.exp(-(u / 0.15) ** 2)  # Cupid's bow
    up_out = up - lift * prof - ident["lip_up"] * (0.3 + 0.7 * prof) + bow
    lo_out = lo + ident["lip_lo"] * (0.3 + 0.7 * prof)
    up_in, lo_in, line, prof_in = lip_lines(0.88 * u)
    up_in[:, [0, -1]] = lo_in[:, [0, -1]] = line[:, [0, -1]]  # inner corners on the mouth line
    lips = lambda x, y: surf(x, y) + 0.05 * np.sqrt(np.clip(1 - (x / mw) ** 2, 0, 1))  # noqa: E731
    xo, xi = mw * u, 0.88 * mw * u
    parts["mouth_outer"] = _contour(xo, up_out, xo, lo_out, lips)
    parts["mouth_inner"] = _contour(xi, up_in, xi, lo_in, lips)
    teeth = up_in + np.minimum(0.06, 0.45 * (lo_in - up_in)) * np.sqrt(prof_in)
    parts["teeth"] = _contour(xi, up_in, xi, teeth, lips)

    names = list(parts)
    pts = np.concatenate([np.broadcast_to(parts[n], (t,) + parts[n].shape[1:]) for n in names], 1)
    unit = col(FACE_PX * size * f["scale"])
    xy = np.einsum("tij,tnj->tni", rot[:, :2], pts) * unit[..., None]
    xy += np.stack([(CENTER[0] + col(f["tx"])) * size, (CENTER[1] + col(f["ty"])) * size], -1)
    out, start = {}, 0
    for n in names:
        out[n] = xy[:, start:start + parts[n].shape[1]]
        start += parts[n].shape[1]
    return out, unit[:, 0]


def landmarks68(p: dict) -> np.ndarray:
    """The dlib-68 points (T, 68, 2) among the drawn parts."""
    return np.concatenate([
        p["outline"][:, 0:33:2], p["brow_l"][:, 0:9:2], p["brow_r"][:, 0:9:2],
        p["nose_bridge"], p["nose_base"], p["eye_l"][:, _EYE_LMK], p["eye_r"][:, _EYE_LMK],
        p["mouth_outer"][:, _OUTER_LMK], p["mouth_inner"][:, _INNER_LMK]], 1).astype(np.float32)


# --- drawing ----------------------------------------------------------------------------

_SHIFT = 4  # OpenCV sub-pixel bits: coordinates are drawn at 1/16 pixel


def _fix(xy) -> np.ndarray:
    return np.round(np.asarray(xy) * (1 << _SHIFT)).astype(np.int32)


def _fill(img, pts, color) -> None:
    cv2.fillPoly(img, [_fix(pts)], tuple(map(float, color)), cv2.LINE_AA, _SHIFT)


def _line(img, pts, color, thickness) -> None:
    cv2.polylines(img, [_fix(pts)], False, tuple(map(float, color)), thickness, cv2.LINE_AA, _SHIFT)


def _ellipse(img, center, axes, angle, color) -> None:
    cv2.ellipse(img, tuple(_fix(center).tolist()), tuple(_fix(np.maximum(axes, 0.5)).tolist()),
                float(angle), 0, 360, tuple(map(float, color)), -1, cv2.LINE_AA, _SHIFT)


def _background(ident: dict, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    cos, sin = np.cos(ident["bg_angle"]), np.sin(ident["bg_angle"])
    g = np.clip(xx * cos + yy * sin + 0.5, 0, 1)[..., None]
    img = ident["bg"][0] * (1 - g) + ident["bg"][1] * g
    period_px = ident["bg_stripes"] * size
    if period_px >= MIN_STRIPE_PERIOD_PX:
        stripes = np.sin(2 * np.pi * (xx * sin - yy * cos) / ident["bg_stripes"]) > 0
        img *= 1 - 0.1 * stripes[..., None]
    elif period_px > 0:  # finer than the pixel grid can show: drawn as its mean shade, not aliased
        img *= 1 - 0.05
    return img.astype(np.uint8)


def _iris(img, contour, center, radius, color) -> None:
    """Iris, pupil and highlight, clipped to the eye opening (anti-aliased mask)."""
    h, w = img.shape[:2]
    x0, y0 = np.maximum(np.floor(contour.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(contour.max(0)).astype(int) + 2, (w, h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    roi = img[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fix(contour - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    layer = roi.copy()
    c = center - (x0, y0)
    _ellipse(layer, c, (radius, radius), 0, color)
    _ellipse(layer, c, (0.45 * radius, 0.45 * radius), 0, (15, 12, 12))
    _ellipse(layer, c - 0.35 * radius, (0.18 * radius, 0.18 * radius), 0, (250, 250, 250))
    alpha = mask[..., None].astype(np.float32) / 255
    roi[:] = (roi * (1 - alpha) + layer * alpha + 0.5).astype(np.uint8)


def _draw(bg: np.ndarray, p: dict, k: int, unit: float, ident: dict, f: dict) -> np.ndarray:
    """Frame k of a clip, uint8 (H, W, 3) RGB."""
    img, size = bg.copy(), bg.shape[0]
    g = {name: v[k] for name, v in p.items()}
    skin, hair, lip = ident["skin"], ident["hair"], ident["lip"]
    thin = max(1, int(round(unit * 0.015)))
    _fill(img, g["hair_back"], hair)
    top = g["neck"]
    bottom = [(top[1, 0] + 0.03 * size, size + 2), (top[0, 0] - 0.03 * size, size + 2)]
    _fill(img, [top[0], top[1], *bottom], skin * 0.82)
    shoulders = ((0.5 + 0.5 * f["tx"][k]) * size, 1.1 * size)
    _ellipse(img, shoulders, (0.42 * size, 0.2 * size), 0, ident["clothes"])
    for ear in g["ears"]:
        _ellipse(img, ear, (0.1 * unit, 0.18 * unit), f["roll"][k], skin * 0.9)
    _fill(img, g["outline"], skin)
    _line(img, g["outline"][:33], skin * 0.8, thin)  # the jaw edge; hair hides the top
    _fill(img, np.vstack([g["hair_arc"], g["hairline"]]), hair)
    _fill(img, g["brow_l_fill"], ident["brow"])
    _fill(img, g["brow_r_fill"], ident["brow"])
    for side in "lr":
        eye = g[f"eye_{side}"]
        _fill(img, eye, (240, 237, 230))
        _iris(img, eye, g[f"iris_{side}"][0], 0.055 * unit, ident["iris"])
        _line(img, eye[:13], (45, 30, 30), thin)
    _line(img, g["nose_bridge"] + (0.03 * unit, 0), skin * 0.88, thin)
    base = g["nose_base"]
    wings = (base[0] + (-0.02 * unit, -0.05 * unit), base[4] + (0.02 * unit, -0.05 * unit))
    _line(img, np.vstack([wings[0], base, wings[1]]), skin * 0.72, thin)
    for a, b in ((1, 2), (3, 2)):
        nostril = 0.6 * base[a] + 0.4 * base[b] - (0, 0.015 * unit)
        _ellipse(img, nostril, (0.025 * unit, 0.013 * unit), f["roll"][k], skin * 0.45)
    _fill(img, g["mouth_outer"], lip)
    _fill(img, g["mouth_inner"], (70, 20, 25))
    _fill(img, g["teeth"], (236, 232, 222))
    _line(img, g["mouth_inner"][:13], lip * 0.6, thin)
    return img


# --- clips and datasets -----------------------------------------------------------------

def _check(cfg: SyntheticConfig) -> None:
    bad = [e for e in cfg.emotions if e not in schema.EMOTIONS]
    if bad or not cfg.emotions:
        raise ValueError(f"emotions {cfg.emotions} must be a non-empty subset of {schema.EMOTIONS}")
    if cfg.size < 32 or min(cfg.frames_per_clip, cfg.num_speakers, cfg.clips_per_speaker) < 1:
        raise ValueError(f"invalid {cfg}: size >= 32 and at least one speaker, clip, frame")


def speaker_id(speaker: int) -> str:
    return f"S{speaker:03d}"


def draw_frames(cfg: SyntheticConfig, speaker: int,
                factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speaker `speaker` drawn with any factors (T, F) in FACTOR_NAMES order: frames
    uint8 (T, size, size, 3) RGB and landmarks float32 (T, 68, 2)."""
    factors = np.asarray(factors, np.float32)
    if factors.ndim != 2 or factors.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"factors must be (T, {len(FACTOR_NAMES)}), got {factors.shape}")
    ident = identity(cfg, speaker)
    f = {name: factors[:, i].astype(np.float64) for i, name in enumerate(FACTOR_NAMES)}
    parts, unit = _geometry(ident, f, cfg.size)
    bg = _background(ident, cfg.size)
    frames = np.stack([_draw(bg, parts, k, unit[k], ident, f) for k in range(len(factors))])
    return frames, landmarks68(parts)


def render_clip(cfg: SyntheticConfig, speaker: int, clip_index: int) -> dict:
    """Clip `clip_index` of speaker `speaker` as a schema record (pure, deterministic)."""
    _check(cfg)
    factors, pcm, emotion, level = clip_factors(cfg, identity(cfg, speaker), speaker, clip_index)
    images, landmarks = draw_frames(cfg, speaker, factors)
    t = cfg.frames_per_clip
    frames = [shards.encode_jpeg(img, cfg.jpeg_quality) for img in images]
    meta = schema.make_meta(
        dataset="synthetic", speaker=speaker_id(speaker),
        clip_id=f"{speaker_id(speaker)}#{emotion}#level_{level}#{clip_index:03d}",
        emotion=emotion, level=level, fps=schema.FPS, num_frames=t, size=cfg.size,
        source=f"synthetic:seed={cfg.seed},speaker={speaker},clip={clip_index}",
        factor_names=",".join(FACTOR_NAMES))
    mel = audio.mel_windows(audio.int16_to_wav(pcm), num_frames=t)
    return {"frames": frames, "mel_windows": mel, "landmarks": landmarks,
            "landmark_valid": np.ones(t, bool), "audio": pcm, "factors": factors, "meta": meta}


def _encoded(task) -> bytes:
    cfg, speaker, clip_index = task
    return shards.encode_clip(render_clip(cfg, speaker, clip_index))


def write_dataset(cfg: SyntheticConfig, out_dir: str | os.PathLike, workers: int | None = None,
                  progress: bool = True) -> dict:
    """Renders the dataset into `out_dir/synthetic/S###.array_record` (one shard per
    speaker), then writes the manifest and splits (a held-out speaker fraction by
    stable hash). Speakers whose shard exists are skipped, so an interrupted run
    resumes; `out_dir/synthetic_config.json` must match `cfg` to resume. Clips render
    in `workers` processes (default: all cores; <= 1: in this process)."""
    from tqdm import tqdm

    _check(cfg)
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "synthetic"), exist_ok=True)
    cfg_path = os.path.join(out_dir, "synthetic_config.json")
    cfg_json = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if os.path.exists(cfg_path):
        with open(cfg_path) as fh:
            if json.load(fh) != cfg_json:
                raise ValueError(f"{cfg_path} differs from {cfg}: resume with the same "
                                 "settings or write to another directory")
    else:
        with open(cfg_path, "w") as fh:
            json.dump(cfg_json, fh, indent=1)

    def path(speaker: int) -> str:
        return os.path.join(out_dir, "synthetic", speaker_id(speaker) + shards.SHARD_SUFFIX)

    todo = [s for s in range(cfg.num_speakers) if not os.path.exists(path(s))]
    tasks = [(cfg, s, c) for s in todo for c in range(cfg.clips_per_speaker)]
    workers = os.cpu_count() if workers is None else workers
    start = time.perf_counter()
    pool = None
    if workers > 1 and len(tasks) > 1:  # spawn: safe beside threads (jax, grain) in the parent
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        results = pool.map(_encoded, tasks) if pool else map(_encoded, tasks)
        with tqdm(total=len(tasks), unit="clip", disable=not progress or not tasks) as bar:
            for s in todo:  # results arrive in task order: speaker by speaker
                with shards.ShardWriter(path(s)) as writer:
                    for _ in range(cfg.clips_per_speaker):
                        writer.write_encoded(next(results))
                        bar.update()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - start
    manifest = shards.write_manifest(out_dir)
    splits = shards.write_splits(out_dir, other="by_speaker_hash")
    skipped = (cfg.num_speakers - len(todo)) * cfg.clips_per_speaker
    return {"clips_written": len(tasks), "clips_skipped": skipped,
            "num_clips": manifest["num_clips"], "train": len(splits["train"]),
            "test": len(splits["test"]), "seconds": seconds,
            "frames_per_s": len(tasks) * cfg.frames_per_clip / max(seconds, 1e-9)}
