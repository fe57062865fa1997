"""Video decoding with PyAV, resampled to a constant frame rate by timestamps.

Resampling rule: output frame k stands for the interval [k/fps, (k+1)/fps) and shows
the source frame whose presentation interval [pts_i, pts_{i+1}) covers t = k/fps. An
output frame exists only while its whole interval lies inside the video, so a video
ending at time D gives floor(D * fps) frames, the same count rule as audio
(floor(samples / 640)). This handles 30 fps or 50 fps input (frames dropped),
12 fps input (frames repeated) and variable frame rate (irregular pts) alike.

Times are relative to the video stream's start_time (the first frame when the
stream does not say), so audio from the same container is aligned by subtracting the
audio stream's own start (see `VideoInfo.audio_offset`).

`iter_frames` is a generator holding two decoded frames at a time: a 20-minute video
streams in constant memory. Frames can be converted on the fly to a smaller size and
to grayscale (one swscale call), which is what face detection wants.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
from typing import Iterator, Optional, Sequence, Tuple

import av
import numpy as np

from data_pipeline.schema import FPS

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")


class VideoError(ValueError):
    """A file that cannot be decoded as video (corrupt, truncated, no video stream)."""


def display_path(path) -> str:
    """A printable form of a path, also for non-UTF-8 file names."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float  # the container's average rate (0.0 when unknown)
    duration: float  # seconds, from the container (an estimate; decoding is the truth)
    has_audio: bool
    audio_offset: float  # first decoded audio sample's time minus the video start, seconds


def _open(path):
    try:
        container = av.open(os.fsdecode(path))
    except (av.error.FFmpegError, OSError, UnicodeError) as e:
        raise VideoError(f"{display_path(path)}: cannot open as video ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{display_path(path)}: no video stream")
    return container


def _seconds(value, time_base) -> Optional[fractions.Fraction]:
    if value is None or time_base is None:
        return None
    return fractions.Fraction(value) * time_base


def _first_audio_time(container, stream) -> Optional[fractions.Fraction]:
    """Time of the first decoded audio sample: what a decoder (load_audio) returns first.

    Differs from the stream's start_time when the codec drops priming samples.
    """
    try:
        for frame in container.decode(stream):
            if frame.pts is not None:
                return _seconds(frame.pts, frame.time_base or stream.time_base)
            break
    except av.error.FFmpegError:
        pass
    return _seconds(stream.start_time, stream.time_base)


