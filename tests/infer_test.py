"""launch.infer: every mode from raw media with the parity fixtures' official-layout
checkpoints (64², widths / 8), checked against the compositions it must compute, plus
bad inputs."""

import functools
import json
import os

import jax
import numpy as np
import pytest
import soundfile

from data_pipeline.preprocess import audio as audio_lib, video_io
from data_pipeline.preprocess.audio import AudioError
from data_pipeline.preprocess.faces import FaceError
from data_pipeline.loaders import to_float
from data_pipeline.loaders.images import resize_frames
from edtalk_jax import infer, inference
from edtalk_jax.run_config import ConfigError

T_AUDIO = 12  # frames of the short test audio


@pytest.fixture(scope="module")
def media(samples_dir, tmp_path_factory):
    """Short inputs: 12 frames of speech, 6- and 5-frame face videos, a source photo."""
    d = tmp_path_factory.mktemp("media")
    wav = audio_lib.load_audio(samples_dir / "mouth_source.wav")[:T_AUDIO * 640 + 100]
    out = {"wav": str(d / "speech.wav"), "photo": str(samples_dir / "identity_source.jpg"),
           "uncropped": str(samples_dir / "uncrop_face.jpg")}
    soundfile.write(out["wav"], wav, audio_lib.SAMPLE_RATE, subtype="PCM_16")
    for name, src, n in (("pose", "pose_source1.mp4", 6), ("exp", "expression_source.mp4", 5),
                         ("lips", "mouth_source.mp4", 8)):
        frames = video_io.read_frames(samples_dir / src)[:n]
        out[name] = str(d / f"{name}.mp4")
        video_io.write_video(out[name], frames)
        out[name + "_frames"] = frames
    return out


@pytest.fixture(scope="module")
def full(parity_dir):
    return infer.load_models(str(parity_dir / "edtalk_gen_s64_w8_seed0.pt"),
                             str(parity_dir / "audio2lip_seed0.pt"))


@pytest.fixture(scope="module")
def lip_pose(parity_dir):
    return infer.load_models(str(parity_dir / "edtalk_lip_pose_s64_w8_seed0.pt"),
                             str(parity_dir / "audio2lip_seed0.pt"))


NO_CROP = infer.Options(crop="none", progress=False, batch_size=4)


class Collect:
    """A writer that keeps the rendered frames (float, before uint8 conversion)."""

    def __init__(self):
        self.frames = []

    def put(self, images, n):
        self.frames.append(np.asarray(images)[:n])

    def array(self):
        return np.concatenate(self.frames)


def _faces(frames, size):
    return to_float(resize_frames(np.asarray(frames), size))


