"""Synthetic talking heads, part 2: drawing a face from its factors.

Head frame: x right, y down, z toward the camera; the face is an ellipsoid with
half-height 1. Pose R = Rz(roll) Rx(pitch) Ry(yaw), orthographic projection: yaw > 0
turns the nose toward image +x, pitch > 0 tilts it down, roll > 0 turns the face
clockwise on screen. The drawn dlib-68 landmarks come with the frames (`landmarks68`).
"""

from __future__ import annotations

import cv2
import numpy as np

from data_pipeline.synthetic import factors

FACE_PX = 0.36  # face half-height in frame sides at scale 1 (a FOMM-style crop)
CENTER = (0.5, 0.48)  # head centre in frame sides at tx = ty = 0
_U13 = np.linspace(0, 1, 13)
_EYE_LMK = [0, 4, 8, 12, 16, 20]  # 36-41 / 42-47 in an eye contour (upper 13 + lower 11)
_OUTER_LMK = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]  # 48-59 in the outer lip contour
_INNER_LMK = [0, 4, 6, 8, 12, 16, 18, 20]  # 60-67 in the inner lip contour


def _rotation(f: dict) -> np.ndarray:
    """(T, 3, 3) R = Rz(roll) Rx(pitch) Ry(yaw)."""
    y, p, r = (np.radians(f[k]) for k in ("yaw", "pitch", "roll"))
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], -1)
    rx = np.stack([one, zero, zero, zero, np.cos(p), np.sin(p), zero, -np.sin(p), np.cos(p)], -1)
    rz = np.stack([np.cos(r), -np.sin(r), zero, np.sin(r), np.cos(r), zero, zero, zero, one], -1)
    return rz.reshape(-1, 3, 3) @ rx.reshape(-1, 3, 3) @ ry.reshape(-1, 3, 3)


def _contour(x_up, y_up, x_lo, y_lo, z_fn, lift=0.0):
    """Closed contour: upper curve (13 points, left to right), lower curve back (11)."""
    x = np.concatenate([x_up, x_lo[:, -2:0:-1]], 1)
    y = np.concatenate([y_up, y_lo[:, -2:0:-1]], 1)
    return np.stack([x, y, z_fn(x, y) + lift], -1)


