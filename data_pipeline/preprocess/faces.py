"""Offline face detection, FOMM-style tube tracking, square crops and 68-point landmarks.

Detection: dlib's HOG frontal detector on grayscale frames downscaled for speed,
optionally OpenCV's Haar cascade where dlib finds nothing ("auto") or instead of it
("haar"; its boxes are mapped onto dlib's convention: measured on the sample videos, a
Haar box is ~1.15x the dlib box and centred ~0.09 of its side higher).

Face boxes: each detection is refined into the bounding box of its 68 landmarks.
HOG boxes come from a coarse pyramid: a still face is reported at sizes ~20% apart and
positions ~24 px apart from frame to frame, which would inflate the union box; the
landmark box follows the face itself. `predictor_box` maps a face box back onto the
detector's convention (measured: side 1.03x, centre 0.105 of the side higher) to seed
the predictor on frames between keyframes.

Tracking follows FOMM's crop-video script: a face box joins the open tube whose
*initial* box it overlaps with IoU > threshold, a tube's box is the union of its boxes,
and the crop is a square around it enlarged by `increase` on each side. Changes: a
tube survives missed detections for up to `max_gap` frames (FOMM ends it at the first
miss); the square is scaled and centred to the official framing (`square_crop`), then
shifted into the frame and padded with black where it is larger than the frame (FOMM
clamps it, which distorts the aspect ratio).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

# Official EDTalk crops (S3FD boxes, FOMM increase 0.1) show the landmark box of a still
# face at ~0.52 of the crop side, its centre ~0.1 of its side below the crop centre
# (measured on the official cropped sample videos): side 1.6 x (1 + 2 * 0.1) = 1.92x.
CROP_SCALE = 1.6
CROP_CENTRE_SHIFT = 0.1
_HAAR_SCALE = 1.15
_HAAR_SHIFT = 0.09
_DLIB_BOX_SCALE = 1.03
_DLIB_BOX_SHIFT = 0.105


class FaceError(ValueError):
    """No usable face (none found, several when only one is allowed, model missing)."""


def predictor_path() -> str:
    """The dlib 68-point model shipped by face_recognition_models.

    Located without importing the package: its __init__ imports pkg_resources, which
    setuptools >= 81 no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceError("face_recognition_models is not installed (pip install face-recognition-models)")
    path = os.path.join(spec.submodule_search_locations[0], "models", "shape_predictor_68_face_landmarks.dat")
    if not os.path.exists(path):
        raise FaceError(f"dlib 68-point model missing: {path}")
    return path


@functools.lru_cache(maxsize=None)
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _predictor():
    import dlib

    return dlib.shape_predictor(predictor_path())


@functools.lru_cache(maxsize=None)
def _haar():
    return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))


