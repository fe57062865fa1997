"""Synthetic talking heads, part 1: the factors. Per speaker an identity (face shape,
colours, hair, voice pitch, background); per clip one emotion + level (MEAD style),
smooth random head pose, blinks, gaze, and speech-like audio whose amplitude envelope
drives the mouth. Everything is deterministic from the seed (docs/synthetic.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.preprocess import audio
from data_pipeline.records import schema

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
    # Multiplies every speaker's maximum lip opening (`max_open`, 0.16-0.22 face units):
    # at small frames a real-proportioned mouth opens by 1-2 px, too little for a lip
    # space to learn in minutes (configs/demo.py draws 2.5x; docs/synthetic.md).
    mouth_scale: float = 1.0


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
        "lip_up": u(0.05, 0.07), "lip_lo": u(0.07, 0.09), "max_open": u(0.16, 0.22) * cfg.mouth_scale,
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