def geometry(ident: dict, f: dict, size: int) -> tuple[dict, np.ndarray]:
    """Projected 2D points (pixels) of every drawn part, (T, n, 2) each, and the
    per-frame pixels per face unit."""
    a, c = ident["a"], ident["c"]
    t = len(f["yaw"])
    col = lambda v: np.asarray(v, np.float64).reshape(-1, 1)  # noqa: E731
    surf = lambda x, y: c * np.sqrt(np.clip(1 - (x / a) ** 2 - y ** 2, 0.02, 1))  # noqa: E731
    rot = _rotation(f)
    opening = col(ident["max_open"] * f["mouth_open"] + f["jaw_open"])
    parts = {}

    # Silhouette of the head ellipsoid: the ellipse where its normal is perpendicular
    # to the view direction, parametrised so that angle 0 is +x and pi/2 the chin.
    diag = np.array([a * a, 1.0, c * c])
    normal = rot[:, 2, :] / diag
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    u1 = np.array([1.0, 0, 0]) - normal[:, :1] * normal
    u1 /= np.linalg.norm(u1, axis=1, keepdims=True)
    u2 = np.cross(normal, u1)
    u2 *= np.sign(u2[:, 1:2])

    def ring(angles):
        d = np.cos(angles)[:, None] * u1[:, None] + np.sin(angles)[:, None] * u2[:, None]
        return d / np.sqrt((d * d / diag).sum(-1, keepdims=True))

    def jaw(p):
        below = np.clip((p[..., 1] - 0.1) / 0.9, 0, 1)
        p[..., 0] *= 1 - ident["jaw"] * below ** 1.5
        p[..., 1] += 0.55 * opening * np.clip((p[..., 1] - 0.35) / 0.65, 0, 1)
        return p

    d = 0.12
    jaw_t = np.pi + d - np.linspace(0, 1, 33) * (np.pi + 2 * d)
    top_t = -d - np.linspace(0, 1, 25)[1:-1] * (np.pi - 2 * d)
    parts["outline"] = jaw(ring(np.concatenate([jaw_t, top_t])))
    back = ring(np.linspace(0, 2 * np.pi, 48, endpoint=False))
    grow = 1.08 + 0.15 * ident["hair_vol"]
    back[..., 0] *= grow
    # Short hair ends above the ears, long hair falls below the chin.
    back[..., 1] = np.where(back[..., 1] < 0, back[..., 1] * grow,
                            np.minimum(back[..., 1] * 2, -0.3 + 2.3 * ident["hair_len"]))
    parts["hair_back"] = back
    h0 = np.arcsin(-ident["hairline"])
    # 3 % outside the face edge, so no anti-aliased seam of skin shows through.
    parts["hair_arc"] = 1.03 * ring(-h0 - np.linspace(0, 1, 16) * (np.pi - 2 * h0))
    hx = np.linspace(-1, 1, 16) * a * np.cos(h0)
    hy = ident["hairline"] + ident["hair_wave"] * np.sin(9 * hx) + ident["hair_part"] * hx
    parts["hairline"] = np.stack([hx, hy, surf(hx, hy)], -1)[None]
    parts["ears"] = np.array([[[-0.97 * a, 0.02, -0.15 * c], [0.97 * a, 0.02, -0.15 * c]]])
    parts["neck"] = np.array([[[-0.32, 0.6, -0.3 * c], [0.32, 0.6, -0.3 * c]]])

    # Brows: centre lines (landmarks) and the filled, tapered outline around them.
    w = np.linspace(0, 1, 9)[None]  # inner (0) to outer (1)
    furrow, tilt = col(f["brow_furrow"]), col(f["brow_tilt"])
    inner, outer = 0.09 - 0.4 * furrow, ident["eye_x"] + ident["eye_w"] / 2 + 0.05
    arch = ident["brow_arch"] * np.sin(np.pi * (0.15 + 0.7 * w))
    by = (ident["eye_y"] - ident["brow_gap"] - col(f["brow_raise"]) - arch
          - (tilt - 0.5 * furrow) * (1 - w))
    half = ident["brow_th"] * (1 - 0.5 * w) / 2
    for side, sign in (("l", -1), ("r", 1)):
        bx = sign * (inner + w * (outer - inner))
        if sign < 0:  # image-left brow: landmarks 17-21 run outer to inner
            bx, by_s, half_s = bx[:, ::-1], by[:, ::-1], half[:, ::-1]
        else:
            by_s, half_s = by, half
        bx = np.broadcast_to(bx, by_s.shape)
        parts[f"brow_{side}"] = np.stack([bx, by_s, surf(bx, by_s) + 0.03], -1)
        px = np.concatenate([bx, bx[:, ::-1]], 1)
        py = np.concatenate([by_s - half_s, (by_s + half_s)[:, ::-1]], 1)
        parts[f"brow_{side}_fill"] = np.stack([px, py, surf(px, py) + 0.03], -1)

    # Eyes: lids as sine arcs; the upper lid closes onto the lower one.
    openness = col(np.clip((1 + f["eye_open"]) * (1 - f["blink"]), 0, 2))
    s = np.sin(np.pi * _U13)[None] ** 0.9
    h = ident["eye_h"]
    for side, sign in (("l", -1), ("r", 1)):
        cx = sign * ident["eye_x"]
        ex = np.broadcast_to(cx + (_U13 - 0.5)[None] * ident["eye_w"], (t, 13))
        y_lo = ident["eye_y"] + 0.6 * h * s
        y_up = ident["eye_y"] + (0.6 * h - (1.6 * h) * openness) * s
        parts[f"eye_{side}"] = _contour(ex, y_up, ex, np.broadcast_to(y_lo, (t, 13)), surf, 0.02)
        gx = cx + 0.25 * ident["eye_w"] * col(f["gaze_x"])
        gy = ident["eye_y"] + 0.3 * h * col(f["gaze_y"])
        parts[f"iris_{side}"] = np.stack([gx, gy, surf(gx, gy) + 0.02], -1)

    ny, nl = ident["nose_y"], ident["nose_len"]
    k = np.linspace(0, 1, 4)
    y = ident["eye_y"] + (ny - ident["eye_y"]) * k
    parts["nose_bridge"] = np.stack([0 * k, y, surf(0, y) + nl * (0.1 + 0.9 * k)], -1)[None]
    x = np.array([-0.11, -0.055, 0, 0.055, 0.11]) * ident["nose_w"]
    y = ny + np.array([0.05, 0.07, 0.08, 0.07, 0.05])
    z = surf(x, y) + nl * np.array([0.35, 0.55, 0.6, 0.55, 0.35])
    parts["nose_base"] = np.stack([x, y, z], -1)[None]

    # Mouth: corner curvature and asymmetry bend the mouth line; the opening is
    # parabolic in x and the lower lip carries 70 % of it (the jaw drops).
    mw = ident["mouth_w"] * (1 + col(f["mouth_width"])) * (1 - 0.25 * col(f["lip_round"]))
    lift = col(f["lip_raise"])

    def lip_lines(u):
        """(upper inner, lower inner, mouth line, opening profile) at x = mw * u."""
        line = (ident["mouth_y"] - col(f["mouth_corner"]) * u ** 2
                - col(f["mouth_asym"]) * np.maximum(u, 0) ** 2)
        prof = 1 - u ** 2
        return line - (0.3 * opening + lift) * prof, line + 0.7 * opening * prof, line, prof

    u = np.linspace(-1, 1, 13)[None]
    up, lo, _, prof = lip_lines(u)
    bow = 0.25 * ident["lip_up"] * np.exp(-(u / 0.15) ** 2)  # Cupid's bow
    up_out = up - lift * prof - ident["lip_up"] * (0.3 + 0.7 * prof) + bow
    lo_out = lo + ident["lip_lo"] * (0.3 + 0.7 * prof)
    up_in, lo_in, line, prof_in = lip_lines(0.88 * u)
    up_in[:, [0, -1]] = lo_in[:, [0, -1]] = line[:, [0, -1]]  # inner corners on the mouth line
    lips = lambda x, y: surf(x, y) + 0.05 * np.sqrt(np.clip(1 - (x / mw) ** 2, 0, 1))  # noqa: E731
    xo, xi = mw * u, 0.88 * mw * u
    parts["mouth_outer"] = _contour(xo, up_out, xo, lo_out, lips)
    parts["mouth_inner"] = _contour(xi, up_in, xi, lo_in, lips)
    teeth = up_in + np.minimum(0.06, 0.45 * (lo_in - up_in)) * np.sqrt(prof_in)
    parts["teeth"] = _contour(xi, up_in, xi, teeth, lips)

    names = list(parts)
    pts = np.concatenate([np.broadcast_to(parts[n], (t,) + parts[n].shape[1:]) for n in names], 1)
    unit = col(FACE_PX * size * f["scale"])
    xy = np.einsum("tij,tnj->tni", rot[:, :2], pts) * unit[..., None]
    xy += np.stack([(CENTER[0] + col(f["tx"])) * size, (CENTER[1] + col(f["ty"])) * size], -1)
    out, start = {}, 0
    for n in names:
        out[n] = xy[:, start:start + parts[n].shape[1]]
        start += parts[n].shape[1]
    return out, unit[:, 0]


