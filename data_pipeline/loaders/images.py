"""The image rules every loader and the stage-4 targets share: resizing to the training
size, and uint8 -> float32 in [-1, 1]."""

from __future__ import annotations

import cv2
import numpy as np


def resize_frames(frames: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3) (or (N, height, width, 3) for a pair) as
    every loader resizes: area averaging down, bicubic up; unchanged when size is None or
    already the size."""
    if size is None:
        return frames
    height, width = (size, size) if isinstance(size, int) else size
    if frames.shape[1:3] == (height, width):
        return frames
    interp = cv2.INTER_AREA if frames.shape[1] * frames.shape[2] > height * width else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def to_float(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1]: x / 127.5 - 1."""
    out = np.divide(images, np.float32(127.5), out=out, dtype=np.float32)
    out -= 1
    return out
