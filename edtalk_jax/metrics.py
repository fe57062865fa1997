"""What the trainer reports: scalar and image writers, image grids, norms, throughput/MFU.

TensorBoard files come from tensorboardX (clu's writers import TensorFlow). Every
scalar write is also one JSON line in `<logdir>/metrics.jsonl`, which tests and scripts
read without TensorBoard.
"""

import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

GRID_SEP = 2  # px between cells, and under the label row
GRID_LABEL_H = 14  # px of the label row on top of an image grid
JSONL = "metrics.jsonl"


class MetricWriter:
    """TensorBoard scalars/images plus a JSONL scalar log. Writes only where `enabled`
    (default: process 0), so every process can call it unconditionally."""

    def __init__(self, logdir: str, enabled: Optional[bool] = None):
        self.logdir = logdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = self._jsonl = None
        if self.enabled:
            import tensorboardX  # here, so processes that never write need not install it

            os.makedirs(logdir, exist_ok=True)
            self._tb = tensorboardX.SummaryWriter(logdir)
            self._jsonl = open(os.path.join(logdir, JSONL), "a")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()  # a line per log step: readable while the run goes on

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """`images`: uint8 (H, W, 3) arrays, e.g. from `image_grid`."""
        if not self.enabled:
            return
        for k, img in images.items():
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"image {k!r}: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
            self._tb.add_image(k, img, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._jsonl.close()
            self._tb = self._jsonl = None
            self.enabled = False  # later writes are no-ops rather than errors on closed files

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_uint8(images) -> np.ndarray:
    """uint8 unchanged; floats in [-1, 1] mapped to 0..255 (rounded, clipped)."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.round((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(columns: Sequence[Tuple[str, Any]], max_rows: int = 4, min_cell: int = 0) -> np.ndarray:
    """One uint8 (H', W', 3) picture: a row per example, a column per named image batch.

    min_cell: images whose larger side is under it are enlarged by the integer factor
    that brings them closest to it without exceeding it (nearest neighbour, so pixels
    stay exact); a 32^2 demo frame becomes a 128^2 cell, readable and wide enough for
    its label. The layout below is then in enlarged pixels.

    columns: `(label, images)` with images (B, H, W, 3), float in [-1, 1] or uint8. Rows
    are the first min(B, max_rows) examples. Cells are the largest H x W, images placed
    top-left; the label row is GRID_LABEL_H px high, cells are GRID_SEP px apart, so
    cell (r, c) starts at y = GRID_LABEL_H + GRID_SEP + r (H + GRID_SEP), x = c (W + GRID_SEP).
    """
    import cv2

    if not columns:
        raise ValueError("image_grid needs at least one column")
    cols = []
    for label, images in columns:
        x = to_uint8(images)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"column {label!r}: expected (B, H, W, 3) images, got {x.shape}")
        cols.append((str(label), x))
    rows = min(max_rows, min(x.shape[0] for _, x in cols))
    k = max(1, min_cell // max(max(x.shape[1:3]) for _, x in cols))
    if k > 1:
        cols = [(label, x[:rows].repeat(k, axis=1).repeat(k, axis=2)) for label, x in cols]
    h = max(x.shape[1] for _, x in cols)
    w = max(x.shape[2] for _, x in cols)
    top = GRID_LABEL_H + GRID_SEP
    shape = (top + rows * (h + GRID_SEP) - GRID_SEP, len(cols) * (w + GRID_SEP) - GRID_SEP, 3)
    grid = np.full(shape, 128, np.uint8)  # grey shows through as the separators
    for c, (label, x) in enumerate(cols):
        x0 = c * (w + GRID_SEP)
        # Drawn into its own cell-wide strip so long labels are clipped, not spilled over.
        strip = np.zeros((GRID_LABEL_H, w, 3), np.uint8)
        cv2.putText(strip, label, (2, GRID_LABEL_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        grid[:GRID_LABEL_H, x0:x0 + w] = strip
        for r in range(rows):
            y0 = top + r * (h + GRID_SEP)
            grid[y0:y0 + x.shape[1], x0:x0 + x.shape[2]] = x[r]
    return grid


def save_png(path: str, rgb_uint8) -> None:
    """Writes an RGB uint8 (H, W, 3) image as PNG; atomic (temp file + os.replace)."""
    import cv2

    img = np.asarray(rgb_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
    ok, data = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))  # cv2 wants BGR
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"cannot write {path}: {e}") from e


def tree_norm(tree) -> jax.Array:
    """Global L2 norm of all leaves, accumulated in float32 (bf16 squares would overflow/round)."""
    leaves = jax.tree.leaves(tree)
    sq = sum((jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in leaves), jnp.float32(0))
    return jnp.sqrt(sq)


# Dense bf16 peak FLOP/s per device (no sparsity; float32 peaks are several times lower,
# so MFU of a float32 run against these is an underestimate). Keys are lower-case
# substrings of `device.device_kind`, tried in order: the more specific first.
PEAK_FLOPS = {
    "h100 pcie": 756e12,
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "v5 lite": 197e12,  # TPU v5e reports "TPU v5 lite"
    "v5e": 197e12,
    "v5p": 459e12,
    "tpu v5": 459e12,  # TPU v5p reports "TPU v5"
    "v6 lite": 918e12,  # TPU v6e (Trillium)
    "v6e": 918e12,
    "tpu v4": 275e12,
}


def peak_flops(device: Optional[jax.Device] = None, override: Optional[float] = None) -> Optional[float]:
    """Dense bf16 peak FLOP/s of `device` (default: the first device); `override` wins;
    None for CPUs and unknown kinds."""
    if override is not None:
        return float(override)
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


class Throughput:
    """Step timer for log steps. The first `tick` only starts the clock (call it after the
    first, compiling step); each later tick reports the rates since the previous one. Call
    `reset(step)` after an eval or checkpoint pause to leave it out.

    flops_per_step: FLOPs of one step over all devices (see `compiled_flops`).
    peak: per-device peak FLOP/s (default `peak_flops()`); num_devices: default all.
    """

    def __init__(self, flops_per_step: Optional[float] = None, peak: Optional[float] = None,
                 num_devices: Optional[int] = None, clock: Callable[[], float] = time.perf_counter):
        self.flops_per_step = flops_per_step
        self.peak = peak_flops() if peak is None else peak
        self.num_devices = jax.device_count() if num_devices is None else num_devices
        self._clock = clock
        self._last = None  # (step, time)

    def reset(self, step: int) -> None:
        self._last = (int(step), self._clock())

    def tick(self, step: int, samples: int) -> Dict[str, float]:
        """`samples`: global samples per step. Empty dict on the first call or if no step passed."""
        now, last = self._clock(), self._last
        self._last = (int(step), now)
        if last is None or step <= last[0] or now <= last[1]:
            return {}
        steps, dt = step - last[0], now - last[1]
        s_per_step = dt / steps
        out = {"perf/steps_per_s": steps / dt, "perf/samples_per_s": samples * steps / dt,
               "perf/s_per_step": s_per_step}
        if self.flops_per_step and self.peak:
            out["perf/mfu"] = self.flops_per_step / s_per_step / (self.peak * self.num_devices)
        return out


def compiled_flops(compiled) -> Optional[float]:
    """FLOPs from `compiled.cost_analysis()`, or None. For a sharded program this is per
    device: multiply by the device count for the whole step."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends raise instead of returning nothing
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else None
    flops = cost.get("flops") if isinstance(cost, Mapping) else None
    return float(flops) if flops is not None and flops >= 0 else None
