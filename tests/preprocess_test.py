"""preprocess + datasets + launch.preprocess: real and generated videos -> clips, skips, resume."""

import collections
import dataclasses
import fractions
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

from data_pipeline import preprocess
from data_pipeline.preprocess import PreprocessOptions, VideoItem, audio, datasets, faces, video_io
from data_pipeline.records import schema, shards, source, splits
from launch import preprocess as launch_preprocess

FAST = PreprocessOptions(size=96, clip_seconds=1.0, min_clip_seconds=0.4)


def _face(samples_dir, name="identity_source.jpg"):
    return cv2.cvtColor(cv2.imread(str(samples_dir / name)), cv2.COLOR_BGR2RGB)


def _moving(image, n):
    """n frames of `image` drifting a few pixels (a face video without a face model)."""
    h, w = image.shape[:2]
    out = []
    for i in range(n):
        m = np.float32([[1, 0, 3 * np.sin(i / 4)], [0, 1, 2 * np.cos(i / 5)]])
        out.append(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def _vfr_times():
    """60 presentation times, irregular (20-60 ms apart), in whole milliseconds."""
    return np.round(np.cumsum(np.r_[0, np.random.default_rng(1).uniform(0.02, 0.06, 59)]), 3)


def _speech(samples_dir, seconds):
    return audio.load_audio(samples_dir / "mouth_source.wav")[: int(seconds * 16000)]


@pytest.fixture(scope="module")
def media(samples_dir, tmp_path_factory):
    """A folder of small generated videos, good and bad, and a few extras beside it."""
    root = tmp_path_factory.mktemp("media")
    raw = root / "raw"
    raw.mkdir()
    face = _face(samples_dir)
    speech = _speech(samples_dir, 2.0)
    frames = _moving(face, 50)
    video_io.write_video(raw / "good.mp4", frames, audio=speech)
    video_io.write_video(raw / "noaudio.mp4", frames)
    noise = np.random.default_rng(0).integers(0, 256, (50, 128, 128, 3), dtype=np.uint8)
    video_io.write_video(raw / "noface.mp4", noise, audio=speech)
    (raw / "corrupt.mp4").write_bytes((raw / "good.mp4").read_bytes()[:20000])
    (raw / "garbage.avi").write_bytes(b"\x00not a video" * 100)
    two = np.concatenate([face, _face(samples_dir, "crop_identity_source.jpg")], axis=1)
    video_io.write_video(raw / "two_faces.mp4", _moving(two, 50), audio=speech)
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)[40:239, :255]  # 255 x 199
    video_io.write_video(raw / "gray_odd.mkv", _moving(gray, 50), audio=speech, codec="ffv1", pix_fmt="gray")
    video_io.write_video(raw / "vfr.mkv", _moving(face, 60), times=_vfr_times(), audio=speech[: int(16000 * 1.9)],
                         codec="ffv1", pix_fmt="yuv420p")
    weird = os.path.join(os.fsencode(raw), b"caf\xe9 \xff.mp4")
    video_io.write_video(weird, frames[:40], audio=speech)
    # Beside the folder: a face that disappears for a while, and a short separate audio.
    gap = _moving(face, 75)
    gap[30:40] = 128
    video_io.write_video(root / "gap.mp4", gap, audio=_speech(samples_dir, 3.0))
    soundfile.write(root / "short.wav", _speech(samples_dir, 1.2), 16000)
    return root