def detect(gray: np.ndarray, detector: str = "dlib") -> np.ndarray:
    """Face boxes (N, 4) float32 [x0, y0, x1, y1] in dlib's convention, largest first."""
    boxes = []
    gray = np.ascontiguousarray(gray)  # dlib reads the buffer ignoring numpy strides
    if detector in ("dlib", "auto"):
        boxes = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in _dlib_detector()(gray, 0)]
    if detector == "haar" or (detector == "auto" and not boxes):
        min_side = max(24, min(gray.shape) // 10)
        for x, y, w, h in _haar().detectMultiScale(gray, 1.15, 5, minSize=(min_side, min_side)):
            side = w / _HAAR_SCALE
            cx, cy = x + w / 2, y + h / 2 + _HAAR_SHIFT * w
            boxes.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    elif detector not in ("dlib", "auto"):
        raise ValueError(f"unknown detector {detector!r}; expected dlib, haar or auto")
    out = np.asarray(boxes, np.float32).reshape(-1, 4)
    return out[np.argsort(-area(out), kind="stable")]


def face_points(gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Detector boxes (N, 4) -> their 68 landmarks (N, 68, 2)."""
    out = [landmarks(gray, box) for box in np.asarray(boxes, np.float32).reshape(-1, 4)]
    return np.float32(out).reshape(-1, 68, 2)


def points_boxes(points: np.ndarray) -> np.ndarray:
    """Landmarks (N, 68, 2) -> their bounding boxes (N, 4): the face boxes."""
    points = np.asarray(points, np.float32).reshape(-1, 68, 2)
    return np.concatenate([points.min(1), points.max(1)], axis=1)


def face_boxes(gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Detector boxes (N, 4) -> the bounding boxes of their 68 landmarks (N, 4)."""
    return points_boxes(face_points(gray, boxes))


def predictor_box(face_box: np.ndarray) -> np.ndarray:
    """A face (landmark) box -> a box in the detector's convention, to seed the predictor."""
    w, h = face_box[2] - face_box[0], face_box[3] - face_box[1]
    side = _DLIB_BOX_SCALE * max(w, h)
    cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2 - _DLIB_BOX_SHIFT * max(w, h)
    return np.float32([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def union(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.concatenate([np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])])
    i = float(area(inter)[0])
    union = float(area(a)[0] + area(b)[0]) - i
    return i / union if union > 0 else 0.0


@dataclasses.dataclass
class Tube:
    """One face tracked over keyframes: hits[k] = detection box at output frame k;
    descriptors[k] = its face descriptor at some of them (data_pipeline.preprocess.identity)."""

    first_box: np.ndarray
    hits: Dict[int, np.ndarray]
    descriptors: Dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def start(self) -> int:
        return min(self.hits)

    @property
    def end(self) -> int:  # last frame, inclusive
        return max(self.hits)

    @property
    def num_frames(self) -> int:
        return self.end - self.start + 1

    def union_box(self) -> np.ndarray:
        return union(np.stack(list(self.hits.values())))

    def score(self) -> float:
        """Persistence times size: the face to keep when several are present."""
        return float(area(np.stack(list(self.hits.values()))).sum())

    def before(self, end: int) -> Optional["Tube"]:
        """The tube's hits (and descriptors) at frames < end; None when there is none."""
        hits = {k: b for k, b in self.hits.items() if k < end}
        if not hits:
            return None
        return Tube(first_box=self.first_box, hits=hits,
                    descriptors={k: d for k, d in self.descriptors.items() if k < end})


class Tracker:
    """FOMM tube tracking, online: `update` with each keyframe's boxes, in order.

    A box joins the open tube whose initial box it overlaps most (IoU > iou_threshold);
    a tube whose face is missed for more than max_gap frames is closed."""

    def __init__(self, iou_threshold: float = 0.25, max_gap: int = 15):
        self.iou_threshold, self.max_gap = iou_threshold, max_gap
        self.open: List[Tube] = []
        self.closed: List[Tube] = []

    def update(self, k: int, boxes: np.ndarray) -> Tuple[List[Tube], List[Tube]]:
        """(the tube each box joined or started, the tubes closed at keyframe k)."""
        still_open, closed = [], []
        for tube in self.open:
            (closed if k - tube.end - 1 > self.max_gap else still_open).append(tube)
        self.open = still_open
        self.closed += closed
        pairs = sorted(
            ((iou(t.first_box, b), ti, bi) for ti, t in enumerate(self.open) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        of: Dict[int, Tube] = {}
        matched = set()
        for score, ti, bi in pairs:
            if score <= self.iou_threshold or ti in matched or bi in of:
                continue
            self.open[ti].hits[k] = boxes[bi]
            matched.add(ti)
            of[bi] = self.open[ti]
        for bi, b in enumerate(boxes):
            if bi not in of:
                of[bi] = Tube(first_box=b, hits={k: b})
                self.open.append(of[bi])
        return [of[bi] for bi in range(len(boxes))], closed

    def tubes(self) -> List[Tube]:
        return sorted(self.closed + self.open, key=lambda t: t.start)


def track(
    detections: Sequence[Tuple[int, np.ndarray]], iou_threshold: float = 0.25, max_gap: int = 15
) -> List[Tube]:
    """FOMM tube tracking over keyframes [(k, boxes)], sorted by k (see `Tracker`)."""
    tracker = Tracker(iou_threshold, max_gap)
    for k, boxes in detections:
        tracker.update(k, boxes)
    return tracker.tubes()


def select(tubes: Sequence[Tube], min_frames: int) -> Tuple[List[Tube], int]:
    """Tubes to keep (one face at any time: the highest score wins) and the largest
    number of faces (tubes of >= min_frames) seen at the same time."""
    long = [t for t in tubes if t.num_frames >= min_frames]
    kept: List[Tube] = []
    for t in sorted(long, key=lambda t: -t.score()):
        if all(t.end < s.start or t.start > s.end for s in kept):
            kept.append(t)
    faces = 0
    for t in long:
        at_once = sum(1 for s in long if s.start <= t.start <= s.end)
        faces = max(faces, at_once)
    return sorted(kept, key=lambda t: t.start), faces


@dataclasses.dataclass(frozen=True)
class Crop:
    """A square of side `side` at (x0, y0) in source pixels (may reach outside the frame)."""

    x0: int
    y0: int
    side: int

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Source-pixel (..., 2) points -> crop pixels of a size x size crop."""
        return (np.asarray(points, np.float32) - (self.x0, self.y0)) * np.float32(size / self.side)

    def from_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Inverse of to_crop."""
        return np.asarray(points, np.float32) * np.float32(self.side / size) + np.float32([self.x0, self.y0])


def square_crop(box: np.ndarray, width: int, height: int, increase: float = 0.1) -> Crop:
    """The crop square of a (union) face box: FOMM's aspect-preserving enlargement,
    side (1 + 2 increase) * CROP_SCALE * max(w, h), centred CROP_CENTRE_SHIFT * max(w, h)
    above the box centre (the official framing), shifted into the frame where it fits."""
    w, h = box[2] - box[0], box[3] - box[1]
    side = int(round((1 + 2 * increase) * CROP_SCALE * max(w, h)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 - CROP_CENTRE_SHIFT * max(w, h)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    # Shift into the frame; what still sticks out (side > frame) is centred and padded.
    x0 = min(max(x0, 0), width - side) if side <= width else (width - side) // 2
    y0 = min(max(y0, 0), height - side) if side <= height else (height - side) // 2
    return Crop(x0, y0, max(side, 1))


def crop_resize(frame: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """The crop of an (H, W[, C]) frame resized to size x size (black outside the frame)."""
    h, w = frame.shape[:2]
    x0, y0, s = crop.x0, crop.y0, crop.side
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + s, y0 + s):
        patch = frame[y0 : y0 + s, x0 : x0 + s]
    else:
        patch = np.zeros((s, s) + frame.shape[2:], frame.dtype)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)


def landmarks(gray: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib 68-point landmarks (68, 2) float32 (x, y) for a face box in `gray`'s pixels."""
    import dlib

    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    shape = _predictor()(np.ascontiguousarray(gray), dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def box_schedule(tube: Tube, stride: int) -> Dict[int, Optional[np.ndarray]]:
    """Frame -> face box for every frame of the tube, or None inside a detection gap.

    Between two hits one stride apart the box is interpolated linearly; frames between
    hits further apart (missed detections) get None: their landmark rows are to be
    interpolated (landmark_valid=False).
    """
    keys = sorted(tube.hits)
    out: Dict[int, Optional[np.ndarray]] = {keys[0]: tube.hits[keys[0]]}
    for a, b in zip(keys, keys[1:]):
        for k in range(a + 1, b + 1):
            if k == b:
                out[k] = tube.hits[b]
            elif b - a <= stride:
                u = (k - a) / (b - a)
                out[k] = (1 - u) * tube.hits[a] + u * tube.hits[b]
            else:
                out[k] = None
    return out


def fill_gaps(rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linearly interpolates (over time) the landmark rows where valid is False.

    Rows before the first / after the last valid row copy the nearest valid one.
    """
    rows = np.array(rows, np.float32)
    t = np.flatnonzero(valid)
    if t.size == 0:
        raise FaceError("no valid landmark row to interpolate from")
    missing = np.flatnonzero(~np.asarray(valid))
    flat = rows.reshape(len(rows), -1)
    for j in range(flat.shape[1]):
        flat[missing, j] = np.interp(missing, t, flat[t, j])
    return flat.reshape(rows.shape)
