"""Audio front end: parity with the official mel, decoding of containers, bad input, CLI."""

import io
import os
import shutil
import subprocess
import sys
import wave

import av
import librosa
import numpy as np
import pytest
import soxr

from data_pipeline.preprocess import audio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def reference(parity_dir):
    return dict(np.load(parity_dir / "mel_reference.npz"))


def test_log_mel_matches_official(reference):
    mel = audio.log_mel(reference["wav0"])
    assert mel.dtype == np.float32 and mel.shape == reference["mel0"].shape == (804, 80)
    assert np.abs(mel - reference["mel0"]).max() <= 1e-3


def test_mel_windows_match_official(reference):
    windows = audio.mel_windows(reference["wav0"])
    assert windows.dtype == np.float32 and windows.shape == reference["windows0"].shape
    assert np.abs(windows - reference["windows0"]).max() <= 1e-3


def test_load_sample_wav_reproduces_fixture(reference, samples_dir):
    wav = audio.load_audio(samples_dir / "mouth_source.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1
    frames = audio.num_video_frames(len(wav))
    np.testing.assert_array_equal(audio.crop_pad_audio(wav, frames), reference["wav0"])


def _official_windows(mel, num_frames, fps=25):
    """Line-by-line transcription of the official get_mel loop (demo_EDTalk_A.py)."""
    out = []
    for i in range(num_frames):
        start_idx = int(80.0 * ((i - 2) / float(fps)))
        seq = [min(max(item, 0), mel.shape[0] - 1) for item in range(start_idx, start_idx + 16)]
        out.append(mel[seq, :].T)
    return np.asarray(out)


@pytest.mark.parametrize("n_mel,num_frames,fps", [(804, 251, 25), (10, 8, 25), (3, 1, 25), (97, 40, 30)])
def test_frame_windows_match_official_loop(n_mel, num_frames, fps):
    mel = np.random.default_rng(n_mel).normal(size=(n_mel, 80)).astype(np.float32)
    got = audio.frame_windows(mel, num_frames, fps=fps)
    assert got.shape == (num_frames, 80, 16) and got.dtype == np.float32
    np.testing.assert_array_equal(got, _official_windows(mel, num_frames, fps))


def test_frame_windows_edges():
    mel = np.arange(20, dtype=np.float32)[:, None].repeat(80, axis=1)
    windows = audio.frame_windows(mel, 7)
    np.testing.assert_array_equal(windows[0, 0], [0] * 7 + list(range(1, 10)))  # start -6
    np.testing.assert_array_equal(windows[1, 0], [0] * 4 + list(range(1, 13)))  # start -3
    np.testing.assert_array_equal(windows[6, 0], list(range(12, 20)) + [19] * 8)  # start 12


def test_frame_counts_and_crop_pad():
    assert audio.num_video_frames(640 * 5 + 639) == 5
    assert audio.num_video_frames(639) == 0
    wav = np.arange(1, 1001, dtype=np.float32)
    np.testing.assert_array_equal(audio.crop_pad_audio(wav, 1), wav[:640])
    padded = audio.crop_pad_audio(wav, 2)
    assert len(padded) == 1280 and (padded[1000:] == 0).all() and (padded[:1000] == wav).all()


def test_explicit_frame_count_pads(reference):
    wav = reference["wav0"][: 640 * 10]
    windows = audio.mel_windows(wav, num_frames=14)
    mel = audio.log_mel(np.pad(wav, (0, 640 * 4)))
    np.testing.assert_array_equal(windows, _official_windows(mel, 14))
    with pytest.raises(ValueError, match="shorter than one video frame"):
        audio.mel_windows(wav[:639])


def test_int16_round_trip(reference):
    pcm = audio.wav_to_int16(reference["wav0"])
    assert pcm.dtype == np.int16
    np.testing.assert_array_equal(audio.int16_to_wav(pcm), reference["wav0"])
    np.testing.assert_array_equal(audio.wav_to_int16(np.array([-2.0, 1.0, 2.0])), [-32768, 32767, 32767])


RATE = 44100
LEFT_HZ, LEFT_AMP, RIGHT_HZ, RIGHT_AMP = 440.0, 0.5, 1000.0, 0.3


def _write_tone(path, codec, video=False, seconds=1.0, options=None):
    """Stereo 44.1 kHz test tone (440 Hz left, 1 kHz right), optionally beside a video stream."""
    t = np.arange(int(RATE * seconds)) / RATE
    pcm = np.stack([LEFT_AMP * np.sin(2 * np.pi * LEFT_HZ * t),
                    RIGHT_AMP * np.sin(2 * np.pi * RIGHT_HZ * t)]).astype(np.float32)
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=RATE, layout="stereo")
        if video:
            vstream = out.add_stream("mpeg4", rate=25)
            vstream.width = vstream.height = 32
            vstream.pix_fmt = "yuv420p"
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
        frame.rate, frame.pts = RATE, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
        if video:
            for i in range(int(25 * seconds)):
                image = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i, np.uint8), format="rgb24")
                image.pts = i
                out.mux(vstream.encode(image))
            out.mux(vstream.encode())
    return path