def test_obama_clips_are_faces_with_aligned_audio(samples_dir):
    path = samples_dir / "uncrop_Obama.mp4"
    item = VideoItem(path=str(path), key="obama", speaker="obama", source="uncrop_Obama.mp4")
    result = preprocess.process(item, PreprocessOptions(clip_seconds=2.0, max_seconds=4.0))
    assert result.clips and not [s for s in result.skipped if s[0] == "obama"], result.skipped
    assert result.stats["faces"] == 1 and result.stats["frames"] == 100
    wav = audio.load_audio(path)
    for clip in result.clips:
        t = schema.validate_clip(clip).num_frames
        meta = clip["meta"]
        assert meta["size"] == 256 and meta["fps"] == 25.0 and meta["speaker"] == "obama"
        start = int(round(float(meta["source"].split("@")[1].split("-")[0]) * 25))
        pcm = wav[start * 640 : (start + t) * 640]
        np.testing.assert_array_equal(clip["audio"], audio.wav_to_int16(pcm))
        np.testing.assert_array_equal(clip["mel_windows"], audio.mel_windows(pcm, t))
        assert clip["landmark_valid"].all()
        for i in (0, t - 1):
            rgb = shards.decode_jpeg(clip["frames"][i])
            assert rgb.shape == (256, 256, 3)
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            boxes = faces.detect(gray)
            assert len(boxes) == 1, "dlib finds the face in the crop"
            rows = clip["landmarks"][i]
            assert (rows >= 0).all() and (rows < 256).all()
            eyes = rows[list(schema.LEFT_EYE + schema.RIGHT_EYE), 1].mean()
            assert rows[list(schema.MOUTH), 1].min() > eyes
            own = faces.landmarks(gray, boxes[0])
            assert np.linalg.norm(rows - own, axis=1).mean() < 4.0  # px, in crop pixels
    assert [c["meta"]["clip_id"] for c in result.clips] == [f"obama#{i + 1}" for i in range(len(result.clips))]


def test_silent_30fps_video_is_skipped_unless_allowed(samples_dir):
    item = VideoItem(path=str(samples_dir / "expression_source.mp4"), key="expr")
    result = preprocess.process(item, PreprocessOptions(size=64, max_seconds=2.0))
    assert not result.clips and result.skipped[0][1].startswith("no audio")
    result = preprocess.process(item, PreprocessOptions(size=64, max_seconds=2.0, allow_silent=True))
    assert result.stats["frames"] == 50  # 2 s at 25 fps, from a 30 fps source
    assert sum(len(c["frames"]) for c in result.clips) == 46  # tube ends at the last keyframe (45)
    assert all(not c["audio"].any() for c in result.clips)


def test_audio_shorter_than_video_trims_or_skips(media):
    item = VideoItem(path=str(media / "raw" / "good.mp4"), key="short", audio_path=str(media / "short.wav"))
    result = preprocess.process(item, FAST)
    assert sum(len(c["frames"]) for c in result.clips) <= 30  # 1.2 s of audio
    assert any("audio shorter than video" in why for _, why in result.skipped)
    for clip in result.clips:
        assert len(clip["audio"]) == 640 * len(clip["frames"])
    result = preprocess.process(item, dataclasses.replace(FAST, short_audio="skip"))
    assert not result.clips and result.skipped[0][1].startswith("audio shorter than video")


def test_video_starting_after_its_audio_is_aligned(media, tmp_path):
    delayed = tmp_path / "delayed.mp4"  # video stream starts 0.4 s after the audio stream
    good = str(media / "raw" / "good.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-itsoffset", "0.4", "-i", good,
                    "-i", good, "-map", "0:v", "-map", "1:a", "-c", "copy", str(delayed)], check=True)
    result = preprocess.process(VideoItem(path=str(delayed), key="delayed"), FAST)
    wav = audio.load_audio(delayed)
    for clip in result.clips:
        start = int(round(float(clip["meta"]["source"].split("@")[1].split("-")[0]) * 25))
        t = len(clip["frames"])
        expected = wav[6400 + start * 640 : 6400 + (start + t) * 640]  # 0.4 s = 6400 samples later
        np.testing.assert_array_equal(clip["audio"], audio.wav_to_int16(expected))
    # The audio ends 0.4 s into the video's last frames: those are trimmed, and said so.
    assert any("audio shorter than video" in why for _, why in result.skipped)