def test_extend_rules():
    np.testing.assert_array_equal(infer.extend_indices(3, 8, "hold"), [0, 1, 2, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(infer.extend_indices(3, 8, "pingpong"), [0, 1, 2, 2, 1, 0, 0, 1])
    np.testing.assert_array_equal(infer.extend_indices(3, 8, "loop"), [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(infer.extend_indices(5, 3, "pingpong"), [0, 1, 2])


def test_edtalk_a_with_emotion_is_the_official_composition(full, media):
    """Lips: Audio2Lip on the official mel windows, smoothed by the official kernel with
    zero padding; pose: the pose video's frames held at the last; exp: the emotion."""
    renderer = infer.Renderer(full, 4)
    inputs = infer.Inputs(media["photo"], audio=media["wav"], pose_video=media["pose"], emotion="happy")
    job = infer.prepare(renderer, inputs, NO_CROP)
    assert job.t == T_AUDIO and job.extend == {"pose": "hold"}
    assert job.audio.shape == (T_AUDIO * 640,)

    wav = audio_lib.load_audio(media["wav"])
    raw = np.asarray(jax.jit(full.audio2lip.apply)(full.audio2lip_variables, audio_lib.mel_windows(wav)))
    padded = np.pad(raw, ((1, 1), (0, 0)))
    k = inference.SMOOTH_KERNEL
    expected = k[0] * padded[:-2] + k[1] * padded[1:-1] + k[2] * padded[2:]
    np.testing.assert_allclose(job.alphas["lip"], expected, atol=1e-5)

    pose_frames = video_io.read_frames(media["pose"])
    coeffs = inference.coefficient_fn(full.gen, full.gen_variables, ("pose",), batch_size=8)(
        _faces(pose_frames, 64))["pose"]
    np.testing.assert_allclose(job.alphas["pose"], coeffs[np.minimum(np.arange(T_AUDIO), len(coeffs) - 1)],
                               atol=1e-4)
    np.testing.assert_array_equal(job.alphas["exp"],
                                  np.repeat(inference.predefined_emotions()["happy"][None], T_AUDIO, 0))

    # Rendering in padded batches of 4 equals rendering frame by frame.
    sink = Collect()
    renderer.render(sink, job.source, job.alphas, job.t, progress=False)
    got = sink.array()
    assert got.shape == (T_AUDIO, 64, 64, 3)
    source = inference.encode_source(full.gen, full.gen_variables,
                                     _faces(infer.read_image(media["photo"])[None], 64))
    drive = jax.jit(functools.partial(inference.drive, full.gen))
    for i in (0, 5, T_AUDIO - 1):
        one = drive(full.gen_variables, source,
                              **{f"{p}_alpha": job.alphas[p][i:i + 1] for p in full.gen.parts})["image"]
        np.testing.assert_allclose(got[i], np.asarray(one)[0], atol=2e-3)  # decoder rounding (parity README)


def test_edtalk_v_encodes_a_video_once_for_all_the_parts_it_drives(full, media, monkeypatch):
    """--lip-video and --pose-video the same file: one encoder pass gives both; the
    expression video loses nothing (5 frames <= 20) and is ping-ponged."""
    calls = []
    original = infer.Renderer.video_coefficients

    def counting(self, frames, parts, desc, progress):
        calls.append(tuple(parts))
        return original(self, frames, parts, desc, progress)

    monkeypatch.setattr(infer.Renderer, "video_coefficients", counting)
    renderer = infer.Renderer(full, 4)
    inputs = infer.Inputs(media["photo"], lip_video=media["lips"], pose_video=media["lips"],
                          exp_video=media["exp"])
    job = infer.prepare(renderer, inputs, NO_CROP)
    assert sorted(calls) == [("exp",), ("lip", "pose")]
    assert job.t == 8 and job.audio is None
    coeffs = inference.coefficient_fn(full.gen, full.gen_variables, ("lip", "pose", "exp"), batch_size=8)
    lips = coeffs(_faces(video_io.read_frames(media["lips"]), 64))
    exp = coeffs(_faces(video_io.read_frames(media["exp"]), 64))["exp"]
    np.testing.assert_allclose(job.alphas["lip"], lips["lip"], atol=1e-4)
    np.testing.assert_allclose(job.alphas["pose"], lips["pose"], atol=1e-4)
    np.testing.assert_allclose(job.alphas["exp"], exp[[0, 1, 2, 3, 4, 4, 3, 2]], atol=1e-4)


def test_relip_renders_each_frame_from_itself(lip_pose, media):
    """Re-lipping a 5-frame video with 12 frames of audio: the frames ping-pong, each is
    the source and pose of its output frame."""
    renderer = infer.Renderer(lip_pose, 4)
    job = infer.prepare(renderer, infer.Inputs(media["exp"], audio=media["wav"]), NO_CROP)
    assert job.t == T_AUDIO and job.source is None and set(job.alphas) == {"lip"}
    order = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1]
    frames = resize_frames(video_io.read_frames(media["exp"]), 64)
    np.testing.assert_array_equal(job.frames, frames[order])
    sink = Collect()
    renderer.render(sink, None, job.alphas, job.t, progress=False, frames=job.frames)
    got = sink.array()
    drive = jax.jit(functools.partial(inference.drive, lip_pose.gen))
    for i in (0, 6, 11):
        x = to_float(job.frames[i:i + 1])
        src = inference.encode_source(lip_pose.gen, lip_pose.gen_variables, x)
        one = drive(lip_pose.gen_variables, src, lip_alpha=job.alphas["lip"][i:i + 1],
                              img=x)["image"]
        np.testing.assert_allclose(got[i], np.asarray(one)[0], atol=2e-3)  # decoder rounding (parity README)


def test_cli_writes_an_mp4_with_the_audio_from_an_uncropped_photo(parity_dir, media, tmp_path, capsys):
    from launch import infer as cli

    emotion = tmp_path / "mine.npy"
    np.save(emotion, np.linspace(-1, 1, 10, dtype=np.float32)[None])
    out = tmp_path / "out" / "talk.mp4"
    out.parent.mkdir()
    cli.main(["--checkpoint", str(parity_dir / "edtalk_gen_s64_w8_seed0.pt"),
              "--audio2lip", str(parity_dir / "audio2lip_seed0.pt"), "--source", media["uncropped"],
              "--audio", media["wav"], "--emotion", str(emotion), "--out", str(out), "--no-progress"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == T_AUDIO and summary["mode"] == "EDTalk-A (emotion)"
    assert os.listdir(out.parent) == ["talk.mp4"]  # no temporary file left
    info = video_io.probe(str(out))
    assert (info.width, info.height, round(info.fps), info.has_audio) == (64, 64, 25, True)
    assert len(video_io.read_frames(str(out))) == T_AUDIO
    assert abs(len(audio_lib.load_audio(str(out))) / 16000 - T_AUDIO / 25) < 0.05


def _models_raise(err, match, *args):
    with pytest.raises(err, match=match):
        infer.load_models(*args)


def test_checkpoints_of_the_wrong_kind(parity_dir):
    a2l, gen = str(parity_dir / "audio2lip_seed0.pt"), str(parity_dir / "edtalk_gen_s64_w8_seed0.pt")
    _models_raise(ConfigError, "audio2lip, not one of", a2l)
    _models_raise(ConfigError, "not an Audio2Lip", gen, gen)
    _models_raise(infer.InferenceError, "holds no Audio2Lip", gen, None, True)


@pytest.mark.parametrize("case", ["no_face", "two_faces", "silent", "not_audio", "empty_video", "lengths",
                                  "emotion_name", "emotion_size", "emotion_lip_pose", "two_exp", "no_lips",
                                  "relip_no_audio", "missing", "bad_out"])
def test_bad_inputs_are_named(case, full, lip_pose, media, tmp_path):
    import cv2

    photo = infer.read_image(media["photo"])
    blank, two = str(tmp_path / "blank.png"), str(tmp_path / "two.png")
    cv2.imwrite(blank, np.full((200, 200, 3), 128, np.uint8))
    cv2.imwrite(two, np.concatenate([photo, photo], axis=1)[..., ::-1])
    silent = str(tmp_path / "silent.wav")
    soundfile.write(silent, np.zeros(16000, np.float32), 16000)
    text = str(tmp_path / "notes.mp4")
    open(text, "w").write("not a video")
    npy = str(tmp_path / "e.npy")
    np.save(npy, np.zeros(7, np.float32))
    auto = infer.Options(progress=False)
    cases = {
        "no_face": (full, infer.Inputs(blank, audio=media["wav"]), auto, FaceError, "blank.png: no face found"),
        "two_faces": (full, infer.Inputs(two, audio=media["wav"]), auto, FaceError, "two.png: 2 faces"),
        "silent": (full, infer.Inputs(media["photo"], audio=silent), NO_CROP, AudioError, "silent.wav: .*silent"),
        "not_audio": (full, infer.Inputs(media["photo"], audio=text), NO_CROP, AudioError, "notes.mp4"),
        "empty_video": (full, infer.Inputs(media["photo"], audio=media["wav"], pose_video=text), NO_CROP,
                        video_io.VideoError, "notes.mp4"),
        "lengths": (full, infer.Inputs(media["photo"], audio=media["wav"], lip_video=media["pose"]),
                    infer.Options(crop="none", progress=False, max_length_mismatch=0.1),
                    infer.InferenceError, "speech.wav lasts 0.4. s, --lip-video .*pose.mp4 0.24 s"),
        "emotion_name": (full, infer.Inputs(media["photo"], audio=media["wav"], emotion="joyful"), NO_CROP,
                         infer.InferenceError, "'joyful': not one of angry"),
        "emotion_size": (full, infer.Inputs(media["photo"], audio=media["wav"], emotion=npy), NO_CROP,
                         infer.InferenceError, "e.npy: 7 values, .* has 10"),
        "emotion_lip_pose": (lip_pose, infer.Inputs(media["photo"], audio=media["wav"], emotion="happy"),
                             NO_CROP, infer.InferenceError, "no expression space"),
        "two_exp": (full, infer.Inputs(media["photo"], audio=media["wav"], emotion="happy",
                                       exp_video=media["exp"]), NO_CROP, infer.InferenceError, "at most one"),
        "no_lips": (full, infer.Inputs(media["photo"], pose_video=media["pose"]), NO_CROP,
                    infer.InferenceError, "nothing drives the lips"),
        "relip_no_audio": (lip_pose, infer.Inputs(media["exp"], lip_video=media["lips"]), NO_CROP,
                           infer.InferenceError, "--lip-video and --pose-video do not apply"),
        "missing": (full, infer.Inputs(media["photo"], audio=str(tmp_path / "nope.wav")), NO_CROP,
                    infer.InferenceError, "--audio .*nope.wav: no such file"),
        "bad_out": (full, infer.Inputs(media["photo"], audio=media["wav"]), NO_CROP,
                    infer.InferenceError, "does not exist"),
    }
    models, inputs, options, err, match = cases[case]
    out = str(tmp_path / ("missing_dir/o.mp4" if case == "bad_out" else "o.mp4"))
    with pytest.raises(err, match=match):
        infer.run(models, inputs, out, options)
    assert not [f for f in os.listdir(tmp_path) if f.startswith((".o.", "o."))]


def test_a_failure_while_rendering_leaves_no_file(full, media, tmp_path, monkeypatch):
    def fail(self, writer, *args, **kwargs):
        writer.put(np.zeros((1, 64, 64, 3), np.float32), 1)
        raise RuntimeError("device lost")

    monkeypatch.setattr(infer.Renderer, "render", fail)
    with pytest.raises(RuntimeError, match="device lost"):
        infer.run(full, infer.Inputs(media["photo"], audio=media["wav"]), str(tmp_path / "o.mp4"), NO_CROP)
    assert os.listdir(tmp_path) == []