def _tone_amplitudes(wav):
    """Least-squares amplitudes of the two tones and the residual RMS, away from the ends."""
    t = np.arange(1600, 14400) / audio.SAMPLE_RATE
    basis = np.stack([f(2 * np.pi * hz * t) for hz in (LEFT_HZ, RIGHT_HZ) for f in (np.sin, np.cos)], 1)
    coef, *_ = np.linalg.lstsq(basis, wav[1600:14400], rcond=None)
    residual = wav[1600:14400] - basis @ coef
    return np.hypot(coef[0], coef[1]), np.hypot(coef[2], coef[3]), np.sqrt(np.mean(residual ** 2))


# (extension, codec, with video, exact length). Matroska and AVI keep the encoder's
# priming/padding samples (FFmpeg's command line keeps even more), so they run a little long.
CONTAINERS = [
    ("wav", "pcm_s16le", False, True), ("flac", "flac", False, True),
    ("mp3", "libmp3lame", False, True), ("m4a", "aac", False, True),
    ("mp4", "aac", True, True), ("mov", "aac", True, True),
    ("mkv", "aac", True, False), ("avi", "libmp3lame", True, False),
]


@pytest.mark.parametrize("ext,codec,video,exact", CONTAINERS)
def test_load_audio_from_containers(tmp_path, ext, codec, video, exact):
    wav = audio.load_audio(_write_tone(tmp_path / f"tone.{ext}", codec, video))
    assert wav.dtype == np.float32 and wav.ndim == 1
    if exact:
        assert len(wav) == audio.SAMPLE_RATE
    else:
        assert audio.SAMPLE_RATE <= len(wav) <= 1.06 * audio.SAMPLE_RATE
    left, right, residual = _tone_amplitudes(wav)
    # Stereo is averaged, so each tone keeps half its amplitude.
    assert left == pytest.approx(LEFT_AMP / 2, abs=0.02)
    assert right == pytest.approx(RIGHT_AMP / 2, abs=0.02)
    assert residual < 0.02


@pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread")
def test_stereo_44k_matches_librosa_load(tmp_path):
    """Averaging and soxr 'HQ' resampling: the same samples as librosa.load(sr=16000)."""
    path = _write_tone(tmp_path / "tone.wav", "pcm_s16le")
    expected, _ = librosa.load(path, sr=16000)
    np.testing.assert_array_equal(audio.load_audio(path), expected)


def test_video_without_audio_stream(samples_dir):
    path = samples_dir / "mouth_source.mp4"
    with pytest.raises(audio.AudioError, match="mouth_source.mp4: no audio stream"):
        audio.load_audio(path)


def _empty_wav():
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    return buffer.getvalue()


