"""Checkpoints: bitwise round trips, pruning, damaged steps, crash safety, data position,
resume sources, preemption."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data_pipeline import loaders, synthetic
from edtalk_jax import checkpointing
from edtalk_jax.checkpointing import Checkpoints

LOG = "edtalk_jax.checkpointing"
# When one array read fails, orbax 0.12.8 closes the other pending reads, and its
# `except BaseException` turns their GeneratorExit into an "Exception ignored in coroutine".
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(seed=0):
    """A train-state-like tree: float32 and bfloat16 params, an Adam state after one
    update (nonzero moments, count 1), an int32 step."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {"conv": {"kernel": jax.random.normal(k1, (3, 3, 4, 8))},
              "bank": jax.random.normal(k2, (16,)).astype(jnp.bfloat16)}
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return {"params": optax.apply_updates(params, updates), "opt": opt_state,
            "step": jnp.asarray(seed + 1, jnp.int32)}


def _abstract(tree, sharding=None):
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _assert_bitwise(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def _largest_file(directory):
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


def test_save_restore_is_bitwise_and_keeps_shardings(tmp_path):
    state = _state()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with Checkpoints(str(tmp_path), config={"lr": 1e-3, "widths": (1, 2)}) as ckpts:
        assert ckpts.latest_step() is None and ckpts.restore_latest(_abstract(state)) is None
        assert ckpts.save(5, state)
        assert ckpts.save(5, state) is False  # the same step again: kept, not rewritten
        ckpts.wait_until_finished()
        got = ckpts.restore(5, _abstract(state, sharding))
    _assert_bitwise(got, state)
    assert isinstance(got["opt"][0], optax.ScaleByAdamState)
    assert all(x.sharding == sharding for x in jax.tree.leaves(got))
    assert sorted(os.listdir(tmp_path / "checkpoints" / "5")) == [
        "_CHECKPOINT_METADATA", "commit_success.txt", "state"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3, "widths": [1, 2]}


def test_async_save_copies_before_returning(tmp_path):
    """The arrays may be deleted (donated to the next step) as soon as save returns."""
    state = _state()
    want = jax.tree.map(np.asarray, state)
    with Checkpoints(str(tmp_path)) as ckpts:
        ckpts.save(1, state)
        for x in jax.tree.leaves(state):
            x.delete()
        ckpts.wait_until_finished()
        _assert_bitwise(ckpts.restore(1, _abstract(want)), want)


def test_keep_last_and_keep_every(tmp_path):
    state = {"w": jnp.zeros(4)}
    with Checkpoints(str(tmp_path), keep_last=2, keep_every_steps=4) as ckpts:
        for step in range(1, 10):
            ckpts.save(step, state)
        ckpts.wait_until_finished()
        assert ckpts.all_steps() == [4, 8, 9] and ckpts.latest_step() == 9
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["4", "8", "9"]


def test_older_step_is_not_saved_unless_forced(tmp_path, caplog):
    state = {"w": jnp.zeros(4)}
    with Checkpoints(str(tmp_path)) as ckpts:
        ckpts.save(10, state)
        with caplog.at_level(logging.WARNING, LOG):
            assert ckpts.save(7, state) is False
        assert "newer step 10" in caplog.text
        assert ckpts.save(7, state, force=True)
        ckpts.wait_until_finished()
        assert ckpts.all_steps() == [7, 10]


def _damage_largest(step_dir):
    """Truncates the largest array data file (tensorstore OCDBT chunks)."""
    with open(_largest_file(os.path.join(step_dir, "state", "ocdbt.process_0", "d")), "r+b") as f:
        f.truncate(10)


def _lose_largest(step_dir):
    os.remove(_largest_file(os.path.join(step_dir, "state", "ocdbt.process_0", "d")))


def _damage_manifest(step_dir):
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _damage_data(step_dir):
    with open(os.path.join(step_dir, "data", "process_0-of-1.json"), "w") as f:
        f.write('{"pipeline": ')


@pytest.mark.parametrize("damage", [_damage_largest, _lose_largest, _damage_manifest, _damage_data])
def test_damaged_latest_falls_back_to_the_previous_step(tmp_path, caplog, damage):
    import grain

    it = iter(grain.MapDataset.range(1000).to_iter_dataset())
    states = {s: _state(s) for s in (1, 2, 3)}
    with Checkpoints(str(tmp_path)) as ckpts:
        for s in (1, 2, 3):
            ckpts.save(s, states[s], it)
            next(it)
    step3 = str(tmp_path / "checkpoints" / "3")
    damage(step3)
    resumed = iter(grain.MapDataset.range(1000).to_iter_dataset())
    with Checkpoints(str(tmp_path)) as ckpts, caplog.at_level(logging.WARNING, LOG):
        step, got = ckpts.restore_latest(_abstract(states[3]), resumed)
        assert step == 2 and next(resumed) == 1
        _assert_bitwise(got, states[2])
        assert f"{step3}: unreadable checkpoint" in caplog.text
        assert "resumed from" in caplog.text and "instead of the unreadable" in caplog.text
        # Moved aside, so the resumed run can save step 3 again.
        assert ckpts.all_steps() == [1, 2] and os.path.isdir(step3 + ".unreadable")
        assert ckpts.save(3, states[3], resumed)


def test_no_readable_checkpoint_is_an_error_naming_the_directory(tmp_path):
    state = _state()
    with Checkpoints(str(tmp_path)) as ckpts:
        ckpts.save(1, state)
    _damage_largest(str(tmp_path / "checkpoints" / "1"))
    with Checkpoints(str(tmp_path)) as ckpts:
        with pytest.raises(checkpointing.CheckpointError,
                           match=f"{tmp_path / 'checkpoints'}: no readable checkpoint"):
            ckpts.restore_latest(_abstract(state))
        with pytest.raises(checkpointing.UnreadableCheckpointError, match="checkpoints/1"):
            ckpts.restore(1, _abstract(state))


def test_another_tree_is_an_error_not_a_fallback(tmp_path):
    with Checkpoints(str(tmp_path)) as ckpts:
        for step in (1, 2):
            ckpts.save(step, {"w": jnp.zeros(4)})
    with Checkpoints(str(tmp_path)) as ckpts:
        for wrong in ({"w": jnp.zeros(5)}, {"v": jnp.zeros(4)}):
            with pytest.raises(checkpointing.CheckpointError,
                               match="checkpoints/2: the saved state does not match"):
                ckpts.restore_latest(_abstract(wrong))
        assert ckpts.all_steps() == [1, 2]


_CRASH = """
import os, sys
import jax.numpy as jnp
from edtalk_jax.checkpointing import Checkpoints
ckpts = Checkpoints(sys.argv[1], keep_last=1)
ckpts.save(1, {"w": jnp.full((1 << 16,), 1.0)})
ckpts.wait_until_finished()
rename = os.rename
def crash_at_commit(src, dst, *a, **k):  # dies where orbax would publish step 2
    if os.path.basename(os.fspath(dst)) == "2":
        os._exit(3)
    return rename(src, dst, *a, **k)
os.rename = crash_at_commit
ckpts.save(2, {"w": jnp.full((1 << 16,), 2.0)})
ckpts.wait_until_finished()
"""


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path):
    done = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    names = os.listdir(tmp_path / "checkpoints")
    assert "1" in names and "2" not in names and any(n.startswith("2.") for n in names)
    with Checkpoints(str(tmp_path), keep_last=1) as ckpts:
        abstract = _abstract({"w": jnp.zeros((1 << 16,))})
        step, state = ckpts.restore_latest(abstract)
        assert step == 1 and ckpts.all_steps() == [1]
        np.testing.assert_array_equal(state["w"], 1.0)


