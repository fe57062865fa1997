"""faces: detection, FOMM tube tracking, square crops, landmarks and gap interpolation."""

import cv2
import numpy as np
import pytest

from data_pipeline.preprocess import faces
from data_pipeline.records import schema


@pytest.fixture(scope="module")
def face_gray(samples_dir):
    return cv2.imread(str(samples_dir / "identity_source.jpg"), cv2.IMREAD_GRAYSCALE)


def test_dlib_detects_one_face_and_noise_has_none(face_gray):
    boxes = faces.detect(face_gray)
    assert boxes.shape == (1, 4)
    x0, y0, x1, y1 = boxes[0]
    assert 90 < x1 - x0 < 200 and abs((x0 + x1) / 2 - 128) < 30
    noise = np.random.default_rng(0).integers(0, 256, face_gray.shape, dtype=np.uint8)
    assert faces.detect(noise).shape == (0, 4)


def test_haar_boxes_follow_the_dlib_convention(face_gray):
    dlib_box = faces.detect(face_gray, "dlib")[0]
    haar = faces.detect(face_gray, "haar")
    assert len(haar) >= 1 and faces.iou(haar[0], dlib_box) > 0.6
    np.testing.assert_array_equal(faces.detect(face_gray, "auto"), faces.detect(face_gray, "dlib"))
    with pytest.raises(ValueError, match="unknown detector"):
        faces.detect(face_gray, "cnn")


def test_detect_ignores_non_contiguous_strides(face_gray):
    padded = np.zeros((face_gray.shape[0], face_gray.shape[1] + 7), np.uint8)
    padded[:, : face_gray.shape[1]] = face_gray
    view = padded[:, : face_gray.shape[1]]  # row stride != width, as swscale returns
    np.testing.assert_array_equal(faces.detect(view), faces.detect(face_gray))