def test_landmark_gaps_are_interpolated_or_cut(media):
    item = VideoItem(path=str(media / "gap.mp4"), key="gap")
    result = preprocess.process(item, PreprocessOptions(size=96, clip_seconds=3.0))
    (clip,) = result.clips
    invalid = np.flatnonzero(~clip["landmark_valid"])
    assert list(invalid) == list(range(26, 40))  # between the hits at frames 25 and 40
    rows = clip["landmarks"]
    np.testing.assert_allclose(rows[33], rows[25] + (rows[40] - rows[25]) * 8 / 15, atol=1e-3)
    cut = preprocess.process(item, PreprocessOptions(size=96, clip_seconds=3.0, min_clip_seconds=0.2,
                                                     max_landmark_gap=10))
    spans = [c["meta"]["source"].split("@")[1] for c in cut.clips]
    assert spans == ["0.00-1.04", "1.60-2.84"]
    assert all(c["landmark_valid"].all() for c in cut.clips)


def test_crops_follow_each_clip_or_the_whole_track(samples_dir, tmp_path):
    face = _face(samples_dir)
    frames = np.zeros((75, 400, 600, 3), np.uint8)
    for i in range(75):  # the face slides 60 px to the right over 3 s
        x = 50 + round(60 * i / 74)
        frames[i, 72:328, x : x + 256] = face
    path = tmp_path / "slide.mp4"
    video_io.write_video(path, frames, audio=_speech(samples_dir, 3.0))
    item = VideoItem(path=str(path), key="slide")
    opts = PreprocessOptions(size=128, clip_seconds=1.0, min_clip_seconds=0.5)
    per_clip = preprocess.process(item, opts)
    whole = preprocess.process(item, dataclasses.replace(opts, crop_span="tube"))
    clip_crops, tube_crops = per_clip.stats["crops"], whole.stats["crops"]
    assert len(clip_crops) == len(tube_crops) == 3 and len({tuple(c) for c in tube_crops}) == 1
    assert all(c[2] < tube_crops[0][2] for c in clip_crops)  # tighter squares
    assert clip_crops[0][0] < clip_crops[1][0] < clip_crops[2][0]  # following the face
    for a, b, ca, cb in zip(per_clip.clips, whole.clips, clip_crops, tube_crops):
        # The same landmarks in source pixels, whichever square they were found in.
        src_a = faces.Crop(*ca).from_crop(a["landmarks"], 128)
        src_b = faces.Crop(*cb).from_crop(b["landmarks"], 128)
        assert np.abs(src_a - src_b).mean() < 2.0


def test_several_faces_keep_the_largest_or_skip(media):
    item = VideoItem(path=str(media / "raw" / "two_faces.mp4"), key="two")
    result = preprocess.process(item, FAST)
    assert result.clips and result.stats["faces"] == 2 and "several faces" in result.stats["note"]
    result = preprocess.process(item, PreprocessOptions(size=96, multi_face="skip"))
    assert not result.clips and result.skipped == [("two", "several faces: 2 at the same time")]


def _span(clip):
    """(first frame, end frame) of a clip in its source video, from meta["source"]."""
    a, b = clip["meta"]["source"].split("@")[1].split("-")
    return int(round(float(a) * 25)), int(round(float(b) * 25))


@pytest.fixture(scope="module")
def cut_video(samples_dir, tmp_path_factory):
    """An interview-like edit: person A (mouth_source) 1.2 s, person B (pose_source1) 1.2 s
    at the same place in the frame, then A again (4 s later in its video), with speech."""
    def frames(name, start, n):
        stream = video_io.FrameStream(samples_dir / name, max_seconds=(start + n) / 25)
        return np.stack([rgb for k, rgb in stream if k >= start])

    video = np.concatenate([frames("mouth_source.mp4", 0, 30), frames("pose_source1.mp4", 0, 30),
                            frames("mouth_source.mp4", 100, 30)])
    path = tmp_path_factory.mktemp("cut") / "cut.mp4"
    video_io.write_video(path, video, audio=_speech(samples_dir, len(video) / 25))
    return path


