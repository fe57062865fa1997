"""Golden parity with the official EDTalk outputs (shared/fixtures/parity).

float64 (x64, weights upcast) must match the official float64 run within 1e-6 max abs:
that proves the computation is the same. float32 is held to the official code's own
float32 error (see the fixtures README): 1e-5 max abs for well-conditioned outputs,
mean abs error <= 3 * meta_f32err + 1e-6 for images (the flow warp amplifies rounding).
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edtalk_jax import convert_torch, parity, torch_io

FIXTURES = ["edtalk_gen_s64_w8_seed0", "edtalk_gen_s256_w16_seed0", "edtalk_lip_pose_s64_w8_seed0",
            "audio2lip_seed0", "dis_s64_w8_seed0"]


def _load(parity_dir, name):
    ckpt = torch_io.load_pt(str(parity_dir / f"{name}.pt"))
    with np.load(parity_dir / f"{name}.npz") as f:
        ref = {k: f[k] for k in f.files}
    kind = parity.kind_for_inputs(convert_torch.detect_kind(ckpt), ref)
    cfg, variables = convert_torch.torch_to_flax(kind, convert_torch.state_dict_of(ckpt, kind))
    return kind, cfg, variables, ref


def _outputs(ref):
    return sorted(k[:-4] for k in ref if k.endswith("_f64"))


def test_every_fixture_is_covered(parity_dir):
    assert sorted(p.stem for p in parity_dir.glob("*.pt")) == sorted(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_float64_matches_official_float64(parity_dir, name):
    kind, cfg, variables, ref = _load(parity_dir, name)
    with jax.enable_x64(True):
        out = parity.compute(kind, cfg, variables, ref, jnp.float64)
    assert sorted(out) == _outputs(ref)
    for k in out:
        assert out[k].dtype == np.float64 and out[k].shape == ref[k].shape, k
        err = np.abs(out[k] - ref[f"{k}_f64"]).max()
        assert err <= 1e-6, f"{name}:{k} max abs error {err:.3g} > 1e-6"


@pytest.mark.parametrize("name", FIXTURES)
def test_float32_within_official_float32_error(parity_dir, name):
    kind, cfg, variables, ref = _load(parity_dir, name)
    out = parity.compute(kind, cfg, variables, ref, jnp.float32)
    assert sorted(out) == _outputs(ref)
    for k in out:
        assert out[k].dtype == np.float32 and out[k].shape == ref[k].shape, k
        diff = np.abs(out[k].astype(np.float64) - ref[f"{k}_f64"])
        if k.startswith("out") and out[k].ndim == 4:  # images
            bound = 3 * float(ref[f"meta_f32err_{k}"]) + 1e-6
            assert diff.mean() <= bound, f"{name}:{k} mean abs error {diff.mean():.3g} > {bound:.3g}"
        else:
            assert diff.max() <= 1e-5, f"{name}:{k} max abs error {diff.max():.3g} > 1e-5"


@pytest.mark.parametrize("name,dtype", [("edtalk_lip_pose_s64_w8_seed0", "float64"), ("dis_s64_w8_seed0", "float32")])
def test_parity_cli(parity_dir, tmp_path, name, dtype):
    with np.load(parity_dir / f"{name}.npz") as f:
        ref = {k: f[k] for k in f.files}
    inputs = {k: ref[k] for k in ref if not (k.endswith("_f64") or k.startswith("meta_f32err") or k in _outputs(ref))}
    np.savez(tmp_path / "in.npz", **inputs)
    cmd = [sys.executable, "-m", "launch.parity", "--checkpoint", str(parity_dir / f"{name}.pt"),
           "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz"), "--dtype", dtype]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    with np.load(tmp_path / "out.npz") as f:
        assert sorted(f.files) == _outputs(ref)
        for k in f.files:
            tol = 1e-6 if dtype == "float64" else 1e-5
            assert f[k].dtype == np.dtype(dtype)
            assert np.abs(f[k] - ref[f"{k}_f64"]).max() <= tol, k


def test_parity_cli_reports_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    np.savez(tmp_path / "in.npz", x=np.zeros((4, 3, 64, 64), np.float32))
    r = subprocess.run([sys.executable, "-m", "launch.parity", "--checkpoint", str(bad), "--inputs",
                        str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")], capture_output=True, text=True)
    assert r.returncode != 0 and "bad.pt" in r.stderr
    assert not (tmp_path / "o.npz").exists()
