"""Flow warping with torch.nn.functional.grid_sample semantics (NHWC).

Bilinear, zero padding, align_corners=False: a normalised coordinate g in [-1, 1] maps to
pixel ((g + 1) * size - 1) / 2 and taps outside the image contribute 0. The decoder's base
grid is `linspace(-1, 1, res)` (the align_corners=True convention), so a zero flow is NOT
an identity resample; the trained weights depend on this mismatch, keep it.
"""

import numpy as np
import jax.numpy as jnp


def base_grid(res: int, dtype) -> jnp.ndarray:
    """(res, res, 2) grid, [..., 0] = x (columns), [..., 1] = y (rows): np.linspace rounded
    to float32, as the official code builds it (float64 runs match the reference exactly
    only with this rounding)."""
    xs = np.linspace(-1.0, 1.0, res)
    gx, gy = np.meshgrid(xs, xs)  # gx varies along columns, gy along rows
    return jnp.asarray(np.stack([gx, gy], axis=-1).astype(np.float32), dtype=dtype)


def grid_sample(feat, grid):
    """feat: (B, H, W, C); grid: (B, Ho, Wo, 2) normalised (x, y). Returns (B, Ho, Wo, C).

    Coordinates are computed in at least float32 (bfloat16 would misplace taps by whole
    pixels at 256^2); the result has feat's dtype.
    """
    b, h, w, c = feat.shape
    cdt = jnp.promote_types(grid.dtype, jnp.float32)
    grid = grid.astype(cdt)
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    wx1, wy1 = ix - x0, iy - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    flat = feat.reshape(b, h * w, c)
    out = 0
    for dy, wy in ((0, wy0), (1, wy1)):
        for dx, wx in ((0, wx0), (1, wx1)):
            xi, yi = x0 + dx, y0 + dy
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
            tap = jnp.take_along_axis(flat, idx.reshape(b, -1, 1), axis=1)
            weight = jnp.where(valid, wx * wy, 0).reshape(b, -1, 1)
            out = out + tap.astype(cdt) * weight
    return out.reshape(b, grid.shape[1], grid.shape[2], c).astype(feat.dtype)