def test_two_people_cut_together_get_their_own_speakers(cut_video):
    item = VideoItem(path=str(cut_video), key="cut", speaker="alice", source="cut.mp4")
    result = preprocess.process(item, FAST)
    # IoU tracking links A, B and A into one track (same framing); descriptors split it at
    # the cuts (frames 30 and 60, both keyframes) and name B apart; both A parts are alice.
    assert [(c["meta"]["speaker"], _span(c)) for c in result.clips] == [
        ("alice", (0, 25)), ("alice+cut.2", (30, 55)), ("alice", (60, 85))]
    stats = result.stats
    assert stats["identity_cuts"] == 2 and stats["faces"] == 1
    assert [(p["speaker"], p["frames"]) for p in stats["persons"]] == [("alice", 52), ("alice+cut.2", 26)]
    alice, bob = (np.float32(p["descriptor"]) for p in stats["persons"])
    assert np.linalg.norm(alice - bob) > 0.6  # measured 0.75
    assert stats["descriptors"] < 2 * stats["keyframes"] / 5 + 8  # ~1 per second, + bisections
    # Without the check, the old labelling: every clip is alice and clips straddle the cuts.
    unchecked = preprocess.process(item, dataclasses.replace(FAST, identity_seconds=None))
    assert {c["meta"]["speaker"] for c in unchecked.clips} == {"alice"}
    assert any(a < cut < b for a, b in map(_span, unchecked.clips) for cut in (30, 60))
    assert "persons" not in unchecked.stats and "identity" not in unchecked.stats["seconds"]


def test_hdtf_splits_hold_out_people_not_videos(media, tmp_path):
    raw = tmp_path / "hdtf"
    raw.mkdir()
    ids = ["WDA_BarackObama_000", "WDA_BarackObama_001", "RD_Radio34_000", "RD_Radio34_007",
           "WRA_KristiNoem0_000", "WRA_KristiNoem2_001"]
    for video_id in ids:  # the face does not matter here: speakers come from the ids
        shutil.copy(media / "raw" / "good.mp4", raw / f"{video_id}.mp4")
    out = tmp_path / "out"
    argv = ["--input", str(raw), "--output", str(out), "--dataset", "hdtf", "--size", "64",
            "--clip-seconds", "1", "--min-clip-seconds", "0.4", "--quiet", "--hdtf-test", "WDA_BarackObama_001"]
    assert launch_preprocess.main(argv) == 0

    def speakers(split):
        store = source.ClipStore(out / "shards", split=split)
        return collections.Counter(store.meta(i)["speaker"] for i in range(len(store)))

    # The id given holds out its person: both of Obama's videos (2 clips each).
    assert speakers("test") == {"WDA_BarackObama": 4}
    assert speakers("train") == {"RD_Radio34": 4, "WRA_KristiNoem": 4}
    # The default rule hashes speakers, now people: one person with all of its videos.
    # (With video ids as speakers it held out one video of 6, whose twin stayed in train.)
    splits.write_splits(out / "shards")
    test, train = speakers("test"), speakers("train")
    assert len(test) == 1 and sum(test.values()) == 4 and not set(test) & set(train)