def test_face_boxes_and_predictor_boxes(face_gray):
    detected = faces.detect(face_gray)
    (box,) = faces.face_boxes(face_gray, detected)
    rows = faces.landmarks(face_gray, detected[0])
    np.testing.assert_array_equal(box, np.concatenate([rows.min(0), rows.max(0)]))
    seed = faces.predictor_box(box)
    assert faces.iou(seed, detected[0]) > 0.7  # back near the detector's convention
    assert np.abs(faces.landmarks(face_gray, seed) - rows).mean() < 2.0
    assert faces.face_boxes(face_gray, np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_landmarks_on_a_face(face_gray):
    rows = faces.landmarks(face_gray, faces.detect(face_gray)[0])
    assert rows.shape == (68, 2) and rows.dtype == np.float32
    eyes_y = rows[list(schema.LEFT_EYE + schema.RIGHT_EYE), 1].mean()
    assert rows[list(schema.MOUTH), 1].min() > eyes_y
    assert rows[list(schema.LEFT_EYE), 0].mean() < rows[list(schema.RIGHT_EYE), 0].mean()
    assert (rows >= 0).all() and (rows < 256).all()


def _box(x, y, side=100):
    return np.float32([x, y, x + side, y + side])


def test_track_follows_a_face_through_short_gaps_and_cuts_long_ones():
    dets = [(k, np.stack([_box(100 + k * 0.2, 50)])) for k in range(0, 60, 5)]
    dets += [(k, np.zeros((0, 4), np.float32)) for k in range(60, 70, 5)]  # frames 56-69 missed
    dets += [(k, np.stack([_box(112, 50)])) for k in range(70, 100, 5)]
    dets += [(k, np.zeros((0, 4), np.float32)) for k in range(100, 125, 5)]  # 96-124: too long
    dets += [(k, np.stack([_box(112, 50)])) for k in range(125, 150, 5)]
    tubes = faces.track(dets, iou_threshold=0.25, max_gap=15)
    assert [(t.start, t.end) for t in tubes] == [(0, 95), (125, 145)]
    schedule = faces.box_schedule(tubes[0], stride=5)
    assert sorted(schedule) == list(range(0, 96))
    np.testing.assert_allclose(schedule[2], 0.6 * tubes[0].hits[0] + 0.4 * tubes[0].hits[5])
    assert all(schedule[k] is None for k in range(56, 70))
    assert schedule[55] is not None and schedule[70] is not None


def test_track_compares_with_the_initial_box():
    # A face sliding 10 px per keyframe leaves its initial box: FOMM starts a new tube.
    dets = [(k, np.stack([_box(10 * k, 0)])) for k in range(12)]
    tubes = faces.track(dets, iou_threshold=0.25, max_gap=1)
    assert len(tubes) > 1 and all(faces.iou(t.first_box, b) > 0.25 for t in tubes for b in t.hits.values())


def test_select_keeps_the_largest_most_persistent_face_and_counts_faces():
    big, small = _box(300, 50, 150), _box(20, 50, 90)
    both = [(k, np.stack([small, big])) for k in range(0, 100, 5)]
    kept, num_faces = faces.select(faces.track(both), min_frames=25)
    assert num_faces == 2 and len(kept) == 1 and np.array_equal(kept[0].first_box, big)
    # Score = summed box area: 80 hits of the small face beat 20 of the big one.
    longer = both + [(k, np.stack([small])) for k in range(100, 400, 5)]
    kept, num_faces = faces.select(faces.track(longer), min_frames=25)
    assert num_faces == 2 and len(kept) == 1 and np.array_equal(kept[0].first_box, small)
    # Faces one after the other are both kept.
    seq = [(k, np.stack([big])) for k in range(0, 100, 5)] + [(k, np.stack([small])) for k in range(100, 200, 5)]
    kept, num_faces = faces.select(faces.track(seq), min_frames=25)
    assert num_faces == 1 and [(t.start, t.end) for t in kept] == [(0, 95), (100, 195)]
    assert faces.select(faces.track(both), min_frames=200) == ([], 0)


def test_square_crop_geometry():
    box = np.float32([100, 80, 200, 200])  # 100 x 120 face box
    crop = faces.square_crop(box, width=1000, height=800, increase=0.1)
    assert crop.side == round(1.2 * faces.CROP_SCALE * 120)
    assert abs(crop.x0 + crop.side / 2 - 150) <= 1
    assert abs(crop.y0 + crop.side / 2 - (140 - faces.CROP_CENTRE_SHIFT * 120)) <= 1
    # Near the border the square is shifted inside the frame, not shrunk.
    edge = faces.square_crop(np.float32([0, 0, 100, 100]), width=1000, height=800)
    assert (edge.x0, edge.y0) == (0, 0) and edge.side == crop.side - round(1.2 * 1.6 * 20)
    # Larger than the frame: centred, padded with black by crop_resize.
    big = faces.square_crop(np.float32([10, 10, 90, 90]), width=100, height=100)
    assert big.side > 100 and big.x0 < 0 and big.y0 < 0
    frame = np.full((100, 100, 3), 200, np.uint8)
    out = faces.crop_resize(frame, big, 64)
    assert out.shape == (64, 64, 3) and out[0, 0].max() == 0 and out[32, 32].min() == 200
    np.testing.assert_allclose(big.to_crop([[big.x0, big.y0], [big.x0 + big.side, 0]], 64),
                               [[0, 0], [64, -big.y0 * 64 / big.side]], atol=1e-4)
    points = np.float32([[3, 4], [50, 99]])
    np.testing.assert_allclose(big.from_crop(big.to_crop(points, 64), 64), points, atol=1e-4)


def test_crop_resize_downscale_and_upscale_shapes():
    frame = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for side in (50, 280):
        crop = faces.Crop(10, 10, side)
        out = faces.crop_resize(frame, crop, 128)
        assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    gray = faces.crop_resize(frame[..., 0], faces.Crop(0, 0, 256), 256)
    np.testing.assert_array_equal(gray, frame[:256, :256, 0])


def test_fill_gaps_interpolates_linearly():
    rows = np.zeros((5, 68, 2), np.float32)
    rows[0], rows[4] = 10, 30
    valid = np.array([True, False, False, False, True])
    out = faces.fill_gaps(rows, valid)
    np.testing.assert_allclose(out[:, 0, 0], [10, 15, 20, 25, 30])
    edge = faces.fill_gaps(rows, np.array([False, False, False, False, True]))
    np.testing.assert_allclose(edge[:, 0, 0], 30)
    with pytest.raises(faces.FaceError):
        faces.fill_gaps(rows, np.zeros(5, bool))
