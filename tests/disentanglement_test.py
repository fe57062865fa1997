"""Disentanglement probe: a constructed case where the answer is known, and the scoring
of a real (tiny, random) generator on synthetic shards."""

import numpy as np
import pytest

from edtalk_jax import disentanglement as D

NAMES = ["yaw", "pitch", "roll", "tx", "ty", "scale", "mouth_open", "lip_round", "expr_intensity",
         "brow_raise"]


def _clips(n_clips=40, t=30, seed=0):
    """lip follows the mouth factors, pose the pose factors, exp nothing; every space
    carries a large per-clip (speaker) offset, which within-clip scores must ignore."""
    r = np.random.RandomState(seed)
    w_lip, w_pose = r.randn(2, 5), r.randn(6, 6)
    clips = []
    for c in range(n_clips):
        f = r.randn(t, len(NAMES))
        f[:, 9] = 0.3  # brow_raise constant within a clip: not scored
        offset = 10 * r.randn(3, 1, 1)
        coeffs = {"lip": f[:, 6:8] @ w_lip + offset[0] + 0.05 * r.randn(t, 5),
                  "pose": f[:, 0:6] @ w_pose + offset[1] + 0.05 * r.randn(t, 6),
                  "exp": offset[2] + r.randn(t, 3)}
        clips.append({"test": c % 4 == 0, "coeffs": coeffs, "factors": f})
    return clips


def test_known_structure_gives_a_diagonal_matrix():
    m = D.score_matrix(_clips(), NAMES)
    assert m["mouth"]["lip"] > 0.97 and m["pose"]["pose"] > 0.97
    for group, space in [("mouth", "pose"), ("mouth", "exp"), ("pose", "lip"), ("pose", "exp"),
                         ("expression", "lip"), ("expression", "pose"), ("expression", "exp")]:
        assert m[group][space] < 0.05, (group, space, m)


def test_probe_r2_is_clipped_and_exact_for_a_linear_map():
    r = np.random.RandomState(1)
    x, xt = r.randn(200, 3), r.randn(50, 3)
    w = np.float64([[1.0], [-2.0], [0.5]])
    assert D.probe_r2(x, x @ w, xt, xt @ w, ridge=0.0) == pytest.approx(1.0, abs=1e-12)
    assert D.probe_r2(x, r.randn(200, 1), xt, 100 + r.randn(50, 1)) == 0.0  # worse than the mean


def test_missing_space_or_split_is_named():
    clips = _clips(8)
    for c in clips:
        del c["coeffs"]["exp"]
    m = D.score_matrix(clips, NAMES)
    assert m["mouth"]["exp"] is None and m["mouth"]["lip"] is not None
    with pytest.raises(ValueError, match="held-out"):
        D.score_matrix([c for c in clips if not c["test"]], NAMES)


def test_audio_mouth_reads_the_mouth_from_audio_driven_lips():
    """The probe fitted on the generator's lip coefficients reads the mouth from audio lips
    that follow it (here the noise-free mouth part of the video lips: better than video),
    and not from audio lips that follow something else or nothing."""
    clips = []
    for c in _clips():
        lip = c["coeffs"]["lip"]
        clip = {"test": c["test"], "lip": lip + 0.5 * np.random.RandomState(7).randn(*lip.shape),
                "factors": c["factors"]}
        if c["test"]:
            clip["audio_lip"] = lip
        clips.append(clip)
    r = D.audio_mouth(clips, NAMES)
    assert r["copy"] == 0.0 and r["audio"] > r["video"] > 0.5, r
    for c in clips:
        if c["test"]:  # lips that follow the pose factors, then a constant (copy the source)
            c["audio_lip"] = c["factors"][:, :5]
    assert D.audio_mouth(clips, NAMES)["audio"] < 0.05
    for c in clips:
        if c["test"]:
            c["audio_lip"] = np.ones_like(c["lip"])
    assert D.audio_mouth(clips, NAMES)["audio"] == 0.0
    with pytest.raises(ValueError, match="audio_mouth: need training and held-out"):
        D.audio_mouth([c for c in clips if c["test"]], NAMES)


def test_evaluate_scores_a_generator_on_synthetic_shards(tmp_path):
    import jax

    from data_pipeline import synthetic
    from data_pipeline.records import splits
    from edtalk_jax.models import build_model

    data = str(tmp_path / "data")
    synthetic.write_dataset(synthetic.SyntheticConfig(num_speakers=4, clips_per_speaker=2, frames_per_clip=6,
                                                      size=32, seed=0), data, workers=1, progress=False)
    splits.write_splits(data, other_test_fraction=0.5)
    cfg = dict(size=32, channels=(16, 16, 16, 8), style_dim=16, lip_dim=4, pose_dim=2, exp_dim=2)
    gen = build_model("generator", cfg)
    x = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.jit(gen.init)(jax.random.key(0, impl="rbg"), x, x)  # rbg: compiles in seconds
    out = D.evaluate(gen, variables, data, size=32, batch_size=8)
    assert out["clips"]["train"] > 0 and out["clips"]["test"] > 0
    assert set(out["matrix"]) == set(D.FACTOR_GROUPS)
    for row in out["matrix"].values():
        assert set(row) == set(D.SPACES)
        assert all(v is None or 0.0 <= v <= 1.0 for v in row.values())


def test_heatmap_png_shades_by_value(tmp_path):
    import cv2

    m = {"mouth": {"lip": 1.0, "pose": 0.0, "exp": None}, "pose": {"lip": 0.5, "pose": 1.0, "exp": None},
         "expression": {"lip": 0.0, "pose": 0.0, "exp": None}}
    path = str(tmp_path / "m.png")
    D.heatmap_png(m, path, cell=64)
    img = cv2.imread(path)
    assert img.shape == (32 + 3 * 64, 128 + 3 * 64, 3)
    corner = lambda i, j: img[32 + i * 64 + 4, 128 + j * 64 + 4].astype(int)  # away from the text
    assert corner(0, 0).sum() < corner(1, 0).sum() < corner(0, 1).sum()  # 1.0 darker than 0.5 than 0
