"""Video decoding with PyAV, resampled to a constant frame rate by timestamps.

Resampling rule: output frame k stands for the interval [k/fps, (k+1)/fps) and shows
the source frame whose presentation interval [pts_i, pts_{i+1}) covers t = k/fps. An
output frame exists only while its whole interval lies inside the video, so a video
ending at time D gives floor(D * fps) frames, the same count rule as audio
(floor(samples / 640)). This handles 30 fps or 50 fps input (frames dropped),
12 fps input (frames repeated) and variable frame rate (irregular pts) alike.

Timestamp gaps: with `max_gap` set, a source frame followed by the next one more than
`max_gap` seconds later (or a first frame that late, or a last frame lasting that long)
is a hole, not a long frame: it shows only in the one output frame sampled within 1/fps
of its time, and the other output frames of the hole have no frame at all (they are
listed in `FrameStream.gaps`, and a clip must be cut there). Without `max_gap` every
frame is held until the next, however long.

Orientation and pixel shape: frames come out as they are meant to be displayed. The
display matrix (the rotation phones write, or the older `rotate` stream tag) is applied
in multiples of 90 degrees with its flips, as FFmpeg's command line does; a sample
aspect ratio other than 1 is resampled to square pixels by stretching the short side
(`probe` reports that upright, square-pixel size).

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
import math
import os
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

import av
import numpy as np

from data_pipeline.records.schema import FPS

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")


class VideoError(ValueError):
    """A file that cannot be decoded as video (corrupt, truncated, no video stream)."""


def display_path(path) -> str:
    """A printable form of a path, also for non-UTF-8 file names."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # as displayed: upright and in square pixels (what FrameStream yields)
    height: int
    fps: float  # the container's average rate (0.0 when unknown)
    duration: float  # seconds, from the container (an estimate; decoding is the truth)
    has_audio: bool
    audio_offset: float  # first decoded audio sample's time minus the video start, seconds
    rotation: int = 0  # degrees clockwise that turn the coded frames upright (0, 90, 180, 270)
    mirrored: bool = False  # the display matrix also mirrors (applied before the rotation)
    sample_aspect_ratio: float = 1.0  # of the coded pixels (width : height of one pixel)
    coded_width: int = 0  # the frames as stored
    coded_height: int = 0


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


