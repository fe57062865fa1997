"""launch.compile_check: batch layouts match the loaders, config errors name the field
before any model is built, weight files are not read, and on 8 fake CPU devices a tiny
FSDP step compiles with the reported fields and holds less state per device than data
parallel."""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import base, stage1, stage2, stage3, stage4
from edtalk_jax import compile_check

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.size=32", "--config.loss.perceptual=0"]  # fast compiles


def _launch(*args, timeout=900):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "launch.compile_check", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 32 px synthetic dataset with stage-4 targets (zeros, from a stand-in coefficient fn)."""
    from data_pipeline import synthetic
    from data_pipeline.loaders import targets
    out = tmp_path_factory.mktemp("data")
    cfg = synthetic.SyntheticConfig(num_speakers=2, clips_per_speaker=2, frames_per_clip=8, size=32, seed=0)
    synthetic.write_dataset(cfg, out, workers=1, progress=False)
    fake = lambda x: {"lip": np.zeros((len(x), 20), np.float32), "pose": np.zeros((len(x), 6), np.float32)}
    targets.compute_targets(out, "lip_pose", fake, batch_size=16, progress=False, model="test:fake")
    return str(out)


@pytest.mark.parametrize("module", [stage1, stage2, stage3, stage4])
def test_batch_spec_matches_the_loader(module, dataset):
    from data_pipeline import loaders
    from edtalk_jax import train
    from edtalk_jax.steps import STAGES

    config = module.get_config("tiny,size=32")
    config.batch_size = 2
    config.data.T = 3
    config.data.split = ""
    spec = compile_check.batch_spec(config)
    it = loaders.make_loader(train.loader_config(config, dataset, "", STAGES[config.stage].data_stage))
    batch = next(it)
    got = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in batch.items() if isinstance(v, np.ndarray)}
    want = {k: (tuple(s.shape), np.dtype(s.dtype)) for k, s in spec.items()}
    assert got == want


def test_random_batch_has_the_spec():
    config = stage4.get_config("tiny")
    spec = compile_check.batch_spec(config)
    batch = compile_check.random_batch(spec)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (s.shape, s.dtype) for k, s in spec.items()}
    boxes = batch["mouth_boxes"]
    assert (boxes >= 0).all() and (boxes <= 64).all() and (boxes[..., 2:] > boxes[..., :2]).all()


def _error(config, **kw):
    with pytest.raises(ValueError) as e:
        compile_check.abstract_step_args(config, **kw)
    return str(e.value)


def test_config_errors_name_the_field_before_compiling(monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("built the model before checking the mesh")
    monkeypatch.setattr(compile_check, "abstract_models", no_model)
    config = stage1.get_config("tiny")
    config.mesh.data = 2  # one CPU device here
    assert "mesh.data=2" in _error(config, devices=jax.devices()[:1])
    config = stage1.get_config("tiny")
    with config.unlocked():
        config.mesh.model = 2
    assert "mesh.model" in _error(config, devices=jax.devices()[:1])
    config = stage1.get_config("tiny")
    config.model.bank_mode = "orthogonal"
    assert "model.bank_mode" in _error(config)
    config = stage1.get_config("tiny")
    config.batch_size = 6  # one device: the mesh takes it, D's minibatch-stddev groups of 4 do not
    assert "batch_size=6: the discriminator scores 6 images" in _error(config, devices=jax.devices()[:1])
    config = stage4.get_config("tiny")
    config.syncnet.path = "/nonexistent/lipsync_expert.pth"  # not read, but its T = 5 rule holds
    config.data.T = 3
    assert "data.T=3: the SyncNet loss" in _error(config, devices=jax.devices()[:1])


def test_weight_files_are_not_read(tmp_path):
    config = stage2.get_config("tiny,size=32")
    missing = tmp_path / "vgg19-dcbb9e9d.pth"
    config.perceptual.backbone = "vgg19"
    config.perceptual.path = str(missing)  # does not exist: validate would refuse it
    config.init_from = str(tmp_path / "no_run")
    a = compile_check.abstract_step_args(config, devices=jax.devices()[:1])
    assert a.ignored == {"perceptual.path": str(missing), "init_from": str(tmp_path / "no_run")}
    assert "perceptual" in a.consts and all(isinstance(x, jax.ShapeDtypeStruct)
                                            for x in jax.tree.leaves((a.state, a.consts, a.batch)))


SMALL = TINY + ["--config.model.channels=(16,16,16,8)", "--config.mesh.fsdp_min_size=256"]


@pytest.mark.parametrize("args, message", [
    (["--config.batch_size=6"], "compile_check: batch_size=6 must be a positive multiple of mesh data x fsdp"),
    (["--config.mesh.data=16"], "compile_check: mesh.data=16 x mesh.fsdp=1 needs 16 devices but only 8 are present"),
    (["--config.mesh.model=2"], "compile_check: --config.mesh.model=2: unknown config field ('model')"),
    (["--config.batch_size=8", "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.model.size=48"],
     "compile_check: model.size=48"),
])
def test_config_errors_on_fake_devices_fail_fast(args, message):
    proc, seconds = _launch("--config=configs/stage1.py:tiny", "--fake_devices=8", *TINY, *args, timeout=300)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def _report(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fsdp_against_data_parallel_on_8_fake_devices():
    """The FSDP step compiles for data 2 x fsdp 4 with every reported field; its train state
    per device is a fraction of data parallel's (shapes only, no second compile)."""
    common = ["--config=configs/stage1.py:tiny", "--fake_devices=8", "--config.batch_size=8", *SMALL]
    dp = _report(_launch(*common, "--config.mesh.data=8", "--nocompile")[0])
    fsdp = _report(_launch(*common, "--config.mesh.data=2", "--config.mesh.fsdp=4")[0])
    for r, mesh in ((dp, {"data": 8, "fsdp": 1}), (fsdp, {"data": 2, "fsdp": 4})):
        assert r["devices"] == 8 and r["platform"] == "cpu" and r["mesh"] == mesh
        assert r["batch"] == 8 and r["batch_per_device"] == 1 and r["perceptual"] is None
    assert dp["param_count"] == fsdp["param_count"]
    whole = dp["param_count"] * 4  # float32, replicated
    assert dp["param_bytes_per_device"] == whole
    assert dp["compile_seconds"] is None and dp["flops_per_step"] is None and "temp_bytes_per_device" not in dp
    # Sharded leaves count a quarter on each device; the few under fsdp_min_size stay whole.
    assert whole / 4 <= fsdp["param_bytes_per_device"] < whole / 2
    assert fsdp["opt_state_bytes_per_device"] < dp["opt_state_bytes_per_device"] / 2
    assert fsdp["opt_state_bytes_per_device"] > fsdp["param_bytes_per_device"]  # Adam: two moments
    assert fsdp["flops_per_step"] > 0 and fsdp["temp_bytes_per_device"] > 0 and fsdp["compile_seconds"] > 0
    # XLA's own count of the step's inputs (state + batch + rng) agrees with ours to a few bytes.
    assert fsdp["argument_bytes_per_device"] == pytest.approx(
        fsdp["state_bytes_per_device"] + fsdp["batch_bytes_per_device"], rel=0.01)
