"""The stage-2 mouth swap (official get_IA_MB, full-frame warp)."""

import cv2
import numpy as np
import pytest

from data_pipeline.loaders import mouth_swap


def _similarity(angle_deg: float, scale: float, shift) -> np.ndarray:
    a = np.radians(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([rot, np.asarray(shift, float)[:, None]], 1)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _face_landmarks(rng, center, size=40.0) -> np.ndarray:
    """68 points with eyes above a mouth, roughly face-like, around `center`."""
    center = np.asarray(center, float)
    lmk = rng.uniform(-0.5, 0.5, (68, 2)) * size + center
    lmk[36:42] = center + np.array([-0.25, -0.2]) * size + rng.normal(0, 1, (6, 2))
    lmk[42:48] = center + np.array([0.25, -0.2]) * size + rng.normal(0, 1, (6, 2))
    lmk[48:68] = center + np.array([0, 0.3]) * size + rng.uniform(-0.12, 0.12, (20, 2)) * size
    return lmk


def _smooth_image(rng, size: int) -> np.ndarray:
    """A smooth colourful image (so that sub-pixel rounding changes values by little)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack([127 + 120 * np.sin(2 * np.pi * (xx + 0.7 * yy) + p) for p in phase], -1)
    return img.astype(np.uint8)


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (3, 2))
    for angle, scale, shift in [(0, 1, (0, 0)), (17, 1.3, (5, -8)), (-40, 0.6, (30.5, 12.25))]:
        m_true = _similarity(angle, scale, shift)
        np.testing.assert_allclose(mouth_swap.similarity_transform(src, _apply(m_true, src)),
                                   m_true, atol=1e-9)


def test_similarity_transform_is_least_squares():
    """With noisy targets the estimate minimises the squared error over similarities:
    no small perturbation of its parameters (angle, scale, shift) does better."""
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (3, 2))
    dst = _apply(_similarity(10, 1.2, (3, 4)), src) + rng.normal(0, 2, (3, 2))
    m = mouth_swap.similarity_transform(src, dst)
    assert np.isclose(m[0, 0], m[1, 1]) and np.isclose(m[0, 1], -m[1, 0])  # a similarity
    err = lambda mm: ((_apply(mm, src) - dst) ** 2).sum()  # noqa: E731
    angle, scale = np.degrees(np.arctan2(m[1, 0], m[0, 0])), np.hypot(m[0, 0], m[1, 0])
    for d in ([0.5, 0, 0, 0], [0, 0.01, 0, 0], [0, 0, 0.3, 0], [0, 0, 0, -0.3]):
        perturbed = _similarity(angle + d[0], scale + d[1], m[:, 2] + d[2:])
        assert err(m) < err(perturbed)


def test_mouth_centres_coincide_exactly():
    rng = np.random.default_rng(2)
    src = _face_landmarks(rng, (50, 50))
    dst = _face_landmarks(rng, (60, 45))  # not a similarity of src: least squares is inexact
    m = mouth_swap.mouth_transform(src, dst)
    np.testing.assert_allclose(_apply(m, src[60:68].mean(0, keepdims=True))[0],
                               dst[60:68].mean(0), atol=1e-9)


def test_identity_when_src_is_dst():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 64, 3), np.uint8)
    lmk = _face_landmarks(rng, (32, 28), 30)
    np.testing.assert_array_equal(mouth_swap.swap_mouth(img, lmk, img, lmk), img)


def test_pasted_box_is_the_translated_source_mouth():
    """Integer translation: the box holds exactly the shifted source pixels, the rest is dst."""
    rng = np.random.default_rng(4)
    src = rng.integers(0, 256, (80, 80, 3), np.uint8)
    dst = rng.integers(0, 256, (80, 80, 3), np.uint8)
    lmk_src = _face_landmarks(rng, (35, 30), 30)
    lmk_dst = lmk_src + (7, 4)
    out = mouth_swap.swap_mouth(src, lmk_src, dst, lmk_dst, margin=5)
    x1, y1, x2, y2 = mouth_swap.mouth_box(lmk_dst, 5, (80, 80))
    assert x1 == int(np.floor(lmk_dst[48:68, 0].min())) - 5
    assert y2 == int(np.ceil(lmk_dst[48:68, 1].max())) + 5
    np.testing.assert_array_equal(out[y1:y2, x1:x2], src[y1 - 4:y2 - 4, x1 - 7:x2 - 7])
    outside = np.ones((80, 80), bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], dst[outside])


def test_pasted_box_is_the_warped_source_mouth():
    """Rotation + scale: the box equals the full-frame warp of src (up to OpenCV's 1/32-px
    fixed-point rounding, which differs by the origin of the warped rectangle)."""
    rng = np.random.default_rng(5)
    src, dst = _smooth_image(rng, 96), rng.integers(0, 256, (96, 96, 3), np.uint8)
    lmk_src = _face_landmarks(rng, (45, 40), 36)
    m_true = _similarity(12, 1.15, (-4, 3))
    lmk_dst = _apply(m_true, lmk_src)
    np.testing.assert_allclose(mouth_swap.mouth_transform(lmk_src, lmk_dst), m_true, atol=1e-9)
    out = mouth_swap.swap_mouth(src, lmk_src, dst, lmk_dst)
    x1, y1, x2, y2 = mouth_swap.mouth_box(lmk_dst, 5, (96, 96))
    warped = cv2.warpAffine(src, m_true, (96, 96))
    diff = np.abs(out[y1:y2, x1:x2].astype(int) - warped[y1:y2, x1:x2])
    assert diff.max() <= 3 and diff.mean() < 0.5
    outside = np.ones((96, 96), bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], dst[outside])


def test_full_frame_beyond_224_pixels():
    """A 256-px frame whose mouth lies below row 224: the official 224-px canvas would
    paste black there; the full-frame warp pastes the source mouth."""
    rng = np.random.default_rng(6)
    src = rng.integers(1, 256, (256, 256, 3), np.uint8)
    dst = rng.integers(1, 256, (256, 256, 3), np.uint8)
    lmk_src = _face_landmarks(rng, (200, 208), 40)
    lmk_dst = lmk_src + (10, 12)
    assert lmk_dst[48:68, 1].min() > 224
    out = mouth_swap.swap_mouth(src, lmk_src, dst, lmk_dst)
    x1, y1, x2, y2 = mouth_swap.mouth_box(lmk_dst, 5, (256, 256))
    np.testing.assert_array_equal(out[y1:y2, x1:x2], src[y1 - 12:y2 - 12, x1 - 10:x2 - 10])
    assert out[y1:y2, x1:x2].min() > 0  # nothing black from a 224-px canvas


def test_box_clipped_at_the_frame_edge():
    rng = np.random.default_rng(7)
    lmk = _face_landmarks(rng, (30, 50), 30)
    lmk[48:68] += (0, 8)  # mouth reaches past the bottom of a 64-px frame
    x1, y1, x2, y2 = mouth_swap.mouth_box(lmk, 5, (64, 64))
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 == 64
    img = rng.integers(0, 256, (64, 64, 3), np.uint8)
    assert mouth_swap.swap_mouth(img, lmk, img, lmk).shape == (64, 64, 3)


def test_rejects_mismatched_images():
    lmk = _face_landmarks(np.random.default_rng(8), (32, 30), 30)
    with pytest.raises(ValueError, match="differ"):
        mouth_swap.swap_mouth(np.zeros((64, 64, 3), np.uint8), lmk,
                              np.zeros((64, 64, 3), np.float32), lmk)


def test_rejects_non_finite_landmarks():
    lmk = _face_landmarks(np.random.default_rng(9), (32, 30), 30)
    bad = lmk.copy()
    bad[50] = np.nan
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="not finite"):
        mouth_swap.swap_mouth(img, lmk, img, bad)