def landmarks68(p: dict) -> np.ndarray:
    """The dlib-68 points (T, 68, 2) among the drawn parts."""
    return np.concatenate([
        p["outline"][:, 0:33:2], p["brow_l"][:, 0:9:2], p["brow_r"][:, 0:9:2],
        p["nose_bridge"], p["nose_base"], p["eye_l"][:, _EYE_LMK], p["eye_r"][:, _EYE_LMK],
        p["mouth_outer"][:, _OUTER_LMK], p["mouth_inner"][:, _INNER_LMK]], 1).astype(np.float32)


# --- drawing ----------------------------------------------------------------------------

_SHIFT = 4  # OpenCV sub-pixel bits: coordinates are drawn at 1/16 pixel


def _fix(xy) -> np.ndarray:
    return np.round(np.asarray(xy) * (1 << _SHIFT)).astype(np.int32)


def _fill(img, pts, color) -> None:
    cv2.fillPoly(img, [_fix(pts)], tuple(map(float, color)), cv2.LINE_AA, _SHIFT)


def _line(img, pts, color, thickness) -> None:
    cv2.polylines(img, [_fix(pts)], False, tuple(map(float, color)), thickness, cv2.LINE_AA, _SHIFT)


def _ellipse(img, center, axes, angle, color) -> None:
    cv2.ellipse(img, tuple(_fix(center).tolist()), tuple(_fix(np.maximum(axes, 0.5)).tolist()),
                float(angle), 0, 360, tuple(map(float, color)), -1, cv2.LINE_AA, _SHIFT)