def test_run_local_reports_every_bad_input(media, tmp_path):
    items = datasets.discover(str(media / "raw"), "folder")
    assert len(items) == 9
    # 4 of 9 fail: allowed here by the failure-rate limit (test_failure_rate_limit_stops_a_run).
    report = preprocess.run_local(items, tmp_path / "out", dataclasses.replace(FAST, max_failure_rate=0.5),
                                  workers=2, progress=False)
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["clips_written"] == report["clips_written"] > 0
    status = {k: v for k, v in on_disk["items"].items()}
    reasons = {k: [why for what, why in v["skipped"] if what == k] for k, v in status.items()}
    assert reasons["noaudio"][0].startswith("no audio")
    assert reasons["noface"][0].startswith("no face")
    assert reasons["corrupt"][0].startswith("bad video") and "corrupt.mp4" in reasons["corrupt"][0]
    assert reasons["garbage"][0].startswith("bad video")
    assert on_disk["skip_reasons"]["bad video"] == 2
    weird = next(k for k in status if k.startswith("caf"))
    assert set(weird) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    for key in ("good", "two_faces", "gray_odd", "vfr", weird):
        assert status[key]["clips"] >= 1 and not reasons[key], (key, status[key])
    assert status["two_faces"]["stats"]["faces"] == 2 and "several faces" in status["two_faces"]["stats"]["note"]
    # floor(end * 25), the last frame lasting 1/25 s (the stream's nominal rate).
    assert status["vfr"]["stats"]["frames"] == int((_vfr_times()[-1] + 0.04) * 25) == 61
    manifest = shards.load_manifest(tmp_path / "out" / "shards")
    assert manifest["num_clips"] == report["clips_written"]
    store = source.ClipStore(tmp_path / "out" / "shards")
    assert {store.meta(i)["dataset"] for i in range(len(store))} == {"folder"}
    clip = store.clip(0)
    assert clip["frames"].shape[1:] == (96, 96, 3)


def test_resume_skips_finished_videos_and_redoes_interrupted_ones(media, tmp_path):
    raw = media / "raw"
    items = [it for it in datasets.discover(str(raw), "folder") if it.key in ("good", "gray_odd")]
    out = tmp_path / "out"
    preprocess.run_local(items, out, FAST, workers=1, progress=False)
    good, gray = (out / "shards" / f"{k}.array_record" for k in ("good", "gray_odd"))
    stamp = good.stat().st_mtime_ns
    # Crash windows: "good" lost its status after the shard was complete; "gray_odd" was
    # interrupted while writing (only a .tmp file).
    (out / "status" / "good.json").unlink()
    (out / "status" / "gray_odd.json").unlink()
    gray.unlink()
    (out / "shards" / "gray_odd.array_record.tmp").write_bytes(b"partial")
    report = preprocess.run_local(items, out, FAST, workers=1, progress=False)
    assert report["done_before"] == 1 and good.stat().st_mtime_ns == stamp
    assert gray.exists() and not (out / "shards" / "gray_odd.array_record.tmp").exists()
    assert report["items"]["gray_odd"]["clips"] >= 1 and report["num_clips"] == report["clips_written"]
    with pytest.raises(ValueError, match="other settings"):
        preprocess.run_local(items, out, PreprocessOptions(size=64), progress=False)


def test_cli_killed_and_rerun(media, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "launch.preprocess", "--input", str(media / "raw"), "--output", str(out),
           "--size", "96", "--clip-seconds", "1", "--min-clip-seconds", "0.4", "--max-failure-rate", "0.5",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "status").glob("*.json"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "status").glob("*.json")))
    assert finished >= 2
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["done_before"] >= finished and report["num_items"] == 9
    assert "9 videos" in done.stdout and "report:" in done.stdout
    assert not list((out / "shards").glob("*.tmp"))