# (transpose, flip rows, flip columns) -> (degrees clockwise, mirrored: flipped left-right first)
_ORIENTATIONS = {
    (False, False, False): (0, False), (True, False, True): (90, False),
    (False, True, True): (180, False), (True, True, False): (270, False),
    (False, False, True): (0, True), (True, True, True): (90, True),
    (False, True, False): (180, True), (True, False, False): (270, True),
}
_ROTATIONS = {deg: flags for flags, (deg, mirrored) in _ORIENTATIONS.items() if not mirrored}


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """How a decoded frame becomes the displayed image: resampled to square pixels (in
    coded orientation), then transposed and flipped (the display matrix, by 90 degrees)."""

    transpose: bool = False
    flip_rows: bool = False  # applied after the transpose
    flip_cols: bool = False
    sar: fractions.Fraction = fractions.Fraction(1)

    def square(self, width: int, height: int) -> Tuple[int, int]:
        """Coded size -> square-pixel size, stretching the short side (no pixel is lost)."""
        if self.sar > 1:
            return max(1, round(width * self.sar)), height
        if self.sar < 1:
            return width, max(1, round(height / self.sar))
        return width, height

    def display_size(self, width: int, height: int) -> Tuple[int, int]:
        w, h = self.square(width, height)
        return (h, w) if self.transpose else (w, h)

    def reformat_size(self, width: int, height: int, size: Optional[Tuple[int, int]]):
        """(width, height) for swscale, in coded orientation; (None, None): keep the frame's."""
        if size is not None:
            return (size[1], size[0]) if self.transpose else tuple(size)
        if self.sar == 1:
            return None, None
        return self.square(width, height)

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.transpose:
            image = image.swapaxes(0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return image


def _display_matrix(frame) -> Optional[Tuple[int, ...]]:
    for data in frame.side_data:
        if data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return struct.unpack("=9i", bytes(data))
    return None


def _geometry(frame, stream, path) -> _Geometry:
    """Orientation from the frame's display matrix (FFmpeg attaches the container's to every
    frame), else the stream's `rotate` tag (degrees clockwise); pixel shape from the stream."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    sar = fractions.Fraction(sar) if sar and sar > 0 else fractions.Fraction(1)
    matrix = _display_matrix(frame)
    if matrix is not None:
        # FFmpeg's layout: a point (x, y) is displayed at (a x + c y, b x + d y) + translation,
        # a, b, c, d in 16.16 fixed point (libavutil/display.h).
        a, b, _, c, d = matrix[:5]
        angle = math.degrees(math.atan2(b, a))  # clockwise, as a pure rotation
        if min(abs(angle - q) for q in (-180, -90, 0, 90, 180)) > 1:
            raise VideoError(f"{display_path(path)}: the display matrix rotates by {-angle:.1f} degrees; "
                             "only multiples of 90 are supported")
        transpose = abs(a) < abs(b)
        if transpose:
            flags = (True, b < 0, c < 0)
        else:
            flags = (False, d < 0, a < 0)
        return _Geometry(*flags, sar=sar)
    tag = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), None)  # mkv: ROTATE
    if tag:
        try:
            degrees = float(tag) % 360
        except ValueError:
            raise VideoError(f"{display_path(path)}: unreadable rotate tag {tag!r}") from None
        if degrees not in _ROTATIONS:
            raise VideoError(f"{display_path(path)}: rotate tag {tag!r}: only multiples of 90 are supported")
        return _Geometry(*_ROTATIONS[int(degrees)], sar=sar)
    return _Geometry(sar=sar)


def _first_frames(container, path):
    """The first decoded video frame, and the time of the first decoded audio sample (None
    without audio), in one demuxing pass. The audio time is what a decoder (load_audio)
    returns first, which differs from the stream's start_time when the codec drops priming
    samples; the stream's start_time stands in when no audio frame decodes."""
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    frame, audio_time, audio_done = None, None, audio is None
    try:
        for packet in container.demux(*[s for s in (video, audio) if s is not None]):
            if packet.stream.index == video.index:
                if frame is None:
                    frame = next(iter(packet.decode()), None)
            elif not audio_done:
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    decoded, audio_done = [], True
                for f in decoded[:1]:
                    audio_done = True
                    if f.pts is not None:
                        audio_time = _seconds(f.pts, f.time_base or audio.time_base)
            if frame is not None and audio_done:
                break
    except av.error.FFmpegError as e:
        raise VideoError(f"{display_path(path)}: corrupt video data in the first frame ({e})") from e
    if frame is None:
        raise VideoError(f"{display_path(path)}: no decodable video frames")
    if audio is not None and audio_time is None:
        audio_time = _seconds(audio.start_time, audio.time_base)
    return frame, audio_time


def probe(path) -> VideoInfo:
    """Reads the container header and decodes the first video and audio frames."""
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.base_rate or 0
        duration = _seconds(stream.duration, stream.time_base)
        if duration is None and container.duration is not None:
            duration = fractions.Fraction(container.duration, av.time_base)
        first, a0 = _first_frames(container, path)
        geometry = _geometry(first, stream, path)
        coded = (int(ctx.width) or first.width, int(ctx.height) or first.height)
        width, height = geometry.display_size(*coded)
        offset = 0.0
        v0 = _seconds(stream.start_time, stream.time_base)
        if a0 is not None and v0 is not None:
            offset = float(a0 - v0)
        rotation, mirrored = _ORIENTATIONS[(geometry.transpose, geometry.flip_rows, geometry.flip_cols)]
        return VideoInfo(
            path=display_path(path),
            width=width,
            height=height,
            fps=float(rate),
            duration=float(duration or 0.0),
            has_audio=bool(container.streams.audio),
            audio_offset=offset,
            rotation=rotation,
            mirrored=mirrored,
            sample_aspect_ratio=float(geometry.sar),
            coded_width=coded[0],
            coded_height=coded[1],
        )


class FrameStream:
    """Iterates (k, frame) for output frames k = 0, stride, 2*stride, ... at constant `fps`.

    frame: uint8 (H, W, 3) RGB, or (H, W) when gray, upright and in square pixels (module
    docstring); resized to size=(width, height) of the displayed image with area
    interpolation when given. Any pixel format or odd size is converted.

    `max_gap` (seconds, None: no limit): longer timestamp gaps are holes, not held frames
    (module docstring). After a complete iteration `num_frames` holds the number of output
    frames (also those skipped by the stride, and those in holes), `gaps` the holes as
    half-open ranges [a, b) of output frames, and `segments()` the runs between them.
    Raises VideoError naming the file when decoding fails.
    """

    def __init__(self, path, fps: int = FPS, stride: int = 1, size: Optional[Tuple[int, int]] = None,
                 gray: bool = False, max_seconds: Optional[float] = None, max_gap: Optional[float] = None):
        self.path, self.fps, self.stride, self.size, self.gray = path, fps, stride, size, gray
        self.max_seconds, self.max_gap = max_seconds, max_gap
        self.num_frames: Optional[int] = None
        self.gaps: List[Tuple[int, int]] = []

    def segments(self, end: Optional[int] = None) -> List[Tuple[int, int]]:
        """Runs [a, b) of output frames with a frame, up to `end` (default: num_frames)."""
        end = self.num_frames if end is None else end
        runs, a = [], 0
        for g0, g1 in self.gaps + [(end, end)]:
            if min(g0, end) > a:
                runs.append((a, min(g0, end)))
            a = max(a, g1)
        return runs

    def _hole(self, k: int) -> None:
        if self.gaps and self.gaps[-1][1] == k:
            self.gaps[-1] = (self.gaps[-1][0], k + 1)
        else:
            self.gaps.append((k, k + 1))

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray]]:
        self.num_frames, self.gaps = None, []
        step = fractions.Fraction(1, self.fps)
        limit = max_gap = None
        if self.max_seconds is not None:
            limit = fractions.Fraction(self.max_seconds).limit_denominator(10**6)
        if self.max_gap is not None:
            max_gap = fractions.Fraction(self.max_gap).limit_denominator(10**6)
        fmt = "gray" if self.gray else "rgb24"
        stride, path = self.stride, self.path
        k = 0  # next output index
        pending = None  # (k, frame) waiting until we know its interval ends inside the video
        cache = [None, None]  # the last converted av frame and its array (frames repeat)
        geometry, target = _Geometry(), (None, None)

        def convert(frame):
            if cache[0] is not frame:  # holding the frame keeps its id from being reused
                out = frame.reformat(width=target[0], height=target[1], format=fmt, interpolation="AREA")
                # swscale pads rows to an aligned stride; dlib ignores strides.
                cache[:] = [frame, np.ascontiguousarray(geometry.apply(out.to_ndarray()))]
            return cache[1]

        def emit(frame, until, hole_from=None):
            # Output frames whose sample time k/fps lies before `until` show `frame`; in a
            # hole, only those before `hole_from`, the rest none.
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
                if hole_from is not None and k * step >= hole_from:
                    self._hole(k)
                elif k % stride == 0:
                    pending = (k, convert(frame))
                k += 1
            return False

        def hole_after(t_frame, t_next):
            # Where frame output stops when the next frame is too far away (None: it does not).
            if max_gap is not None and t_next - t_frame > max_gap:
                return t_frame + step
            return None

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
                    geometry = _geometry(frame, stream, path)
                    coded = (stream.codec_context.width or frame.width, stream.codec_context.height or frame.height)
                    target = geometry.reformat_size(*coded, self.size)
                    t_prev = fractions.Fraction(0)
                    if t is not None and t > 0 and hole_after(0, t) is not None:
                        # A late first frame: the time before it is a hole.
                        if (yield from emit(None, t, hole_from=0)):
                            self.num_frames = k
                            return
                        t_prev = t
                    # Otherwise the first frame also covers the time before it.
                    prev, prev_duration = frame, _seconds(frame.duration, base)
                    continue
                if t <= t_prev:
                    continue  # non-increasing timestamps: keep the earlier frame
                if (yield from emit(prev, t, hole_after(t_prev, t))):
                    self.num_frames = k
                    return
                last_delta = t - t_prev
                prev, t_prev, prev_duration = frame, t, _seconds(frame.duration, base)
            if prev is None:
                raise VideoError(f"{display_path(path)}: no decodable video frames")
            end = t_prev + (prev_duration or last_delta or default_delta)
            if (yield from emit(prev, end, hole_after(t_prev, end))):
                self.num_frames = k
                return
            # An output frame exists only if its whole interval ends inside the video.
            if pending is not None and (pending[0] + 1) * step <= end:
                yield pending
            self.num_frames = min(k, int(end / step))
            self.gaps = [(a, min(b, self.num_frames)) for a, b in self.gaps if a < self.num_frames]
        except av.error.FFmpegError as e:
            raise VideoError(f"{display_path(path)}: corrupt video data near output frame {k} ({e})") from e
        finally:
            container.close()


def iter_frames(path, fps: int = FPS, stride: int = 1, size: Optional[Tuple[int, int]] = None,
                gray: bool = False, max_seconds: Optional[float] = None,
                max_gap: Optional[float] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """(k, frame) pairs of a FrameStream (see there)."""
    return iter(FrameStream(path, fps, stride, size, gray, max_seconds, max_gap))


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