def background(ident: dict, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    cos, sin = np.cos(ident["bg_angle"]), np.sin(ident["bg_angle"])
    g = np.clip(xx * cos + yy * sin + 0.5, 0, 1)[..., None]
    img = ident["bg"][0] * (1 - g) + ident["bg"][1] * g
    period_px = ident["bg_stripes"] * size
    if period_px >= factors.MIN_STRIPE_PERIOD_PX:
        stripes = np.sin(2 * np.pi * (xx * sin - yy * cos) / ident["bg_stripes"]) > 0
        img *= 1 - 0.1 * stripes[..., None]
    elif period_px > 0:  # finer than the pixel grid can show: drawn as its mean shade, not aliased
        img *= 1 - 0.05
    return img.astype(np.uint8)


def _iris(img, contour, center, radius, color) -> None:
    """Iris, pupil and highlight, clipped to the eye opening (anti-aliased mask)."""
    h, w = img.shape[:2]
    x0, y0 = np.maximum(np.floor(contour.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(contour.max(0)).astype(int) + 2, (w, h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    roi = img[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fix(contour - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    layer = roi.copy()
    c = center - (x0, y0)
    _ellipse(layer, c, (radius, radius), 0, color)
    _ellipse(layer, c, (0.45 * radius, 0.45 * radius), 0, (15, 12, 12))
    _ellipse(layer, c - 0.35 * radius, (0.18 * radius, 0.18 * radius), 0, (250, 250, 250))
    alpha = mask[..., None].astype(np.float32) / 255
    roi[:] = (roi * (1 - alpha) + layer * alpha + 0.5).astype(np.uint8)


def draw(bg: np.ndarray, p: dict, k: int, unit: float, ident: dict, f: dict) -> np.ndarray:
    """Frame k of a clip, uint8 (H, W, 3) RGB."""
    img, size = bg.copy(), bg.shape[0]
    g = {name: v[k] for name, v in p.items()}
    skin, hair, lip = ident["skin"], ident["hair"], ident["lip"]
    thin = max(1, int(round(unit * 0.015)))
    _fill(img, g["hair_back"], hair)
    top = g["neck"]
    bottom = [(top[1, 0] + 0.03 * size, size + 2), (top[0, 0] - 0.03 * size, size + 2)]
    _fill(img, [top[0], top[1], *bottom], skin * 0.82)
    shoulders = ((0.5 + 0.5 * f["tx"][k]) * size, 1.1 * size)
    _ellipse(img, shoulders, (0.42 * size, 0.2 * size), 0, ident["clothes"])
    for ear in g["ears"]:
        _ellipse(img, ear, (0.1 * unit, 0.18 * unit), f["roll"][k], skin * 0.9)
    _fill(img, g["outline"], skin)
    _line(img, g["outline"][:33], skin * 0.8, thin)  # the jaw edge; hair hides the top
    _fill(img, np.vstack([g["hair_arc"], g["hairline"]]), hair)
    _fill(img, g["brow_l_fill"], ident["brow"])
    _fill(img, g["brow_r_fill"], ident["brow"])
    for side in "lr":
        eye = g[f"eye_{side}"]
        _fill(img, eye, (240, 237, 230))
        _iris(img, eye, g[f"iris_{side}"][0], 0.055 * unit, ident["iris"])
        _line(img, eye[:13], (45, 30, 30), thin)
    _line(img, g["nose_bridge"] + (0.03 * unit, 0), skin * 0.88, thin)
    base = g["nose_base"]
    wings = (base[0] + (-0.02 * unit, -0.05 * unit), base[4] + (0.02 * unit, -0.05 * unit))
    _line(img, np.vstack([wings[0], base, wings[1]]), skin * 0.72, thin)
    for a, b in ((1, 2), (3, 2)):
        nostril = 0.6 * base[a] + 0.4 * base[b] - (0, 0.015 * unit)
        _ellipse(img, nostril, (0.025 * unit, 0.013 * unit), f["roll"][k], skin * 0.45)
    _fill(img, g["mouth_outer"], lip)
    _fill(img, g["mouth_inner"], (70, 20, 25))
    _fill(img, g["teeth"], (236, 232, 222))
    _line(img, g["mouth_inner"][:13], lip * 0.6, thin)
    return img


# --- clips and datasets -----------------------------------------------------------------