def test_discovery_layouts(tmp_path):
    def touch(rel):
        path = os.path.join(os.fsencode(tmp_path), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()

    touch("mead/M003/video/front/angry/level_2/001.mp4")
    touch("mead/M003/audio/angry/level_2/001.m4a")
    touch("mead/W009/video/front/neutral/level_1/002.mp4")
    touch("mead/W009/video/left_30/neutral/level_1/002.mp4")  # not front: ignored
    touch("flat/Original_video/M030#happy#level_3#010.mp4")
    touch("flat/audio/M030#happy#level_3#010.wav")
    touch("hdtf/WDA_BarackObama_000.mp4")
    touch("hdtf/RD_Radio1_000.MP4")
    touch("folder/alice/take 1.mov")
    touch("folder/bob/x.mkv")
    touch(b"folder/bob/\xe9t\xe9.avi")
    touch("folder/bob/notes.txt")
    mead = datasets.discover(str(tmp_path / "mead"), "mead")
    assert [(i.key, i.speaker, i.emotion, i.level) for i in mead] == [
        ("M003#angry#level_2#001", "M003", "angry", 2), ("W009#neutral#level_1#002", "W009", "neutral", 1)]
    assert mead[0].audio_path.endswith("M003/audio/angry/level_2/001.m4a") and mead[1].audio_path is None
    (flat,) = datasets.discover(str(tmp_path / "flat" / "Original_video"), "mead")
    assert flat.key == "M030#happy#level_3#010" and flat.audio_path.endswith("flat/audio/M030#happy#level_3#010.wav")
    hdtf = datasets.discover(str(tmp_path / "hdtf"), "hdtf")
    assert sorted((i.key, i.speaker) for i in hdtf) == [("RD_Radio1_000", "RD_Radio1"),
                                                        ("WDA_BarackObama_000", "WDA_BarackObama")]
    folder = datasets.discover(str(tmp_path / "folder"), "folder", speaker_from="parent")
    assert len(folder) == 3 and {i.speaker for i in folder} == {"alice", "bob"}
    keys = [i.key for i in folder]
    assert len(set(keys)) == 3 and not any(datasets._UNSAFE.search(k) for k in keys)
    assert any(k.startswith("alice__take_1-") for k in keys)
    json.dumps([i.source for i in folder])  # printable even for non-UTF-8 names
    single = datasets.discover(str(tmp_path / "hdtf" / "WDA_BarackObama_000.mp4"), "folder")
    assert [i.key for i in single] == ["WDA_BarackObama_000"]
    with pytest.raises(FileNotFoundError):
        datasets.discover(str(tmp_path / "missing"), "folder")


class _CameraWriter(video_io.VideoWriter):
    """A VideoWriter that also writes what phones and anamorphic cameras write: a display
    matrix (`rotation` degrees counter-clockwise, PyAV's set_display_rotation) and a
    sample aspect ratio."""

    def __init__(self, path, rotation=0, sar=None, **kwargs):
        super().__init__(path, **kwargs)
        self.rotation, self.sar = rotation, sar

    def _open_stream(self, height, width):
        super()._open_stream(height, width)
        if self.rotation:
            self.stream.set_display_rotation(self.rotation)
        if self.sar is not None:
            self.stream.codec_context.sample_aspect_ratio = self.sar


def _eyes_above_mouth(clip):
    rows = clip["landmarks"][clip["landmark_valid"]]
    eyes = rows[:, list(schema.LEFT_EYE + schema.RIGHT_EYE), 1].mean(1)
    return len(rows) and bool((rows[:, list(schema.MOUTH), 1].min(1) > eyes).all())


def test_rotated_phone_clip_is_upright(samples_dir, tmp_path):
    upright = _moving(_face(samples_dir), 40)
    stored = np.ascontiguousarray(np.rot90(upright, -1, axes=(1, 2)))  # the sensor's frames: turned clockwise
    path = tmp_path / "phone.mp4"
    with _CameraWriter(path, rotation=90, audio=_speech(samples_dir, 1.6)) as writer:
        writer.write(stored)
    assert len(faces.detect(cv2.cvtColor(stored[0], cv2.COLOR_RGB2GRAY))) == 0  # sideways: "no face"
    result = preprocess.process(VideoItem(path=str(path), key="phone"), FAST)
    assert result.clips and not result.skipped, result.skipped
    assert result.stats["rotation"] == 270  # degrees clockwise that make it upright
    assert all(_eyes_above_mouth(c) for c in result.clips)
    frame = shards.decode_jpeg(result.clips[0]["frames"][0])
    assert len(faces.detect(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))) == 1


