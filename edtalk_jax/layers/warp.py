"""Flow warping with torch.nn.functional.grid_sample semantics (NHWC).

Bilinear, zero padding, align_corners=False: a normalised coordinate g in [-1, 1] maps to
pixel ((g + 1) * size - 1) / 2 and taps outside the image contribute 0. The decoder's base
grid is `linspace(-1, 1, res)` (the align_corners=True convention), so a zero flow is NOT
an identity resample; the trained weights depend on this mismatch, keep it.

`grid_sample` has a hand-written VJP (docs/benchmarks.md, "Warp backward"): autodiff of
the four gathers gives four scatter-adds plus four per-tap reductions; the rule below does
one scatter-add of the four taps' updates and gets the grid cotangent from one batched dot
of the re-gathered taps with the output cotangent (about 2x faster on CPU). It saves only
(feat, grid) for the backward pass and re-gathers the taps there. Forward-mode (jvp) is
not defined; `reference_grid_sample` is the plain autodiff version the tests compare with.
"""

import jax
import jax.numpy as jnp
import numpy as np


def base_grid(res: int, dtype) -> jnp.ndarray:
    """(res, res, 2) grid, [..., 0] = x (columns), [..., 1] = y (rows): np.linspace rounded
    to float32, as the official code builds it (float64 runs match the reference exactly
    only with this rounding)."""
    xs = np.linspace(-1.0, 1.0, res)
    gx, gy = np.meshgrid(xs, xs)  # gx varies along columns, gy along rows
    return jnp.asarray(np.stack([gx, gy], axis=-1).astype(np.float32), dtype=dtype)


def _coords(grid, h, w):
    """Pixel coordinates in at least float32 (bfloat16 would misplace taps by whole pixels
    at 256^2) and that compute dtype."""
    cdt = jnp.promote_types(grid.dtype, jnp.float32)
    grid = grid.astype(cdt)
    return ((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2, cdt


def _taps(grid, b, h, w):
    """The four bilinear taps, ordered (y0, x0), (y0, x1), (y1, x0), (y1, x1): row indices
    into the (B*H*W, C) feature table (clipped, so always in bounds), weights (0 for taps
    outside the image), validity (0/1) and the fractional weights (wx0, wx1, wy0, wy1).
    All (B, Ho, Wo, 4) in the compute dtype (indices int32)."""
    ix, iy, cdt = _coords(grid, h, w)
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    wx1, wy1 = ix - x0, iy - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    row0 = (jnp.arange(b, dtype=jnp.int32) * (h * w)).reshape((b,) + (1,) * (ix.ndim - 1))
    idx, wts, valid = [], [], []
    for dy, wy in ((0, wy0), (1, wy1)):
        for dx, wx in ((0, wx0), (1, wx1)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx.append(row0 + jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1))
            wts.append(jnp.where(ok, wx * wy, 0))
            valid.append(ok.astype(cdt))
    stack = lambda xs: jnp.stack(xs, axis=-1)
    return stack(idx), stack(wts), stack(valid), stack([wx0, wx1, wy0, wy1]), cdt


def _rows(table, idx):
    return jnp.asarray(table).at[idx].get(mode="promise_in_bounds")  # _taps clips the indices


@jax.custom_vjp
def grid_sample(feat, grid):
    """feat: (B, H, W, C); grid: (B, Ho, Wo, 2) normalised (x, y). Returns (B, Ho, Wo, C).

    Coordinates and the weighted sum are computed in at least float32; the result has
    feat's dtype.
    """
    b, h, w, c = feat.shape
    idx, wts, _, _, cdt = _taps(grid, b, h, w)
    table = feat.reshape(b * h * w, c)
    out = 0
    for k in range(4):  # one gather per tap: XLA fuses each into the weighted sum
        out = out + _rows(table, idx[..., k]).astype(cdt) * wts[..., k:k + 1]
    return out.astype(feat.dtype)


def _grid_sample_fwd(feat, grid):
    return grid_sample(feat, grid), (feat, grid)


def _grid_sample_bwd(res, g):
    feat, grid = res
    b, h, w, c = feat.shape
    idx, wts, valid, frac, cdt = _taps(grid, b, h, w)
    table = feat.reshape(b * h * w, c)
    g = g.astype(cdt)
    # d out / d ix = sum over taps of +-wy * tap (x1 taps +, x0 taps -); likewise for iy.
    s = jnp.einsum("bhwkc,bhwc->bhwk", _rows(table, idx).astype(cdt), g) * valid
    s00, s01, s10, s11 = (s[..., k] for k in range(4))
    wx0, wx1, wy0, wy1 = (frac[..., k] for k in range(4))
    dix = wy0 * (s01 - s00) + wy1 * (s11 - s10)
    diy = wx0 * (s10 - s00) + wx1 * (s11 - s01)
    dgrid = jnp.stack([dix * (w / 2), diy * (h / 2)], axis=-1).astype(grid.dtype)
    # All four taps' updates in one scatter-add, accumulated in the compute dtype.
    upd = (g[..., None, :] * wts[..., None]).reshape(-1, c)
    dfeat = jnp.zeros((b * h * w, c), cdt).at[idx.reshape(-1)].add(upd, mode="promise_in_bounds")
    return dfeat.reshape(feat.shape).astype(feat.dtype), dgrid


grid_sample.defvjp(_grid_sample_fwd, _grid_sample_bwd)


def reference_grid_sample(feat, grid):
    """The same function in its plainest form (four take_along_axis gathers), differentiated
    by JAX: the reference for `grid_sample`'s values and gradients (tests, benchmark)."""
    b, h, w, c = feat.shape
    ix, iy, cdt = _coords(grid, h, w)
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
