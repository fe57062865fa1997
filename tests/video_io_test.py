"""video_io: constant 25 fps by timestamps, pixel formats, odd sizes, containers, errors."""

import fractions
import math
import os
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest

from data_pipeline.preprocess import video_io


def _coded(n, size=(48, 64), step=8):
    """Frames whose gray level encodes their index (index * step)."""
    return np.stack([np.full(size + (3,), i * step, np.uint8) for i in range(n)])


def _indices(path, step=8, **kwargs):
    return [int(round(f.mean() / step)) for _, f in video_io.iter_frames(path, **kwargs)]


def test_30fps_input_is_resampled_by_timestamps(tmp_path):
    path = tmp_path / "thirty.mkv"
    video_io.write_video(path, _coded(30), fps=30, codec="ffv1", pix_fmt="yuv444p")
    got = _indices(path)
    assert len(got) == 25  # floor(1.0 s * 25)
    assert got == [math.floor(k * 30 / 25) for k in range(25)]


def test_low_fps_input_repeats_frames(tmp_path):
    path = tmp_path / "ten.mkv"
    video_io.write_video(path, _coded(10), fps=10, codec="ffv1", pix_fmt="yuv444p")
    assert _indices(path) == [math.floor(k * 10 / 25) for k in range(25)]


def test_variable_frame_rate_picks_the_frame_covering_each_time(tmp_path):
    times = [0, 0.01, 0.1, 0.13, 0.3, 0.31, 0.32, 0.5, 0.52, 0.7, 0.71, 0.9]
    path = tmp_path / "vfr.mkv"
    video_io.write_video(path, _coded(len(times)), times=times, codec="ffv1", pix_fmt="yuv444p")
    stream = video_io.FrameStream(path)
    got = [int(round(f.mean() / 8)) for _, f in stream]
    expected = [max(i for i, t in enumerate(times) if t <= k / 25 + 1e-9) for k in range(len(got))]
    assert got == expected
    # The last frame lasts its own duration (1/25 s in this file): floor(0.94 * 25) frames.
    assert len(got) == stream.num_frames == 23


def test_real_30fps_sample(samples_dir):
    path = samples_dir / "expression_source.mp4"
    info = video_io.probe(path)
    assert info.fps == 30 and not info.has_audio
    stream = video_io.FrameStream(path, stride=10, size=(64, 64), gray=True)
    keys = [k for k, frame in stream]
    assert stream.num_frames == math.floor(info.duration * 25) == 324
    assert keys == list(range(0, 324, 10))


def test_stride_size_gray_and_max_seconds(samples_dir):
    frames = list(video_io.iter_frames(samples_dir / "uncrop_Obama.mp4", stride=4, size=(225, 101),
                                       gray=True, max_seconds=1.0))
    assert [k for k, _ in frames] == list(range(0, 25, 4))
    assert all(f.shape == (101, 225) and f.dtype == np.uint8 and f.flags.c_contiguous for _, f in frames)


def test_grayscale_odd_size_becomes_rgb(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (5, 199, 255), dtype=np.uint8)
    path = tmp_path / "gray.mkv"
    video_io.write_video(path, gray, codec="ffv1", pix_fmt="gray")
    frames = video_io.read_frames(path)
    assert frames.shape == (5, 199, 255, 3)
    np.testing.assert_array_equal(frames[..., 0], gray)  # lossless gray -> R = G = B
    np.testing.assert_array_equal(frames[..., 0], frames[..., 2])


@pytest.mark.parametrize("name,codec,pix_fmt,size", [
    ("odd.mov", "libx264", "yuv444p", (199, 255)),
    ("even.avi", "mpeg4", "yuv420p", (64, 96)),
    ("even.mp4", "libx264", "yuv420p", (64, 96)),
])
def test_containers_and_odd_sizes(tmp_path, name, codec, pix_fmt, size):
    path = tmp_path / name
    video_io.write_video(path, _coded(10, size, step=20), codec=codec, pix_fmt=pix_fmt)
    frames = video_io.read_frames(path)
    assert frames.shape == (10,) + size + (3,)
    assert [int(round(f.mean() / 20)) for f in frames] == list(range(10))


def test_audio_track_round_trip(tmp_path):
    path = tmp_path / "with_audio.mp4"
    video_io.write_video(path, _coded(25), audio=np.zeros(16000, np.float32))
    info = video_io.probe(path)
    assert info.has_audio and info.width == 64 and info.height == 48 and abs(info.duration - 1) < 1e-6


def test_audio_offset_from_container_start_times(tmp_path):
    good = tmp_path / "good.mp4"
    video_io.write_video(good, _coded(25), audio=np.zeros(16000, np.float32))
    delayed = tmp_path / "delayed.mp4"  # the video stream starts 0.3 s after the audio
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-itsoffset", "0.3", "-i", str(good),
                    "-i", str(good), "-map", "0:v", "-map", "1:a", "-c", "copy", str(delayed)], check=True)
    assert video_io.probe(good).audio_offset == 0.0
    assert abs(video_io.probe(delayed).audio_offset + 0.3) < 1e-3
    assert len(video_io.read_frames(delayed)) == 25  # times count from the video's own start


