"""The stage-2 mouth swap: the official `get_IA_MB` (dataset_HDTF_lip_nonlip.py:206-226).

`swap_mouth(src, L_src, dst, L_dst)` is an image with the mouth of `src` and everything
else of `dst`: a similarity transform maps src's eye and inner-mouth centres onto dst's
(least squares, Umeyama, as skimage's SimilarityTransform), its translation is then
moved so that the mouth centres coincide exactly, src is warped, and the rectangle
around dst's mouth landmarks 48-67 (grown by `margin` pixels) is pasted from the warped
src into a copy of dst. One deliberate difference: the official code warps onto a fixed
224x224 canvas, so 256-px frames lose every pixel beyond 224; here the warp keeps the
full frame size.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_pipeline.records import schema

_EYE_L = list(schema.LEFT_EYE)
_EYE_R = list(schema.RIGHT_EYE)
_INNER = list(schema.INNER_MOUTH)
_MOUTH = list(schema.MOUTH)


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """(3, 2) float64: the means of landmarks 36-41, 42-47 and 60-67."""
    lmk = np.asarray(landmarks, np.float64)
    return np.stack([lmk[_EYE_L].mean(0), lmk[_EYE_R].mean(0), lmk[_INNER].mean(0)])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) matrix M of the similarity (rotation, uniform scale, translation) that maps
    the points `src` (N, 2) onto `dst` (N, 2) in the least-squares sense (Umeyama 1991,
    no reflection), so dst ~= src @ M[:, :2].T + M[:, 2]."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 0:
        raise schema.DataError("similarity_transform: the source points coincide")
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    a = scale * rot
    return np.concatenate([a, (mu_d - a @ mu_s)[:, None]], 1)


def mouth_box(landmarks: np.ndarray, margin: int,
              size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2), end-exclusive pixel rectangle [floor(min) - margin,
    ceil(max) + margin) of mouth landmarks 48-67, clipped to an image of `size` (h, w)."""
    mouth = np.asarray(landmarks, np.float64)[_MOUTH]
    lo = np.floor(mouth.min(0)).astype(int) - margin
    hi = np.ceil(mouth.max(0)).astype(int) + margin
    h, w = size
    return (int(np.clip(lo[0], 0, w)), int(np.clip(lo[1], 0, h)),
            int(np.clip(hi[0], 0, w)), int(np.clip(hi[1], 0, h)))


def mouth_transform(src_lmk: np.ndarray, dst_lmk: np.ndarray) -> np.ndarray:
    """The (2, 3) warp of `swap_mouth`: the similarity of the three anchor points, with
    the translation set so that src's inner-mouth centre lands exactly on dst's."""
    src_pts, dst_pts = anchor_points(src_lmk), anchor_points(dst_lmk)
    m = similarity_transform(src_pts, dst_pts)
    m[:, 2] = dst_pts[2] - m[:, :2] @ src_pts[2]
    return m


def swap_mouth(src_img: np.ndarray, src_lmk: np.ndarray, dst_img: np.ndarray,
               dst_lmk: np.ndarray, margin: int = 5) -> np.ndarray:
    """`dst_img` with the mouth of `src_img` (official get_IA_MB, full-frame warp).

    Images are (H, W, 3) of one dtype (uint8 in the loaders), landmarks (68, 2) (x, y)
    in pixels of their image. src is warped at dst's frame size."""
    if not (np.isfinite(src_lmk).all() and np.isfinite(dst_lmk).all()):
        raise schema.DataError("swap_mouth: landmarks are not finite")
    if src_img.shape[2:] != dst_img.shape[2:] or src_img.dtype != dst_img.dtype:
        raise ValueError(f"swap_mouth: src {src_img.dtype} {src_img.shape} and dst "
                         f"{dst_img.dtype} {dst_img.shape} differ in channels or dtype")
    h, w = dst_img.shape[:2]
    x1, y1, x2, y2 = mouth_box(dst_lmk, margin, (h, w))
    out = dst_img.copy()
    if x2 <= x1 or y2 <= y1:
        return out  # dst's mouth lies outside the frame: nothing to paste
    m = mouth_transform(src_lmk, dst_lmk)
    # Warping only the pasted rectangle: shift the output origin to (x1, y1).
    m[:, 2] -= (x1, y1)
    out[y1:y2, x1:x2] = cv2.warpAffine(src_img, m, (x2 - x1, y2 - y1), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out