def _bad(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def test_bad_files(tmp_path, samples_dir):
    wav = (samples_dir / "mouth_source.wav").read_bytes()
    m4a = _write_tone(tmp_path / "tone.m4a", "aac").read_bytes()  # index at the end
    faststart = _write_tone(tmp_path / "fast.m4a", "aac", options={"movflags": "faststart"})
    with av.open(str(faststart)) as container:  # cut on a packet boundary: decodes cleanly
        cut = [p.pos for p in container.demux(audio=0) if p.size][20]
    flac = _write_tone(tmp_path / "tone.flac", "flac").read_bytes()
    cases = {
        "cut.wav": (wav[: len(wav) // 2], "truncated WAV"),
        "cut.m4a": (m4a[: len(m4a) * 9 // 10], "(not a readable media file|no streams found)"),
        "cut_fast.m4a": (faststart.read_bytes()[:cut], "truncated: decoded 0.4"),
        "cut_mid_packet.m4a": (faststart.read_bytes()[: cut + 50], "corrupt or truncated audio"),
        "cut.flac": (flac[: len(flac) // 2], "corrupt or truncated audio"),
        "notes.wav": (b"this is a text file, not audio\n" * 20, "not a readable media file"),
        # FFmpeg reads a .txt as a 'tty' (ANSI art) video.
        "notes.txt": (b"this is a text file, not audio\n" * 20, "(not a readable media file|no audio stream)"),
        "empty.wav": (b"", "empty file"),
        "garbage.mp4": (bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)), ""),
        "header_only.wav": (_empty_wav(), "the audio stream holds no samples"),
    }
    for name, (data, problem) in cases.items():
        with pytest.raises(audio.AudioError, match=f"{name}: {problem}"):
            audio.load_audio(_bad(tmp_path, name, data))
    with pytest.raises(audio.AudioError, match="missing.wav: no such file"):
        audio.load_audio(tmp_path / "missing.wav")


def test_odd_file_names(tmp_path, samples_dir):
    expected = audio.load_audio(samples_dir / "mouth_source.wav")
    unicode_name = _write_tone(tmp_path / "voix façade 日本語 🎵.m4a", "aac")
    assert len(audio.load_audio(unicode_name)) == audio.SAMPLE_RATE
    raw = os.path.join(os.fsencode(tmp_path), b"\xff\xfe caf\xe9.wav")  # not valid UTF-8
    shutil.copyfile(samples_dir / "mouth_source.wav", raw)
    np.testing.assert_array_equal(audio.load_audio(raw), expected)
    np.testing.assert_array_equal(audio.load_audio(os.fsdecode(raw)), expected)
    bad = os.path.join(os.fsencode(tmp_path), b"\xff bad.wav")
    with open(bad, "wb") as f:
        f.write(b"not audio")
    with pytest.raises(audio.AudioError, match=r"\\udcff bad.wav: not a readable media file") as e:
        audio.load_audio(bad)
    str(e.value).encode("utf-8")  # printable as UTF-8


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.mel", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path, samples_dir, reference):
    out = tmp_path / "mel.npz"
    run = _cli(samples_dir / "mouth_source.wav", "--out", out)
    assert run.returncode == 0, run.stderr
    assert "T=251" in run.stdout and "10.048 s" in run.stdout
    with np.load(out) as saved:
        assert set(saved.files) == {"mel", "windows"}
        assert saved["mel"].shape == (804, 80) and saved["mel"].dtype == np.float32
        assert saved["windows"].shape == (251, 80, 16) and saved["windows"].dtype == np.float32
        np.testing.assert_array_equal(saved["windows"], reference["windows0"])
    run = _cli(samples_dir / "mouth_source.mp4", "--out", tmp_path / "none.npz")
    assert run.returncode == 1 and "mouth_source.mp4: no audio stream" in run.stderr
    assert not (tmp_path / "none.npz").exists()


def _write_pcm_wav(path, seconds, rate=48000, channels=2, seed=0):
    """Noisy stereo speech-band signal as 16-bit PCM WAV (soundfile: independent of PyAV)."""
    import soundfile
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t)))
    data = np.stack([tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)], 1)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize("chunk_seconds", [0.05, 0.7, audio.CHUNK_SECONDS])
def test_chunked_resampling_equals_one_shot(tmp_path, chunk_seconds):
    """Streaming soxr over chunks = one soxr call over the whole track. Tolerance 1e-6
    (one float32 ulp at these levels); with soxr 1.1 the two are bit-identical."""
    import soundfile
    path = _write_pcm_wav(tmp_path / "long.wav", 3.3)
    raw, rate = soundfile.read(path, dtype="float32")
    expected = soxr.resample(raw.mean(axis=1), rate, audio.SAMPLE_RATE, quality="HQ")
    chunks = list(audio.iter_audio(path, chunk_seconds=chunk_seconds))
    got = np.concatenate(chunks)
    assert got.dtype == np.float32 and len(got) == len(expected) == int(3.3 * 16000)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # Each chunk covers about chunk_seconds of the source (plus a codec frame and the
    # resampler's delay), never the whole.
    assert max(len(c) for c in chunks) <= (chunk_seconds + 0.2) * audio.SAMPLE_RATE
    np.testing.assert_array_equal(audio.load_audio(path), got)


def _traced_peak(fn):
    """Peak bytes of Python and numpy allocations while fn() runs (tracemalloc)."""
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chunk_size_bounds_what_is_held(tmp_path):
    path = _write_pcm_wav(tmp_path / "minute.wav", 60)  # 48 kHz stereo: 23 MB as float32
    small = _traced_peak(lambda: [None for _ in audio.iter_audio(path, chunk_seconds=1.0)])
    large = _traced_peak(lambda: [None for _ in audio.iter_audio(path, chunk_seconds=20.0)])
    assert small < 1.5e6  # ~1 s of 48 kHz samples (0.2 MB mono) and its pieces
    assert large > 5 * small  # held data grows with the chunk, not with the track
    whole = _traced_peak(lambda: audio.load_audio(path))
    assert whole > 3.84e6  # the 16 kHz result itself: 60 s x 16000 x 4 bytes


def test_spooled_audio_reads_ranges_of_the_shifted_track(tmp_path):
    path = _write_pcm_wav(tmp_path / "a.wav", 2.0, rate=44100)
    wav = audio.load_audio(path)
    n = len(wav)
    for offset in (0, 1234, -777):
        shifted = np.pad(wav, (offset, 0)) if offset > 0 else wav[-offset:]
        with audio.SpooledAudio(path, offset=offset, chunk_seconds=0.3, directory=tmp_path) as track:
            assert os.listdir(tmp_path) == ["a.wav"]  # the spool file is anonymous
            assert len(track) == len(shifted) == n + offset
            for a, b in [(0, 640), (500, 5000), (n - 100, n + 2000), (len(track) - 10, len(track)), (7, 7)]:
                np.testing.assert_array_equal(track[a:b], shifted[a:b])
            with pytest.raises(TypeError):
                track[::2]
    with pytest.raises(audio.AudioError, match="missing.wav: no such file"):
        audio.SpooledAudio(tmp_path / "missing.wav")
    minute = _write_pcm_wav(tmp_path / "m.wav", 60)
    peak = _traced_peak(lambda: audio.SpooledAudio(minute, chunk_seconds=1.0).close())
    assert peak < 1.5e6  # a minute of audio spooled with about a second in memory
