"""Audio front end: decoding to 16 kHz mono and the Wav2Lip log-mel windows EDTalk feeds
its Audio2Lip network (official `audio.py`, `hparams.py` and `get_mel`, spec §4.3).

The mel is computed in float64 and cast to float32 at the end, which reproduces the
official front end exactly (max abs error 0 on the parity fixture).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import tempfile
from typing import Iterator, Union

import av
import librosa
import numpy as np
import scipy.signal
import soxr

PathLike = Union[str, bytes, os.PathLike]

SAMPLE_RATE = 16000
FPS = 25
N_FFT = 800
HOP = 200
WIN = 800
NUM_MELS = 80
MEL_STEPS = 16  # mel frames per window (syncnet_mel_step_size)
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
# Written as the official `_amp_to_db` computes it (not the literal 1e-5) to keep parity.
_MIN_LEVEL = np.exp(MIN_LEVEL_DB / 20 * np.log(10))

# Containers whose audio stream duration comes from the header, exactly. Elsewhere
# (mp3/adts without an index, matroska without a Duration) FFmpeg may estimate it from
# the bitrate, so a shorter decode there proves nothing.
_EXACT_DURATION_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "flac")


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the file and the problem."""


def _label(path: PathLike) -> str:
    """The path as printable text, whatever bytes the file name holds."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


CHUNK_SECONDS = 10.0  # audio is decoded and resampled in pieces of about this length


def load_audio(path: PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes the first audio stream of `path` to float32 mono at `sr` Hz (all of it; see
    `iter_audio` for the format rules and errors, and `SpooledAudio` for long tracks)."""
    return np.ascontiguousarray(np.concatenate(list(iter_audio(path, sr))), dtype=np.float32)


