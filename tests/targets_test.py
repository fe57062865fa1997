"""Stage-4 targets: compute, resume, load, stale checks, and the compute_targets CLI."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import data_pipeline
from data_pipeline import synthetic
from data_pipeline.loaders import targets
from data_pipeline.records import shards, source


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("targets_data")
    cfg = synthetic.SyntheticConfig(num_speakers=3, clips_per_speaker=2, frames_per_clip=7, size=64)
    synthetic.write_dataset(cfg, out, workers=1, progress=False)
    return out


@pytest.fixture
def shards_dir(dataset, tmp_path):
    """A private copy (tests write targets and edit manifests)."""
    path = tmp_path / "shards"
    shutil.copytree(dataset, path)
    return path


MODEL = "test:_coeffs"


def _coeffs(frames):
    """A deterministic per-frame function of the pixels with lip/pose shapes."""
    grid = frames[:, ::8, ::8, 0].reshape(len(frames), -1)
    feats = np.concatenate([frames.mean((1, 2)), frames.std((1, 2)), grid], 1)
    return {"lip": feats[:, :20], "pose": feats[:, 20:26]}


def _expected(shards_dir, index):
    frames = data_pipeline.read_clip(shards_dir, index)["frames"].astype(np.float32) / 127.5 - 1
    return _coeffs(frames)


def test_compute_and_load(shards_dir):
    info = targets.compute_targets(shards_dir, "t", _coeffs, batch_size=5, progress=False, model=MODEL)
    assert info["complete"] and (info["lip_dim"], info["pose_dim"]) == (20, 6)
    store = targets.load_targets(shards_dir, "t")
    for g in range(data_pipeline.num_clips(shards_dir)):
        lip, pose = store.get(g)
        want = _expected(shards_dir, g)
        assert lip.shape == (7, 20) and pose.shape == (7, 6) and lip.dtype == np.float32
        np.testing.assert_allclose(lip, want["lip"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pose, want["pose"], rtol=1e-5, atol=1e-6)


def test_resumes_per_shard(shards_dir):
    calls = []

    def failing(frames):
        calls.append(len(frames))
        if sum(calls) > 14:  # the first shard (2 clips x 7 frames) completes
            raise RuntimeError("interrupted")
        return _coeffs(frames)

    with pytest.raises(RuntimeError, match="interrupted"):
        targets.compute_targets(shards_dir, "t", failing, batch_size=7, progress=False, model=MODEL)
    with pytest.raises(targets.TargetsError, match="incomplete"):
        targets.load_targets(shards_dir, "t")
    counted = []
    targets.compute_targets(shards_dir, "t", lambda f: counted.append(len(f)) or _coeffs(f),
                            batch_size=7, progress=False, model=MODEL)
    assert sum(counted) == 4 * 7  # only the two remaining shards
    lip, _ = targets.load_targets(shards_dir, "t").get(0)
    np.testing.assert_allclose(lip, _expected(shards_dir, 0)["lip"], rtol=1e-5, atol=1e-6)


def test_missing_targets_name_the_command(shards_dir):
    with pytest.raises(targets.TargetsError, match="launch.compute_targets --shards"):
        targets.load_targets(shards_dir, "nope")


def test_stale_manifest_is_refused(shards_dir):
    targets.compute_targets(shards_dir, "t", _coeffs, progress=False, model=MODEL)
    manifest = shards.load_manifest(shards_dir)
    manifest["clips"] = manifest["clips"][::-1]  # another indexing of the clips
    with open(os.path.join(shards_dir, shards.MANIFEST), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(targets.TargetsError, match="stale"):
        targets.load_targets(shards_dir, "t")
    with pytest.raises(targets.TargetsError, match="manifest_sha256"):
        targets.compute_targets(shards_dir, "t", _coeffs, progress=False, model=MODEL)  # no mixing


def test_checkpoint_mismatch_is_refused(shards_dir, tmp_path):
    ckpt_a, ckpt_b = tmp_path / "a.pt", tmp_path / "b.pt"
    ckpt_a.write_bytes(b"generator A")
    ckpt_b.write_bytes(b"generator B")
    targets.compute_targets(shards_dir, "t", _coeffs, progress=False, checkpoint=ckpt_a)
    targets.load_targets(shards_dir, "t", checkpoint=ckpt_a)
    with pytest.raises(targets.TargetsError, match="stale"):
        targets.load_targets(shards_dir, "t", checkpoint=ckpt_b)
    with pytest.raises(targets.TargetsError, match="checkpoint_sha256"):
        targets.compute_targets(shards_dir, "t", _coeffs, progress=False, checkpoint=ckpt_b)


def test_model_and_size_key_the_targets(shards_dir):
    with pytest.raises(ValueError, match="name the model"):
        targets.compute_targets(shards_dir, "t", _coeffs, progress=False)
    calls = []

    def interrupted(frames):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("interrupted")
        return _coeffs(frames)

    with pytest.raises(RuntimeError):
        targets.compute_targets(shards_dir, "t", interrupted, batch_size=14, progress=False,
                                model="A", size=32)
    # Resuming with another model or another frame size would mix two kinds of rows.
    with pytest.raises(targets.TargetsError, match="model"):
        targets.compute_targets(shards_dir, "t", _coeffs, progress=False, model="B", size=32)
    with pytest.raises(targets.TargetsError, match="size"):
        targets.compute_targets(shards_dir, "t", _coeffs, progress=False, model="A", size=64)
    targets.compute_targets(shards_dir, "t", _coeffs, progress=False, model="A", size=32)
    targets.load_targets(shards_dir, "t", size=32)
    with pytest.raises(targets.TargetsError, match="32px frames, this model takes 64px"):
        targets.load_targets(shards_dir, "t", size=64)


def test_cli_targets_equal_an_independent_computation(shards_dir, parity_dir):
    """launch.compute_targets with a real lip-pose checkpoint (official layout) against
    frames decoded here (cv2 from the records) through the generator's encoder and heads."""
    import cv2
    from edtalk_jax import model_io
    from edtalk_jax.models import build_model
    from launch import compute_targets

    pt = str(parity_dir / "edtalk_lip_pose_s64_w8_seed0.pt")
    compute_targets.main(["--shards", str(shards_dir), "--checkpoint", pt, "--name", "cli",
                          "--batch", "8"])
    stored = targets.load_targets(shards_dir, "cli", checkpoint=pt, size=64)
    kind, cfg, variables = model_io.load_any(pt)
    model = build_model(kind, cfg)
    store = source.ClipStore(shards_dir)
    for g in (0, len(store) - 1):
        rgb = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR),
                                     cv2.COLOR_BGR2RGB) for j in store.record(g)["frames"]])
        x = jax.numpy.asarray(rgb.astype(np.float32) / 127.5 - 1)
        want = model.apply(variables, x, method=lambda m, x: m.coefficients(
            m.encode(x)["latent"], parts=("lip", "pose")))
        lip, pose = stored.get(g)
        np.testing.assert_allclose(lip, want["lip"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pose, want["pose"], rtol=1e-4, atol=1e-5)
        assert np.abs(np.diff(lip, axis=0)).max() > 1e-4  # frames differ: rows are not one frame's


def test_checkpoint_hash_covers_directories(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "w.bin").write_bytes(b"1")
    h1 = targets.checkpoint_sha256(d)
    (d / "sub" / "w.bin").write_bytes(b"2")
    assert targets.checkpoint_sha256(d) != h1


def _tiny_lip_pose(directory):
    """A random lip-pose generator saved like launch.convert (shapes from eval_shape)."""
    from edtalk_jax import model_io
    from edtalk_jax.models import build_model, example_inputs

    cfg = dict(size=64, width_div=16, style_dim=512, lip_dim=20, pose_dim=6, exp_dim=0)
    model = build_model("lip_pose", cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_inputs("lip_pose", cfg))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    model_io.save_model(str(directory), "lip_pose", cfg, variables)


def test_cli_with_a_lip_pose_generator(shards_dir, tmp_path):
    from launch import compute_targets

    _tiny_lip_pose(tmp_path / "lp")
    compute_targets.main(["--shards", str(shards_dir), "--checkpoint", str(tmp_path / "lp"),
                          "--name", "lp", "--batch", "16"])
    store = targets.load_targets(shards_dir, "lp", checkpoint=tmp_path / "lp")
    coeff_fn, size, _ = compute_targets.coeff_fn_from_checkpoint(str(tmp_path / "lp"), 16)
    assert size == 64
    frames = data_pipeline.read_clip(shards_dir, 3)["frames"].astype(np.float32) / 127.5 - 1
    want = coeff_fn(frames)
    lip, pose = store.get(3)
    np.testing.assert_allclose(lip, want["lip"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pose, want["pose"], rtol=1e-4, atol=1e-5)
    assert np.abs(lip[0] - lip[-1]).max() > 1e-3  # the coefficients follow the frames