_SHARDED = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp
from edtalk_jax.checkpointing import Checkpoints
mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
w = jax.device_put(jnp.arange(32, dtype=jnp.float32).reshape(8, 4), spec)
assert len(w.addressable_shards) == 4
with Checkpoints(sys.argv[1]) as ckpts:
    ckpts.save(1, {"w": w, "step": jnp.int32(1)})
"""


def test_checkpoint_of_four_devices_restores_on_one(tmp_path):
    done = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    want = {"w": np.arange(32, dtype=np.float32).reshape(8, 4), "step": np.int32(1)}
    with Checkpoints(str(tmp_path)) as ckpts:
        step, got = ckpts.restore_latest(_abstract(want))
    assert step == 1 and len(jax.devices()) == 1
    _assert_bitwise(got, want)
    _assert_bitwise(checkpointing.read_state(str(tmp_path)), want)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    cfg = synthetic.SyntheticConfig(num_speakers=2, clips_per_speaker=2, frames_per_clip=4,
                                    size=64)
    synthetic.write_dataset(cfg, out, workers=1, progress=False)
    return out


def _loader(shards_dir, **kw):
    kw = {"stage": 1, "split": None, "batch_size": 2, "image_size": 64, "seed": 3, **kw}
    return loaders.make_loader(loaders.LoaderConfig(shards_dir, **kw))


def test_data_iterator_resumes_at_the_next_batch(tmp_path, shards_dir):
    reference = [next(it) for it in [_loader(shards_dir)] for _ in range(6)]
    it = _loader(shards_dir)
    for _ in range(2):
        next(it)
    with Checkpoints(str(tmp_path)) as ckpts:
        ckpts.save(2, {"w": jnp.zeros(2)}, it)
        next(it)  # the position was taken when save returned
    resumed = _loader(shards_dir)
    with Checkpoints(str(tmp_path)) as ckpts:
        step, _ = ckpts.restore_latest(_abstract({"w": jnp.zeros(2)}), resumed)
    assert step == 2 and resumed.stats["batches"] == 2
    for want in reference[2:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_data_position_of_another_configuration_is_refused(tmp_path, shards_dir):
    it = _loader(shards_dir)
    next(it)
    with Checkpoints(str(tmp_path)) as ckpts:
        ckpts.save(1, {"w": jnp.zeros(2)}, it)
    with Checkpoints(str(tmp_path)) as ckpts:
        with pytest.raises(loaders.LoaderError, match=r"another data configuration: "
                                                      r"seed: 3 \(checkpoint\) vs 4"):
            ckpts.restore_latest(_abstract({"w": jnp.zeros(2)}), _loader(shards_dir, seed=4))
        assert ckpts.all_steps() == [1]  # a configuration error, not a damaged step
        # worker_count, prefetch and read_threads change only speed: accepted.
        ckpts.restore(1, _abstract({"w": jnp.zeros(2)}),
                      _loader(shards_dir, prefetch=3, read_threads=2))


def test_restoring_data_from_a_checkpoint_saved_without_it(tmp_path, shards_dir):
    with Checkpoints(str(tmp_path)) as ckpts:
        ckpts.save(1, {"w": jnp.zeros(2)})
    with Checkpoints(str(tmp_path)) as ckpts:
        with pytest.raises(checkpointing.CheckpointError, match="holds no data iterator"):
            ckpts.restore_latest(_abstract({"w": jnp.zeros(2)}), _loader(shards_dir))


def test_config_is_written_once(tmp_path, caplog):
    Checkpoints(str(tmp_path), config={"a": 1, "b": 2}).close()
    with caplog.at_level(logging.WARNING, LOG):
        Checkpoints(str(tmp_path), config={"a": 1, "b": 3}).close()
    assert "differs in ['b']" in caplog.text
    assert checkpointing.read_config(str(tmp_path)) == {"a": 1, "b": 2}


@pytest.fixture()
def workdir(tmp_path):
    wd = tmp_path / "run"
    with Checkpoints(str(wd), config={"stage": 2}) as ckpts:
        ckpts.save(3, _state(3))
        ckpts.save(6, _state(6))
    return wd


def test_resolve_each_kind(workdir, tmp_path):
    Source = checkpointing.Source
    assert checkpointing.resolve(str(workdir)) == Source("workdir", str(workdir), 6)
    assert checkpointing.resolve(str(workdir / "checkpoints")) == Source("workdir", str(workdir), 6)
    step = workdir / "checkpoints" / "3"
    assert checkpointing.resolve(str(step)) == Source("step", str(step), 3)
    pt = tmp_path / "EDTalk.pt"
    pt.write_bytes(b"")
    assert checkpointing.resolve(str(pt)) == Source("official", str(pt))
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "model.json").write_text("{}")
    assert checkpointing.resolve(str(converted)) == Source("converted", str(converted))


def test_resolve_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: not found; expected a training workdir"):
        checkpointing.resolve(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"notes.txt: a file that is not .pt/.pth"):
        checkpointing.resolve(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: a directory that is none of"):
        checkpointing.resolve(str(tmp_path / "empty"))
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint yet"):
        checkpointing.resolve(str(tmp_path / "fresh"))


def test_read_state_on_the_host(workdir):
    want = _state(6)
    got = checkpointing.read_state(str(workdir))  # as saved: Adam state as lists and dicts
    assert isinstance(got["params"]["bank"], np.ndarray)
    np.testing.assert_array_equal(got["params"]["bank"], np.asarray(want["params"]["bank"]))
    np.testing.assert_array_equal(got["opt"][0]["mu"]["conv"]["kernel"],
                                  np.asarray(want["opt"][0].mu["conv"]["kernel"]))
    assert got["step"] == 7
    part = checkpointing.read_state(checkpointing.resolve(str(workdir / "checkpoints" / "3")),
                                    {"params": _abstract(want["params"])})
    assert set(part) == {"params"}
    _assert_bitwise(part["params"], jax.tree.map(np.asarray, _state(3)["params"]))
    assert checkpointing.read_config(str(workdir / "checkpoints" / "3")) == {"stage": 2}


def test_read_state_falls_back_and_refuses_other_kinds(workdir, tmp_path, caplog):
    _damage_largest(str(workdir / "checkpoints" / "6"))
    with caplog.at_level(logging.WARNING, LOG):
        got = checkpointing.read_state(str(workdir))
    assert got["step"] == 4 and "checkpoints/6: unreadable checkpoint" in caplog.text
    pt = tmp_path / "x.pth"
    pt.write_bytes(b"")
    with pytest.raises(ValueError, match="holds no train state"):
        checkpointing.read_state(str(pt))
    assert checkpointing.read_config(str(pt)) is None


def _wait_for(predicate, timeout=2.0):
    end = time.time() + timeout
    while not predicate() and time.time() < end:
        time.sleep(0.01)
    return predicate()


def test_preemption_guard_sets_a_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with checkpointing.PreemptionGuard(sigint=True) as guard:
        assert not guard.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: guard.requested) and guard.should_stop(1)
        assert guard.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second request: Ctrl-C twice interrupts
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