def test_non_utf8_file_name(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9 \xff.mp4")
    video_io.write_video(path, _coded(5))
    frames = video_io.read_frames(os.fsdecode(path))
    assert frames.shape[0] == 5
    assert "caf\\xe9" in video_io.probe(path).path


def test_bad_inputs_raise_video_error_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.avi"
    text.write_text("not a video")
    good = tmp_path / "good.mp4"
    video_io.write_video(good, _coded(50, step=4))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=16000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 16000, 0
        c.mux(s.encode(f))
        c.mux(s.encode())
    for path, words in [(garbage, "cannot open"), (text, "cannot open"), (truncated, ""),
                        (audio_only, "no video stream"), (tmp_path / "missing.mp4", "cannot open")]:
        with pytest.raises(video_io.VideoError, match=str(path.name)) as e:
            video_io.read_frames(path)
        assert words in str(e.value)


def _blocks(h=48, w=64, seed=0):
    """A frame of 8x8 random blocks: any rotation or flip of it is a different image."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)


def _write_oriented(path, image, degrees=0, hflip=False, vflip=False, sar=None, tags=None):
    """One lossless h264 frame with a display matrix (PyAV's set_display_rotation: degrees
    counter-clockwise, then the flips), a sample aspect ratio, or stream tags."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = image.shape[1], image.shape[0], "yuv444p"
        if degrees or hflip or vflip:
            s.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        s.metadata.update(tags or {})
        for i in range(3):
            f = av.VideoFrame.from_ndarray(image, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())


@pytest.mark.parametrize("degrees", [0, 90, -90, 180])
@pytest.mark.parametrize("hflip", [False, True])
def test_display_matrix_is_applied_as_ffmpeg_autorotates(tmp_path, degrees, hflip):
    path = tmp_path / "phone.mp4"
    image = _blocks()
    _write_oriented(path, image, degrees, hflip=hflip)
    ours = video_io.read_frames(path)
    # The reference: FFmpeg's command line, which applies the display matrix by default.
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    upright = (64, 48) if degrees in (90, -90) else (48, 64)
    assert ours.shape == (3,) + upright + (3,)
    expected = np.frombuffer(raw, np.uint8).reshape(3, *upright, 3)
    assert np.abs(ours.astype(int) - expected).max() <= 2
    info = video_io.probe(path)
    assert (info.height, info.width) == upright and (info.coded_height, info.coded_width) == (48, 64)
    if not hflip:  # a pure rotation: the frame turned clockwise by info.rotation degrees
        assert info.rotation == (-degrees) % 360
        np.testing.assert_array_equal(np.abs(ours[0].astype(int) - np.rot90(image, -info.rotation // 90)) <= 2, True)
    assert info.mirrored == hflip


def test_rotate_tag_and_resized_gray_frames(tmp_path):
    path = tmp_path / "tagged.mkv"  # older files: a stream tag (degrees clockwise), no matrix
    image = _blocks()
    _write_oriented(path, image, tags={"rotate": "90"})
    frames = video_io.read_frames(path)
    assert np.abs(frames[0].astype(int) - np.rot90(image, -1)).max() <= 2
    # size is of the upright image; gray frames are turned too.
    gray = [f for _, f in video_io.iter_frames(path, size=(24, 32), gray=True)]
    assert gray[0].shape == (32, 24) and gray[0].flags.c_contiguous


@pytest.mark.parametrize("sar,shape", [((2, 1), (48, 64)), ((1, 2), (96, 32))])
def test_sample_aspect_ratio_gives_square_pixels(tmp_path, samples_dir, sar, shape):
    import cv2
    face = cv2.cvtColor(cv2.imread(str(samples_dir / "identity_source.jpg")), cv2.COLOR_BGR2RGB)
    face = cv2.resize(face, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    # Anamorphic storage: the pixels are sar[0]:sar[1] wide, so fewer of them are stored.
    stored = cv2.resize(face, (shape[1] * sar[1] // sar[0], shape[0]) if sar[0] > sar[1]
                        else (shape[1], shape[0] * sar[0] // sar[1]), interpolation=cv2.INTER_AREA)
    path = tmp_path / "anamorphic.mp4"
    _write_oriented(path, stored, sar=fractions.Fraction(*sar))
    info = video_io.probe(path)
    assert (info.height, info.width) == shape and info.sample_aspect_ratio == sar[0] / sar[1]
    frame = video_io.read_frames(path)[0]
    assert frame.shape == shape + (3,)
    assert np.abs(frame.astype(float) - face).mean() < 8  # the face, not a squashed one
    squashed = cv2.resize(stored, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    assert np.abs(frame.astype(float) - face).mean() < np.abs(squashed.astype(float) - face).mean()


def test_timestamp_gap_is_a_hole_not_a_held_frame(tmp_path):
    # 25 fps with a 2 s hole: frames at 0..1.00 s, then 3.00..3.96 s.
    times = [i * 0.04 for i in range(26)] + [3.0 + i * 0.04 for i in range(25)]
    path = tmp_path / "hole.mp4"
    video_io.write_video(path, _coded(51, step=5), times=times)
    held = video_io.FrameStream(path)
    got = [int(round(f.mean() / 5)) for _, f in held]
    assert len(got) == 100 and got.count(25) == 50 and held.gaps == []  # no limit: frozen for 2 s
    stream = video_io.FrameStream(path, max_gap=0.25)
    frames = list(stream)
    assert stream.num_frames == 100 and stream.gaps == [(26, 75)]
    assert stream.segments() == [(0, 26), (75, 100)] and stream.segments(80) == [(0, 26), (75, 80)]
    assert [k for k, _ in frames] == list(range(26)) + list(range(75, 100))
    assert [int(round(f.mean() / 5)) for _, f in frames] == list(range(26)) + list(range(26, 51))
    longer = video_io.FrameStream(path, max_gap=2.5)  # a hole shorter than the limit is held
    assert len(list(longer)) == 100 and longer.gaps == []
    strided = video_io.FrameStream(path, stride=5, max_gap=0.25, max_seconds=2.0)
    assert [k for k, _ in strided] == [0, 5, 10, 15, 20, 25] and strided.gaps == [(26, 50)]