def _eye_spacing(rows):
    """Distance between the eye centres over the eye-to-mouth height: 2x wider when a face
    is squashed to half its height, halved when squashed to half its width."""
    left, right = rows[list(schema.LEFT_EYE)].mean(0), rows[list(schema.RIGHT_EYE)].mean(0)
    mouth = rows[list(schema.MOUTH)].mean(0)
    return np.linalg.norm(right - left) / abs(mouth[1] - (left[1] + right[1]) / 2)


def test_anamorphic_clip_is_not_squashed(samples_dir, tmp_path):
    face = _face(samples_dir)
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    truth = _eye_spacing(faces.landmarks(gray, faces.detect(gray)[0]))
    frames = _moving(face, 30)
    squeezed = np.stack([cv2.resize(f, (128, 256), interpolation=cv2.INTER_AREA) for f in frames])
    path = tmp_path / "anamorphic.mp4"  # pixels twice as wide as high: 128 stored columns show 256
    with _CameraWriter(path, sar=fractions.Fraction(2, 1), audio=_speech(samples_dir, 1.2)) as writer:
        writer.write(squeezed)
    result = preprocess.process(VideoItem(path=str(path), key="wide"), FAST)
    assert result.clips and result.stats["width"] == 256 and result.stats["sample_aspect_ratio"] == 2.0
    spacing = np.median([_eye_spacing(r) for c in result.clips for r in c["landmarks"]])
    assert abs(spacing / truth - 1) < 0.1, (spacing, truth)  # squashed it would be about 0.5


def test_timestamp_gap_cuts_the_clip(samples_dir, tmp_path):
    # 1.52 s of video, a 2 s hole (no frame between 1.48 s and 3.52 s), 1.52 s more.
    times = [i * 0.04 for i in range(38)] + [3.52 + i * 0.04 for i in range(38)]
    path = tmp_path / "hole.mp4"
    video_io.write_video(path, _moving(_face(samples_dir), 76), times=times, audio=_speech(samples_dir, 5.1))
    result = preprocess.process(VideoItem(path=str(path), key="hole"), FAST)
    assert result.stats["frames"] == 126 and result.stats["timestamp_gaps"] == [[38, 88]]
    assert ("hole@1.52-3.52", "timestamp gap: no video frame for 2.00 s; the clip is cut there (frames are "
            "not held across it)") in result.skipped
    spans = [tuple(float(x) for x in c["meta"]["source"].split("@")[1].split("-")) for c in result.clips]
    assert spans and any(a >= 3.52 for a, _ in spans) and any(b <= 1.52 for _, b in spans)
    assert all(b <= 1.52 or a >= 3.52 for a, b in spans), spans  # no clip spans the hole
    for clip in result.clips:  # moving, not frozen: every frame differs from the one before
        frames = shards.decode_jpegs(clip["frames"]).astype(np.float32)
        assert np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3)).min() > 0.5


