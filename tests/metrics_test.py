"""Writers, image grids, norms and throughput arithmetic."""

import glob
import json
import os
import struct

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edtalk_jax import metrics


def _read_events(path):
    """Events of a tfevents file: TFRecords (u64 length, u32 crc, data, u32 crc) of Event protos."""
    from tensorboardX.proto import event_pb2

    events, data = [], open(path, "rb").read()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
        pos += 12 + n + 4
    return events


def test_scalars_and_images_round_trip(tmp_path):
    w = metrics.MetricWriter(str(tmp_path), enabled=True)
    w.write_scalars(1, {"loss/l1": 0.5, "opt/grad_norm": np.float32(2.0)})
    w.write_scalars(2, {"loss/l1": jnp.float32(0.25)})
    w.write_images(2, {"samples": np.zeros((8, 6, 3), np.uint8)})
    with pytest.raises(ValueError, match="bad"):
        w.write_images(2, {"bad": np.zeros((8, 6, 3), np.float32)})
    w.close()
    w.write_scalars(3, {"loss/l1": 1.0})  # after close: a no-op
    lines = [json.loads(l) for l in open(tmp_path / metrics.JSONL)]
    assert lines == [{"step": 1, "loss/l1": 0.5, "opt/grad_norm": 2.0}, {"step": 2, "loss/l1": 0.25}]
    (events_file,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    values = [(e.step, v.tag, v.simple_value if v.HasField("simple_value") else v.image.width)
              for e in _read_events(events_file) for v in e.summary.value]
    assert (1, "loss/l1", 0.5) in values and (1, "opt/grad_norm", 2.0) in values
    assert (2, "loss/l1", 0.25) in values and (2, "samples", 6) in values


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics.MetricWriter(str(tmp_path / "off"), enabled=False)
    w.write_scalars(1, {"a": 1.0})
    w.write_images(1, {"b": np.zeros((2, 2, 3), np.uint8)})
    w.flush()
    w.close()
    assert not (tmp_path / "off").exists()


def test_image_grid_places_images():
    r = np.random.RandomState(0)
    src = r.uniform(-1, 1, (5, 8, 10, 3)).astype(np.float32)
    drv = r.randint(0, 256, (5, 8, 10, 3)).astype(np.uint8)
    small = r.randint(0, 256, (5, 4, 6, 3)).astype(np.uint8)
    grid = metrics.image_grid([("source", src), ("driving", drv), ("mouth", small)], max_rows=3)
    h, w, sep, top = 8, 10, metrics.GRID_SEP, metrics.GRID_LABEL_H + metrics.GRID_SEP
    assert grid.dtype == np.uint8 and grid.shape == (top + 3 * h + 2 * sep, 3 * w + 2 * sep, 3)
    src8 = np.clip(np.round((src + 1) * 127.5), 0, 255).astype(np.uint8)
    for r_ in range(3):
        y = top + r_ * (h + sep)
        np.testing.assert_array_equal(grid[y:y + h, 0:w], src8[r_])
        np.testing.assert_array_equal(grid[y:y + h, w + sep:2 * w + sep], drv[r_])
        np.testing.assert_array_equal(grid[y:y + 4, 2 * (w + sep):2 * (w + sep) + 6], small[r_])
    assert grid[:metrics.GRID_LABEL_H].max() > 0  # the labels drew something
    assert metrics.image_grid([("a", src[:2])]).shape[0] == top + 2 * h + sep  # rows = min(B, max_rows)


def test_image_grid_enlarges_small_images():
    x = np.random.RandomState(2).randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    grid = metrics.image_grid([("source", x), ("driving", x)], min_cell=128)
    top, sep = metrics.GRID_LABEL_H + metrics.GRID_SEP, metrics.GRID_SEP
    assert grid.shape == (top + 2 * 128 + sep, 2 * 128 + sep, 3)
    np.testing.assert_array_equal(grid[top:top + 128, :128], x[0].repeat(4, 0).repeat(4, 1))
    np.testing.assert_array_equal(grid[top + 128 + sep:top + 256 + sep, 128 + sep:], x[1].repeat(4, 0).repeat(4, 1))
    assert metrics.image_grid([("a", x)], min_cell=100).shape[1] == 96  # integer factor, not over
    assert metrics.image_grid([("a", x)], min_cell=20).shape[1] == 32  # never shrunk


def test_save_png_round_trip(tmp_path):
    img = np.random.RandomState(1).randint(0, 256, (9, 7, 3)).astype(np.uint8)
    path = str(tmp_path / "grid.png")
    metrics.save_png(path, img)
    np.testing.assert_array_equal(cv2.imread(path)[..., ::-1], img)
    assert os.listdir(tmp_path) == ["grid.png"]
    with pytest.raises(OSError, match="missing_dir"):
        metrics.save_png(str(tmp_path / "missing_dir" / "x.png"), img)
    with pytest.raises(ValueError, match="x.png"):
        metrics.save_png(str(tmp_path / "x.png"), img.astype(np.float32))


def test_tree_norm_matches_numpy():
    r = np.random.RandomState(2)
    tree = {"a": r.randn(3, 4).astype(np.float32), "b": [r.randn(5).astype(np.float32)],
            "c": jnp.asarray(r.randn(2, 2), jnp.bfloat16)}
    ref = np.sqrt(sum(np.sum(np.asarray(x, np.float32) ** 2) for x in jax.tree.leaves(tree)))
    out = metrics.tree_norm(tree)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(float(out), ref, rtol=1e-6)
    assert float(metrics.tree_norm({})) == 0.0


def test_throughput_and_mfu_arithmetic():
    times = iter([10.0, 12.0, 13.0])
    t = metrics.Throughput(flops_per_step=1e12, peak=100e12, num_devices=4, clock=lambda: next(times))
    assert t.tick(0, samples=32) == {}  # starts the clock
    out = t.tick(10, samples=32)  # 10 steps in 2 s
    assert out["perf/steps_per_s"] == pytest.approx(5.0)
    assert out["perf/samples_per_s"] == pytest.approx(160.0)
    assert out["perf/s_per_step"] == pytest.approx(0.2)
    assert out["perf/mfu"] == pytest.approx(1e12 / 0.2 / 400e12)
    assert t.tick(20, samples=32)["perf/s_per_step"] == pytest.approx(0.1)


def test_peak_flops():
    assert metrics.peak_flops(override=5e12) == 5e12
    assert metrics.peak_flops(jax.devices("cpu")[0]) is None

    class Dev:
        platform = "gpu"
        device_kind = "NVIDIA H100 80GB HBM3"

    assert metrics.peak_flops(Dev()) == 989e12
    for kind, peak in (("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12),
                       ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA H200", 989e12),
                       ("Some GPU", None)):
        Dev.device_kind = kind
        assert metrics.peak_flops(Dev()) == peak, kind


def test_compiled_flops_of_a_matmul():
    m, k, n = 64, 32, 48
    f = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert metrics.compiled_flops(f) == pytest.approx(2 * m * n * k, rel=0.05)

    class NoCost:
        def cost_analysis(self):
            return None

    assert metrics.compiled_flops(NoCost()) is None