def iter_audio(path: PathLike, sr: int = SAMPLE_RATE,
               chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
    """Decodes the first audio stream of `path` to float32 mono at `sr` Hz, in chunks.

    Any container/codec FFmpeg (PyAV) reads: wav, mp3, m4a/aac, flac, or the audio track
    of a video (mp4, mov, mkv, avi). Several channels are averaged to mono (as
    `librosa.to_mono`). Integer PCM maps to [-1, 1) (int16 / 32768); float PCM and
    resampled audio are not clipped. Other rates are resampled with soxr 'HQ', the
    default of `librosa.load` since librosa 0.10 (the official code ran librosa 0.8, whose
    default was resampy 'kaiser_best'; 16 kHz input is untouched, hence bit-exact). The
    resampler streams (soxr.ResampleStream), which gives the same samples as resampling
    the whole track at once (bit-identical here), so memory is bounded by `chunk_seconds`
    of decoded audio whatever the track's length. The file is opened by Python, so any
    file name works.

    Raises AudioError naming the file when it is missing, unreadable, truncated, has no
    audio stream or no samples (a file found truncated or corrupt midway raises after
    the chunks before the damage: use the samples only once the iteration completes).
    """
    name = _label(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise AudioError(f"{name}: empty file")
            _check_wav_header(f, name)
            f.seek(0)
            yield from _decode(f, name, sr, chunk_seconds)
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except (OSError, av.FFmpegError) as e:
        raise AudioError(f"{name}: not a readable media file ({e.strerror or e})") from e


def _decode(f, name: str, sr: int, chunk_seconds: float) -> Iterator[np.ndarray]:
    """The first audio stream, mono, resampled to `sr`, in chunks of about chunk_seconds."""
    with av.open(f, mode="r") as container:
        if not container.streams:
            raise AudioError(f"{name}: no streams found (not a media file, or truncated)")
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams})
            raise AudioError(f"{name}: no audio stream ({container.format.name} container "
                             f"with only {', '.join(kinds)})")
        stream = container.streams.audio[0]
        rate = stream.rate
        declared = None  # samples the header declares (exact in these formats)
        if container.format.name in _EXACT_DURATION_FORMATS and stream.duration:
            declared = round(float(stream.duration * stream.time_base) * rate)
        to_float = av.AudioResampler(format="fltp")  # sample format only; keeps rate, layout
        resampler = None if rate == sr else soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ")
        budget = max(1, int(chunk_seconds * rate))
        state = dict(decoded=0, longest=0, held=0)  # source samples: decoded, longest frame, in parts
        parts: list = []  # mono source-rate samples waiting for the resampler
        tail: list = []  # past `declared`: AAC end padding unless there is more than a frame

        def take(mono, last=False):
            if mono is not None and len(mono):
                if not np.isfinite(mono).all():
                    raise AudioError(f"{name}: audio holds NaN or infinite samples")
                parts.append(mono)
                state["held"] += len(mono)
            if parts and (last or state["held"] >= budget):
                block = np.concatenate(parts) if len(parts) > 1 else parts[0]
                parts.clear()
                state["held"] = 0
                out = block if resampler is None else resampler.resample_chunk(block, last=last)
                if len(out):
                    yield out
            elif last and resampler is not None:
                out = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                if len(out):
                    yield out

        def frames():
            try:
                for frame in container.decode(stream):
                    state["longest"] = max(state["longest"], frame.samples)
                    state["decoded"] += frame.samples
                    yield from to_float.resample(frame)
                yield from to_float.resample(None)
            except av.FFmpegError as e:
                raise AudioError(f"{name}: corrupt or truncated audio, decoding failed after "
                                 f"{state['decoded'] / rate:.3f} s ({e.strerror or e})") from e

        seen = 0  # source samples converted so far
        for chunk in frames():
            mono = chunk.to_ndarray().mean(axis=0)
            if declared is not None and seen + len(mono) > declared:
                cut = max(0, declared - seen)
                yield from take(mono[:cut])
                tail.append(mono[cut:])
                if sum(len(t) for t in tail) > state["longest"]:  # more than padding: keep it all
                    for t in tail:
                        yield from take(t)
                    tail.clear()
                    declared = None
            else:
                yield from take(mono)
            seen += len(mono)
        # AAC in mp4 decodes the encoder's end padding (< one codec frame) past the
        # declared duration; FFmpeg's command line drops it too. The tail is left out.
        if seen == 0:
            raise AudioError(f"{name}: the audio stream holds no samples")
        if declared is not None and seen < declared - max(2 * state["longest"], rate // 50):
            raise AudioError(f"{name}: truncated: decoded {seen / rate:.3f} s of the "
                             f"{declared / rate:.3f} s the container declares")
        yield from take(None, last=True)


class SpooledAudio:
    """A whole track at 16 kHz, decoded in chunks into an anonymous temporary file (float32)
    and read back by sample range, so a long video's audio is not held in memory.

    Behaves like the 1-d float32 array `load_audio` returns, shifted by `offset` samples
    (positive: that many zeros first; negative: the first -offset samples dropped):
    `len(track)` and `track[a:b]` (a slice, step 1; past the end it is shorter, as
    numpy's). The file is unlinked when created, so nothing is left behind; close() (or
    dropping the object) frees it. Raises AudioError as `iter_audio`.
    """

    def __init__(self, path: PathLike, offset: int = 0, sr: int = SAMPLE_RATE,
                 chunk_seconds: float = CHUNK_SECONDS, directory=None):
        self._file = tempfile.TemporaryFile(dir=directory)
        try:
            count = 0
            for chunk in iter_audio(path, sr, chunk_seconds):
                self._file.write(np.ascontiguousarray(chunk, np.float32).tobytes())
                count += len(chunk)
        except BaseException:
            self._file.close()
            raise
        self.num_decoded, self.offset = count, int(offset)

    def __len__(self) -> int:
        return max(0, self.num_decoded + self.offset)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("SpooledAudio supports slices with step 1 only")
        start, stop, _ = index.indices(len(self))
        out = np.zeros(max(0, stop - start), np.float32)
        lo, hi = max(start - self.offset, 0), min(stop - self.offset, self.num_decoded)
        if hi > lo:  # source samples [lo, hi) land at out[lo + offset - start:]
            self._file.seek(lo * 4)
            at = lo + self.offset - start
            out[at : at + hi - lo] = np.frombuffer(self._file.read((hi - lo) * 4), np.float32)
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_wav_header(f, name: str) -> None:
    """Raises AudioError when a RIFF/WAVE data chunk declares more bytes than the file holds.

    FFmpeg silently shortens such a file, so a cut-off download would pass as valid.
    Streamed WAVs (data size 0 or 0xFFFFFFFF) and RF64 are left to the decoder.
    """
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    size = os.fstat(f.fileno()).st_size
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
        if chunk_id == b"data":
            present = size - pos - 8
            if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > present:
                raise AudioError(f"{name}: truncated WAV: the data chunk declares "
                                 f"{chunk_size} bytes but {present} are present")
            return
        pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes


def num_video_frames(num_samples: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Whole video frames covered by `num_samples` (official `parse_audio_length`)."""
    return int(num_samples / (sr / fps))


def crop_pad_audio(wav: np.ndarray, num_frames: int, sr: int = SAMPLE_RATE,
                   fps: float = FPS) -> np.ndarray:
    """Trims or zero-pads `wav` to exactly `num_frames` video frames of samples."""
    length = int(num_frames * (sr / fps))
    if len(wav) >= length:
        return wav[:length]
    return np.pad(wav, (0, length - len(wav)))


@functools.lru_cache(maxsize=None)
def _mel_basis() -> np.ndarray:
    # The official float32 filters, widened exactly to float64: a mixed float32 x float64
    # np.dot skips BLAS and is ~10x slower.
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=55,
                                fmax=7600, dtype=np.float32).astype(np.float64)
    basis.setflags(write=False)
    return basis


def log_mel(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel spectrogram of 16 kHz audio, float32 (n_mel_frames, 80) in [-4, 4].

    n_mel_frames = len(wav) // 200 + 1. Official Wav2Lip `melspectrogram`, including the
    'reflect' STFT padding of librosa 0.7/0.8 (librosa >= 0.10 pads with zeros).
    """
    wav = np.asarray(wav)
    if wav.ndim != 1 or len(wav) <= N_FFT // 2:
        raise ValueError(f"log_mel needs 1-d audio longer than {N_FFT // 2} samples, "
                         f"got shape {wav.shape}")
    emphasized = scipy.signal.lfilter([1, -PREEMPHASIS], [1], wav.astype(np.float64))
    spec = np.abs(librosa.stft(emphasized, n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                               pad_mode="reflect"))
    db = 20 * np.log10(np.maximum(_MIN_LEVEL, np.dot(_mel_basis(), spec))) - REF_LEVEL_DB
    normalised = np.clip((2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB))
                         - MAX_ABS_VALUE, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return np.ascontiguousarray(normalised.T, dtype=np.float32)


def frame_windows(mel: np.ndarray, num_frames: int, fps: float = FPS) -> np.ndarray:
    """The 16-step mel window of each video frame, float32 (num_frames, 80, 16).

    Frame i starts at mel frame int(80 * ((i - 2) / fps)) (truncated toward zero, so
    frames 0 and 1 start before the audio); indices are clipped to the mel's range.
    """
    steps = (MEL_FPS * ((np.arange(num_frames) - 2) / float(fps))).astype(np.int64)
    idx = np.clip(steps[:, None] + np.arange(MEL_STEPS), 0, len(mel) - 1)
    return np.ascontiguousarray(mel[idx].transpose(0, 2, 1), dtype=np.float32)


def mel_windows(wav: np.ndarray, num_frames: int | None = None, fps: float = FPS) -> np.ndarray:
    """Per-video-frame mel windows (T, 80, 16) of 16 kHz audio, as the official demos.

    T defaults to the whole frames in `wav`; the audio is trimmed or zero-padded to T
    frames before the mel is taken.
    """
    if num_frames is None:
        num_frames = num_video_frames(len(wav), fps=fps)
    if num_frames < 1:
        raise ValueError(f"audio of {len(wav)} samples is shorter than one video frame")
    return frame_windows(log_mel(crop_pad_audio(wav, num_frames, fps=fps)), num_frames, fps)


@dataclasses.dataclass(frozen=True)
class AudioFeatures:
    mel: np.ndarray  # float32 (n_mel_frames, 80), of the audio trimmed to whole frames
    windows: np.ndarray  # float32 (T, 80, 16)
    duration_s: float  # of the decoded audio, before trimming


def audio_features(path: PathLike, fps: float = FPS) -> AudioFeatures:
    """Decodes `path` and computes its mel and per-frame windows (raises AudioError)."""
    wav = load_audio(path)
    num_frames = num_video_frames(len(wav), fps=fps)
    if num_frames < 1:
        raise AudioError(f"{_label(path)}: {len(wav) / SAMPLE_RATE:.3f} s of audio is "
                         f"shorter than one video frame at {fps} fps")
    mel = log_mel(crop_pad_audio(wav, num_frames, fps=fps))
    return AudioFeatures(mel, frame_windows(mel, num_frames, fps), len(wav) / SAMPLE_RATE)


def wav_to_int16(wav: np.ndarray) -> np.ndarray:
    """float audio -> int16 PCM (x * 32768, rounded, saturated); exact inverse of int16_to_wav."""
    return np.clip(np.round(np.asarray(wav, np.float64) * 32768), -32768, 32767).astype(np.int16)


def int16_to_wav(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1), the scaling every decoder (and librosa) uses."""
    return np.asarray(pcm, np.int16).astype(np.float32) / 32768.0