def test_same_named_takes_pair_with_their_own_audio(tmp_path):
    def touch(rel):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    for rel in ("videos/alice/take1.mp4", "videos/bob/take1.mp4", "videos/carol/solo.mp4",
                "audio/alice/take1.wav", "audio/bob/take1.m4a", "audio/solo.wav"):
        touch(rel)
    items = {i.source: i for i in datasets.discover(str(tmp_path / "videos"), "folder",
                                                    audio_dir=str(tmp_path / "audio"))}
    assert items["alice/take1.mp4"].audio_path == str(tmp_path / "audio/alice/take1.wav")
    assert items["bob/take1.mp4"].audio_path == str(tmp_path / "audio/bob/take1.m4a")
    assert items["carol/solo.mp4"].audio_path == str(tmp_path / "audio/solo.wav")  # by name: unambiguous
    # A file that matches both takes by name only is refused, naming both videos.
    (tmp_path / "audio/bob/take1.m4a").unlink()
    touch("audio/take1.wav")
    with pytest.raises(datasets.DiscoveryError, match=r"take1.wav <- alice/take1.mp4, bob/take1.mp4"):
        datasets.discover(str(tmp_path / "videos"), "folder", audio_dir=str(tmp_path / "audio"))
    from launch import preprocess as cli
    assert cli.main(["--input", str(tmp_path / "videos"), "--output", str(tmp_path / "out"),
                     "--audio-dir", str(tmp_path / "audio"), "--quiet"]) == 1
    # HDTF (flat) pairs by name as before.
    touch("hdtf/WDA_A_000.mp4")
    touch("hdtf_audio/WDA_A_000.wav")
    (hdtf,) = datasets.discover(str(tmp_path / "hdtf"), "hdtf", audio_dir=str(tmp_path / "hdtf_audio"))
    assert hdtf.audio_path == str(tmp_path / "hdtf_audio/WDA_A_000.wav")


def test_programming_error_inside_processing_fails_loudly(media, tmp_path, monkeypatch):
    def broken(wav, num_frames=None, fps=25):
        return np.zeros((3,)) + np.zeros((4,))  # a numpy shape bug (ValueError)

    monkeypatch.setattr(audio, "mel_windows", broken)
    item = next(it for it in datasets.discover(str(media / "raw"), "folder") if it.key == "good")
    with pytest.raises(ValueError, match="could not be broadcast") as e:
        preprocess.process(item, FAST)
    assert "while preprocessing good.mp4" in "".join(e.value.__notes__)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="could not be broadcast"):
        preprocess.run_local([item], out, FAST, progress=False)
    # Not recorded as done (redone on resume), no partial shard, no report.
    assert not list((out / "status").iterdir())
    assert not (out / "shards").exists() or not list((out / "shards").iterdir())
    assert not (out / "report.json").exists()


def test_failure_rate_limit_stops_a_run(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        (raw / f"bad{i}.avi").write_bytes(b"\x00not a video" * 10)
    out = tmp_path / "out"
    items = datasets.discover(str(raw), "folder")
    with pytest.raises(preprocess.TooManyFailures, match=r"2 of 2 finished videos were skipped whole") as e:
        preprocess.run_local(items, out, dataclasses.replace(FAST, max_failure_rate=0.5), progress=False)
    assert "bad0: bad video: " in str(e.value) and "bad1: bad video: " in str(e.value)
    report = json.loads((out / "report.json").read_text())
    assert report["stopped"] and report["failures"]["skipped_whole"] == 2 and report["num_items"] == 3
    assert not (out / "shards" / "manifest.json").exists()
    # The command line: exit 3 with the reasons; a resumed run stops again at once.
    from launch import preprocess as cli
    args = ["--input", str(raw), "--output", str(out), "--size", "96", "--clip-seconds", "1",
            "--min-clip-seconds", "0.4", "--quiet"]
    assert cli.main(args + ["--max-failure-rate", "0.5"]) == 3
    assert "more than max_failure_rate=0.5 allows" in capsys.readouterr().err
    assert len(list((out / "status").iterdir())) == 2
    # Raising the limit (it may change between runs of one directory) finishes the run.
    assert cli.main(args + ["--max-failure-rate", "1"]) == 0
    assert json.loads((out / "report.json").read_text())["items_skipped"] == 3
    # Many videos: the share of those finished decides once 20 have finished.
    many = [VideoItem(path=str(raw / "bad0.avi"), key=f"v{i}", source=f"v{i}") for i in range(60)]
    with pytest.raises(preprocess.TooManyFailures, match=r"20 of 20 finished .* 60 videos in all"):
        preprocess.run_local(many, tmp_path / "many", dataclasses.replace(FAST, max_failure_rate=0.5),
                             progress=False)