def probe(path) -> VideoInfo:
    """Reads the container header (decodes only the first audio frame)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.base_rate or 0
        duration = _seconds(stream.duration, stream.time_base)
        if duration is None and container.duration is not None:
            duration = fractions.Fraction(container.duration, av.time_base)
        width, height = int(ctx.width), int(ctx.height)
        offset = 0.0
        if container.streams.audio:
            a0 = _first_audio_time(container, container.streams.audio[0])
            v0 = _seconds(stream.start_time, stream.time_base)
            if a0 is not None and v0 is not None:
                offset = float(a0 - v0)
        return VideoInfo(
            path=display_path(path),
            width=width,
            height=height,
            fps=float(rate),
            duration=float(duration or 0.0),
            has_audio=bool(container.streams.audio),
            audio_offset=offset,
        )


class FrameStream:
    """Iterates (k, frame) for output frames k = 0, stride, 2*stride, ... at constant `fps`.

    frame: uint8 (H, W, 3) RGB, or (H, W) when gray; resized to size=(width, height)
    with area interpolation when given. Any pixel format or odd size is converted.
    After a complete iteration `num_frames` holds the number of output frames (also
    those skipped by the stride). Raises VideoError naming the file when decoding fails.
    """

    def __init__(self, path, fps: int = FPS, stride: int = 1, size: Optional[Tuple[int, int]] = None,
                 gray: bool = False, max_seconds: Optional[float] = None):
        self.path, self.fps, self.stride, self.size, self.gray = path, fps, stride, size, gray
        self.max_seconds = max_seconds
        self.num_frames: Optional[int] = None

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray]]:
        self.num_frames = None
        step = fractions.Fraction(1, self.fps)
        limit = None
        if self.max_seconds is not None:
            limit = fractions.Fraction(self.max_seconds).limit_denominator(10**6)
        fmt = "gray" if self.gray else "rgb24"
        width, height = self.size if self.size else (None, None)
        stride, path = self.stride, self.path
        k = 0  # next output index
        pending = None  # (k, frame) waiting until we know its interval ends inside the video
        cache = [None, None]  # the last converted av frame and its array (frames repeat)

        def convert(frame):
            if cache[0] is not frame:  # holding the frame keeps its id from being reused
                out = frame.reformat(width=width, height=height, format=fmt, interpolation="AREA")
                # swscale pads rows to an aligned stride; dlib ignores strides.
                cache[:] = [frame, np.ascontiguousarray(out.to_ndarray())]
            return cache[1]

        def emit(frame, until):
            # Output frames whose sample time k/fps lies before `until` show `frame`.
            nonlocal k, pending
            while k * step < until:
                if limit is not None and (k + 1) * step > limit:
                    if pending is not None:
                        yield pending
                        pending = None
                    return True
                if pending is not None:
                    yield pending
                    pending = None
                if k % stride == 0:
                    pending = (k, convert(frame))
                k += 1
            return False

        container = _open(path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base = stream.time_base
            origin = _seconds(stream.start_time, base)
            prev, t_prev, prev_duration, last_delta = None, None, None, None
            rate = stream.average_rate
            default_delta = 1 / fractions.Fraction(rate) if rate else step
            for frame in container.decode(stream):
                t = _seconds(frame.pts, base)
                if t is not None:
                    origin = t if origin is None else origin
                    t -= origin
                elif prev is not None:  # no timestamp: assume the nominal rate
                    t = t_prev + (last_delta or default_delta)
                if prev is None:
                    # The first frame also covers any gap before it.
                    prev, t_prev, prev_duration = frame, fractions.Fraction(0), _seconds(frame.duration, base)
                    continue
                if t <= t_prev:
                    continue  # non-increasing timestamps: keep the earlier frame
                if (yield from emit(prev, t)):
                    self.num_frames = k
                    return
                last_delta = t - t_prev
                prev, t_prev, prev_duration = frame, t, _seconds(frame.duration, base)
            if prev is None:
                raise VideoError(f"{display_path(path)}: no decodable video frames")
            end = t_prev + (prev_duration or last_delta or default_delta)
            if (yield from emit(prev, end)):
                self.num_frames = k
                return
            # An output frame exists only if its whole interval ends inside the video.
            if pending is not None and (pending[0] + 1) * step <= end:
                yield pending
            self.num_frames = min(k, int(end / step))
        except av.error.FFmpegError as e:
            raise VideoError(f"{display_path(path)}: corrupt video data near output frame {k} ({e})") from e
        finally:
            container.close()


def iter_frames(path, fps: int = FPS, stride: int = 1, size: Optional[Tuple[int, int]] = None,
                gray: bool = False, max_seconds: Optional[float] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """(k, frame) pairs of a FrameStream (see there)."""
    return iter(FrameStream(path, fps, stride, size, gray, max_seconds))


def read_frames(path, fps: int = FPS, max_seconds: Optional[float] = None) -> np.ndarray:
    """All frames at constant `fps` as uint8 (T, H, W, 3) RGB (use iter_frames for long videos)."""
    frames = [f for _, f in iter_frames(path, fps=fps, max_seconds=max_seconds)]
    return np.stack(frames)


class VideoWriter:
    """Streams uint8 frames, (N, H, W, 3) RGB or (N, H, W) gray batches, into `path`
    (container from the extension) with optional mono float audio (AAC), muxed at close.

    `times` gives each frame's presentation time in seconds (variable frame rate);
    by default frames are 1/fps apart. libx264 with yuv420p needs even sizes; use
    yuv444p (or ffv1 in .mkv) for odd ones. Use as a context manager: the file is
    complete when the `with` block ends without an error.
    """

    def __init__(self, path, fps: int = FPS, times: Optional[Sequence[float]] = None,
                 audio: Optional[np.ndarray] = None, sample_rate: int = 16000, codec: str = "libx264",
                 pix_fmt: str = "yuv420p", options: Optional[dict] = None):
        self.path, self.fps, self.times = path, fps, times
        self.audio, self.sample_rate = audio, sample_rate
        self.codec, self.pix_fmt, self.options = codec, pix_fmt, dict(options or {})
        self.tb = fractions.Fraction(1, 1000) if times is not None else fractions.Fraction(1, fps)
        self.container = av.open(os.fsdecode(path), "w")
        self.stream = self.audio_stream = None
        self.count = 0

    def _open_stream(self, height: int, width: int) -> None:
        stream = self.container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = self.pix_fmt
        stream.time_base = stream.codec_context.time_base = self.tb
        stream.options = self.options
        self.stream = stream
        if self.audio is not None:  # every stream must exist before the first packet
            self.audio_stream = self.container.add_stream("aac", rate=self.sample_rate, layout="mono")

    def write(self, frames) -> None:
        frames = np.asarray(frames, np.uint8)
        if self.stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        gray = frames.ndim == 3
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="gray" if gray else "rgb24")
            i = self.count
            frame.pts = i if self.times is None else int(round(self.times[i] * 1000))
            frame.time_base = self.tb
            self.container.mux(self.stream.encode(frame))
            self.count += 1

    def close(self) -> None:
        try:
            if self.stream is not None:
                self.container.mux(self.stream.encode())
            if self.audio_stream is not None:
                audio_stream = self.audio_stream
                samples = np.asarray(self.audio, np.float32).reshape(1, -1)
                for start in range(0, samples.shape[1], 1024):
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]),
                                                       format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts = self.sample_rate, start
                    self.container.mux(audio_stream.encode(chunk))
                self.container.mux(audio_stream.encode())
        finally:
            self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.container.close()


def write_video(path, frames, fps: int = FPS, times: Optional[Sequence[float]] = None,
                audio: Optional[np.ndarray] = None, sample_rate: int = 16000, codec: str = "libx264",
                pix_fmt: str = "yuv420p", options: Optional[dict] = None) -> None:
    """Encodes all of `frames` at once (VideoWriter, whose docstring says the rest)."""
    with VideoWriter(path, fps, times, audio, sample_rate, codec, pix_fmt, options) as writer:
        writer.write(frames)
