"""Synthetic talking heads: determinism, schema, drawn landmarks, audio -> mouth, factors."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest

from data_pipeline import synthetic
from data_pipeline.records import schema, shards, source

SMALL = synthetic.SyntheticConfig(num_speakers=2, clips_per_speaker=2, frames_per_clip=6, size=64)


def factor(clip, name):
    return clip["factors"][:, clip["meta"]["factor_names"].split(",").index(name)]


def test_shapes_and_schema():
    clip = synthetic.render_clip(SMALL, 1, 1)
    shape = schema.validate_clip(clip)
    assert shape == schema.ClipShape(num_frames=6, size=64, num_factors=len(synthetic.FACTOR_NAMES))
    meta = clip["meta"]
    assert (meta["dataset"], meta["speaker"], meta["fps"]) == ("synthetic", "S001", 25.0)
    assert meta["clip_id"] == f"S001#{meta['emotion']}#level_{meta['level']}#001"
    assert meta["emotion"] != "neutral" and meta["source"] == "synthetic:seed=0,speaker=1,clip=1"
    frames = shards.decode_jpegs(clip["frames"])
    assert frames.shape == (6, 64, 64, 3) and frames.std() > 10
    assert ((clip["landmarks"] > 0) & (clip["landmarks"] < 64)).all()
    assert np.isfinite(clip["factors"]).all() and clip["landmark_valid"].all()
    assert synthetic.render_clip(SMALL, 0, 0)["meta"]["emotion"] == "neutral"
    with pytest.raises(ValueError, match="emotions"):
        synthetic.render_clip(synthetic.SyntheticConfig(emotions=("bored",)), 0, 0)


def test_deterministic():
    a = shards.encode_clip(synthetic.render_clip(SMALL, 1, 0))
    assert a == shards.encode_clip(synthetic.render_clip(SMALL, 1, 0))
    other = synthetic.SyntheticConfig(**{**SMALL.__dict__, "seed": 1})
    assert a != shards.encode_clip(synthetic.render_clip(other, 1, 0))


def test_emotion_assignment():
    cfg = synthetic.SyntheticConfig(num_speakers=3, clips_per_speaker=16)
    seen = {synthetic.clip_emotion(cfg, s, c) for s in range(3) for c in range(16)}
    assert seen >= {(e, lvl) for e in schema.EMOTIONS[1:] for lvl in (1, 2, 3)}
    assert all(synthetic.clip_emotion(cfg, s, 0) == ("neutral", 1) for s in range(3))
    happy = synthetic.SyntheticConfig(emotions=("happy",))
    assert [synthetic.clip_emotion(happy, 0, c) for c in range(3)] == [("happy", 1), ("happy", 2), ("happy", 3)]


def _poly_mask(shape, points, grow=0):
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return cv2.dilate(mask, np.ones((2 * grow + 1,) * 2, np.uint8)) if grow else mask


def test_landmarks_lie_on_the_drawn_features():
    cfg = synthetic.SyntheticConfig(frames_per_clip=30, size=256)
    for speaker in range(3):
        clip = synthetic.render_clip(cfg, speaker, 0)
        ident = synthetic.identity(cfg, speaker)
        frames = shards.decode_jpegs(clip["frames"]).astype(np.float64)
        lmk = clip["landmarks"]
        blink, open_ = factor(clip, "blink"), factor(clip, "mouth_open")
        for k in range(0, 30, 3):
            img, p = frames[k], lmk[k]
            dist = lambda xy, color: np.abs(img[int(round(xy[1])), int(round(xy[0]))] - color).mean()  # noqa: E731
            # Lip body: between outer and inner lip landmarks (lower lip, thicker).
            for outer, inner in ((57, 66), (56, 65), (58, 67)):
                xy = (p[outer] + p[inner]) / 2
                assert dist(xy, ident["lip"]) < dist(xy, ident["skin"]), (speaker, k, outer)
            for b in (19, 20, 21, 22, 23, 24):  # the thick inner part of the brows
                assert dist(p[b], ident["brow"]) < dist(p[b], ident["skin"]), (speaker, k, b)
            assert dist(p[30], ident["skin"]) < 25  # the nose tip is on the face
            # Every eye-white-coloured pixel is inside an eye (or, as teeth, the mouth).
            white = np.abs(img - (240, 237, 230)).max(-1) < 14
            inside = (_poly_mask(img.shape, p[36:42], 2) | _poly_mask(img.shape, p[42:48], 2)
                      | _poly_mask(img.shape, p[60:68], 2))
            assert (white & ~inside.astype(bool)).sum() == 0, (speaker, k)
            if blink[k] == 0:  # open eyes hold no skin; the cheek below them does
                skin = np.abs(img - ident["skin"]).max(-1) < 15
                iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
                for eye in (p[36:42], p[42:48]):
                    assert skin[_poly_mask(img.shape, eye) > 0].mean() < 0.1, (speaker, k)
                    cheek = eye + (0, 0.5 * iod)
                    assert skin[_poly_mask(img.shape, cheek) > 0].mean() > 0.8, (speaker, k)
            # Lip-coloured pixels cluster in the mouth polygon.
            lip = np.abs(img - ident["lip"]).max(-1) < 12
            mouth = _poly_mask(img.shape, p[48:60], 2).astype(bool)
            assert (lip & mouth).sum() > 0.9 * lip.sum(), (speaker, k)
            if open_[k] > 0.5:  # dark mouth interior inside the inner lip contour
                assert (np.abs(img - (70, 20, 25)).max(-1) < 20)[_poly_mask(img.shape, p[60:68]) > 0].any()


def test_mouth_follows_the_audio():
    cfg = synthetic.SyntheticConfig(frames_per_clip=125, size=64)
    for speaker in range(3):
        clip = synthetic.render_clip(cfg, speaker, 1)
        mouth = factor(clip, "mouth_open")
        assert mouth.min() < 0.05 and mouth.max() > 0.5  # closes in pauses, opens on syllables
        wav = clip["audio"].astype(np.float64) / 32768
        centres = np.arange(125) * 640 + 320
        rms = np.array([np.sqrt(np.mean(wav[max(0, c - 640): c + 640] ** 2)) for c in centres])
        assert np.corrcoef(mouth, rms)[0, 1] > 0.9
        # Mel energy below ~1.5 kHz (bins 0-39) at the window centre (steps 7-9).
        amp = 10 ** (((clip["mel_windows"].astype(np.float64) + 4) / 8 * 100 - 100) / 20)
        assert np.corrcoef(mouth, amp[:, :40, 7:10].mean((1, 2)))[0, 1] > 0.9
        # The drawn lip gap (66 below 62) grows with mouth_open.
        gap = np.linalg.norm(clip["landmarks"][:, 66] - clip["landmarks"][:, 62], axis=1)
        assert np.corrcoef(mouth, gap)[0, 1] > 0.95


def _expression(emotion):
    """The last frame (after the ramp) of clip 2 of speaker 0 with only `emotion`."""
    cfg = synthetic.SyntheticConfig(frames_per_clip=20, size=128, emotions=(emotion,))
    clip = synthetic.render_clip(cfg, 0, 2)  # level 3 for a non-neutral emotion
    assert clip["meta"]["emotion"] == emotion
    p = clip["landmarks"][-1].astype(np.float64)
    eye_gap = np.linalg.norm(p[[37, 38, 43, 44]] - p[[41, 40, 47, 46]], axis=1).mean()
    iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    up = p[27] - p[8]
    up /= np.linalg.norm(up)
    centre = (p[62] + p[66]) / 2
    return {
        "brow_height": np.linalg.norm(p[17:27].mean(0) - p[36:48].mean(0)) / iod,
        "inner_brow_lift": ((p[[21, 22]] - p[[17, 26]]) @ up).mean() / iod,
        "brow_gap": np.linalg.norm(p[21] - p[22]) / iod,
        "eye_open": eye_gap / iod,
        "corner_lift": ((p[[48, 54]] - centre) @ up).mean() / iod,
        "mouth_width": np.linalg.norm(p[54] - p[48]) / iod,
        "corner_asym": ((p[54] - p[48]) @ up) / iod,
        "pose": clip["factors"][-1, :6],
    }


def test_emotions_change_the_geometry():
    e = {name: _expression(name) for name in ("neutral", "happy", "sad", "angry", "surprised", "contempt")}
    n = e["neutral"]
    assert all(np.array_equal(v["pose"], n["pose"]) for v in e.values())  # same pose and audio
    assert e["happy"]["corner_lift"] > n["corner_lift"] + 0.02
    assert e["happy"]["mouth_width"] > n["mouth_width"] + 0.05
    assert e["sad"]["corner_lift"] < n["corner_lift"] - 0.01
    assert e["sad"]["inner_brow_lift"] > n["inner_brow_lift"] + 0.03
    assert e["angry"]["inner_brow_lift"] < n["inner_brow_lift"] - 0.03
    assert e["angry"]["brow_gap"] < n["brow_gap"] - 0.03
    assert e["surprised"]["brow_height"] > n["brow_height"] + 0.05
    assert e["surprised"]["eye_open"] > 1.3 * n["eye_open"]
    assert e["happy"]["eye_open"] < n["eye_open"]
    assert e["contempt"]["corner_asym"] > n["corner_asym"] + 0.02  # image-right corner up


def test_pose_moves_landmarks():
    cfg = synthetic.SyntheticConfig(frames_per_clip=125, size=128)
    clip = synthetic.render_clip(cfg, 2, 3)
    p = clip["landmarks"].astype(np.float64)
    f = {n: factor(clip, n) for n in ("yaw", "pitch", "roll", "tx", "ty", "scale")}
    assert np.ptp(f["yaw"]) > 10 and np.ptp(f["pitch"]) > 5 and np.ptp(f["roll"]) > 4
    corr = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    eyes = p[:, 36:48].mean(1)
    iod = np.linalg.norm(p[:, 36:42].mean(1) - p[:, 42:48].mean(1), axis=1)
    # Yaw: the nose tip moves toward +x relative to the face outline.
    assert corr(f["yaw"], (p[:, 30, 0] - p[:, [0, 16], 0].mean(1)) / iod) > 0.9
    # Pitch: the nose tip moves down relative to the eyes.
    nose_down = np.einsum("ti,ti->t", p[:, 30] - eyes, (p[:, 8] - p[:, 27]) / np.linalg.norm(
        p[:, 8] - p[:, 27], axis=1, keepdims=True)) / iod
    assert corr(f["pitch"], nose_down) > 0.9
    eye_line = p[:, 42:48].mean(1) - p[:, 36:42].mean(1)
    assert corr(f["roll"], np.degrees(np.arctan2(eye_line[:, 1], eye_line[:, 0]))) > 0.95


def _neutral(t, **values):
    """Factors (t, F): frontal, unit scale, closed mouth, no expression; `values` set
    columns (a scalar or one value per frame)."""
    f = np.zeros((t, len(synthetic.FACTOR_NAMES)), np.float32)
    f[:, synthetic.FACTOR_NAMES.index("scale")] = 1
    for name, v in values.items():
        f[:, synthetic.FACTOR_NAMES.index(name)] = v
    return f


def test_each_pose_factor_alone():
    cfg = synthetic.SyntheticConfig(size=128)
    draw = lambda **v: synthetic.draw_frames(cfg, 1, _neutral(2, **v))[1].astype(np.float64)  # noqa: E731
    base = draw()[0]
    moved = draw(tx=[0, 0.05], ty=[0, -0.04])
    np.testing.assert_allclose(moved[1] - moved[0], np.tile([0.05 * 128, -0.04 * 128], (68, 1)), atol=1e-3)
    centre = np.array([0.5, 0.48]) * 128  # the head centre at tx = ty = 0
    np.testing.assert_allclose(draw(scale=1.1)[0] - centre, 1.1 * (base - centre), atol=1e-3)
    yaw = draw(yaw=[-20, 20])
    nose_x = yaw[:, 30, 0] - yaw[:, [0, 16], 0].mean(1)
    assert nose_x[1] - nose_x[0] > 0.1 * np.ptp(base[:, 0])  # the nose turns toward +x
    pitch = draw(pitch=[-12, 12])
    assert (pitch[1, 30, 1] - pitch[1, 39, 1]) > (pitch[0, 30, 1] - pitch[0, 39, 1]) + 2  # nose down
    roll = draw(roll=8.0)[0]
    eye_line = roll[42:48].mean(0) - roll[36:42].mean(0)
    assert abs(np.degrees(np.arctan2(eye_line[1], eye_line[0])) - 8.0) < 0.5  # clockwise on screen


def test_speech_and_eye_factors_alone():
    cfg = synthetic.SyntheticConfig(size=128)
    ident = synthetic.identity(cfg, 0)
    lmk = synthetic.draw_frames(cfg, 0, _neutral(2, mouth_open=[0, 1]))[1].astype(np.float64)
    gap = np.linalg.norm(lmk[:, 66] - lmk[:, 62], axis=1)
    unit = synthetic.FACE_PX * 128  # pixels per face unit at scale 1
    assert gap[0] < 0.5 and abs(gap[1] - ident["max_open"] * unit) < 0.5  # lips part by max_open
    assert lmk[1, 8, 1] > lmk[0, 8, 1] + 2  # the chin drops
    big = synthetic.SyntheticConfig(size=128, mouth_scale=2.5)  # only the opening changes
    big_ident = synthetic.identity(big, 0)
    for key, value in dict(ident, max_open=2.5 * ident["max_open"]).items():
        np.testing.assert_allclose(big_ident[key], value, err_msg=key)
    big_lmk = synthetic.draw_frames(big, 0, _neutral(2, mouth_open=[0, 1]))[1].astype(np.float64)
    big_gap = np.linalg.norm(big_lmk[:, 66] - big_lmk[:, 62], axis=1)
    assert big_gap[0] < 0.5 and abs(big_gap[1] - 2.5 * ident["max_open"] * unit) < 0.5
    lmk = synthetic.draw_frames(cfg, 0, _neutral(2, mouth_open=0.5, lip_round=[0, 0.8]))[1]
    width = np.linalg.norm(lmk[:, 54] - lmk[:, 48], axis=1)
    assert width[1] < 0.85 * width[0]  # rounded lips are narrower
    lmk = synthetic.draw_frames(cfg, 0, _neutral(2, blink=[0, 1]))[1].astype(np.float64)
    eye = np.linalg.norm(lmk[:, [37, 38, 43, 44]] - lmk[:, [41, 40, 47, 46]], axis=2).mean(1)
    assert eye[0] > 3 and eye[1] < 0.1  # a blink closes the lids


def test_write_dataset_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    summary = synthetic.write_dataset(SMALL, out, workers=1, progress=False)
    assert (summary["clips_written"], summary["clips_skipped"], summary["num_clips"]) == (4, 0, 4)
    assert summary["train"] + summary["test"] == 4 and summary["test"] == 2  # one speaker held out
    store = source.ClipStore(out)
    assert [store.meta(i)["speaker"] for i in range(4)] == ["S000", "S000", "S001", "S001"]
    assert shards.encode_clip(store.record(3)) == shards.encode_clip(synthetic.render_clip(SMALL, 1, 1))
    assert json.loads((out / "synthetic_config.json").read_text())["size"] == 64

    # A failure while rendering speaker 1 leaves speaker 0's shard and nothing partial.
    os.remove(out / "synthetic" / "S001.array_record")
    render = synthetic.render_clip

    def failing(cfg, speaker, clip_index):
        if speaker == 1 and clip_index == 1:
            raise RuntimeError("render failed")
        return render(cfg, speaker, clip_index)

    monkeypatch.setattr(synthetic.dataset, "render_clip", failing)
    with pytest.raises(RuntimeError, match="render failed"):
        synthetic.write_dataset(SMALL, out, workers=1, progress=False)
    assert sorted(f for f in os.listdir(out / "synthetic") if f.endswith(".array_record")) == ["S000.array_record"]
    monkeypatch.setattr(synthetic.dataset, "render_clip", render)
    summary = synthetic.write_dataset(SMALL, out, workers=1, progress=False)
    assert (summary["clips_written"], summary["clips_skipped"], summary["num_clips"]) == (2, 2, 4)
    with pytest.raises(ValueError, match="other settings.*synthetic_config.json"):
        synthetic.write_dataset(synthetic.SyntheticConfig(size=96), out, workers=1, progress=False)
    # A dataset recorded before mouth_scale existed resumes as mouth_scale 1, not as another one.
    recorded = json.loads((out / "synthetic_config.json").read_text())
    del recorded["mouth_scale"]
    (out / "synthetic_config.json").write_text(json.dumps(recorded))
    assert synthetic.write_dataset(SMALL, out, workers=1, progress=False)["clips_skipped"] == 4
    with pytest.raises(ValueError, match=r"differ: \['mouth_scale'\]"):
        synthetic.write_dataset(dataclasses.replace(SMALL, mouth_scale=2.0), out, workers=1, progress=False)


def test_worker_processes_match(tmp_path):
    cfg = synthetic.SyntheticConfig(num_speakers=2, clips_per_speaker=1, frames_per_clip=3, size=64)
    synthetic.write_dataset(cfg, tmp_path, workers=2, progress=False)
    store = source.ClipStore(tmp_path)
    for i, speaker in enumerate((0, 1)):
        assert shards.encode_clip(store.record(i)) == shards.encode_clip(synthetic.render_clip(cfg, speaker, 0))


def test_background_stripes_are_not_aliased():
    """Stripes finer than MIN_STRIPE_PERIOD_PX become their mean shade; wider ones stay."""
    ident = {"bg": (np.array([200.0, 100.0, 50.0]), np.array([60.0, 160.0, 220.0])),
             "bg_angle": 0.7, "bg_stripes": 0.05}
    plain = synthetic.drawing.background(dict(ident, bg_stripes=0.0), 32).astype(np.float64)
    small = synthetic.drawing.background(ident, 32).astype(np.float64)  # a 1.6 px period
    np.testing.assert_allclose(small, np.floor(plain * 0.95 + 0.5), atol=1.01)
    big = synthetic.drawing.background(ident, 256).astype(np.float64)  # a 12.8 px period: drawn
    ratio = big / np.maximum(synthetic.drawing.background(dict(ident, bg_stripes=0.0), 256), 1)
    assert (ratio < 0.93).mean() > 0.3 and (ratio > 0.97).mean() > 0.3
