"""The multi-stage trainer end to end (edtalk_jax/train.py), on CPU at toy sizes.

Every stage runs a few real steps through `train.train_and_evaluate` on a small
synthetic dataset; stages chain as in training (stage 1 -> 2 -> 3, stage 1 -> 4,
official .pt -> fine-tune), so the frozen parameters of each are checked against the
checkpoint they were loaded from. Resume tests compare whole train states bitwise with
an uninterrupted reference run.

Compilation dominates the cost here, so this module (and the `launch.train`
subprocesses it starts) compiles with `jax_disable_most_optimizations` and a persistent
compilation cache shared by the session's test processes: every program compiles once
per session. The dataset and the stage-1 and stage-2 runs are built once per session
too (`shared`: the first pytest-xdist worker to ask builds, the other waits and reads).
Results are compared only between runs with the same settings.
"""

import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import demo
from edtalk_jax import checkpointing, model_io, optim, run_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Smaller than the `tiny` preset: 32^2, four 16-wide levels, and no perceptual loss (its
# VGG costs ~90% of a step here; stage 3 keeps it, so one run covers it).
SMALL = {"model.size": 32, "model.channels": (16, 16, 16, 16), "loss.perceptual": 0.0,
         "loss.cross_perceptual": 0.0}
BASE_STEPS = 8  # the reference stage-1 run; checkpoints every 2 steps
BASE = dict(SMALL, **{"total_steps": BASE_STEPS, "checkpoint_every_steps": 2})
SUBPROCESS_TIMEOUT = 400


# ---- fixtures and helpers --------------------------------------------------------------

def _shared_tmp(tmp_path_factory):
    """A directory every test process of this session sees (pytest-xdist workers too)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """Shared by the session's test processes; EDTALK_TEST_JAX_CACHE keeps one across
    sessions (handy when iterating on these tests)."""
    path = os.environ.get("EDTALK_TEST_JAX_CACHE") or str(_shared_tmp(tmp_path_factory) / "jax_compilation_cache")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module", autouse=True)
def fast_compile(jax_cache):
    """Cheap compiles for this module only; the previous settings come back after it."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    before = (jax.config.read("jax_disable_most_optimizations"), jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_disable_most_optimizations", True)
    jax.config.update("jax_compilation_cache_dir", jax_cache)
    cc.reset_cache()
    yield
    jax.config.update("jax_disable_most_optimizations", before[0])
    jax.config.update("jax_compilation_cache_dir", before[1])
    cc.reset_cache()


def _subprocess_env(jax_cache, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               JAX_COMPILATION_CACHE_DIR=jax_cache, PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def shared(tmp_path_factory, name, build):
    """`build(directory) -> JSON-able dict`, run once per session whichever test process
    asks first (the others wait on a file lock, then read its result): the reference runs
    are shared, not repeated, by the pytest-xdist workers."""
    import fcntl

    root = _shared_tmp(tmp_path_factory)
    directory, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            result = build(str(directory))
            done.write_text(json.dumps(result))
    return json.loads(done.read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The `tiny` preset's synthetic dataset (4 speakers x 2 clips x 10 frames, 64^2)."""
    from data_pipeline import synthetic

    def build(path):
        synthetic.write_dataset(synthetic.SyntheticConfig(num_speakers=4, clips_per_speaker=2, frames_per_clip=10,
                                                          size=64), path, workers=1, progress=False)
        return {"path": path}
    return shared(tmp_path_factory, "data", build)["path"]


def _set(config, overrides):
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def make_config(stage, data_dir, overrides=None):
    """configs/<stage>.py:tiny on `data_dir`, shrunk to SMALL, then `overrides`."""
    config = importlib.import_module(f"configs.{stage}").get_config("tiny")
    return _set(config, dict(SMALL, **{"data.shards_dir": data_dir}, **(overrides or {})))


def _flat(tree):
    return {optim.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(fa, fb, what="state"):
    """Two flat trees (leaf name -> array) hold the same leaves, bitwise."""
    assert fa.keys() == fb.keys(), f"{what}: leaves differ: {sorted(set(fa) ^ set(fb))[:5]}"
    bad = [k for k in fa if fa[k].dtype != fb[k].dtype or not np.array_equal(fa[k], fb[k])]
    assert not bad, f"{what}: {len(bad)} of {len(fa)} leaves differ, e.g. {bad[:5]}"


def _select(flat, pattern, exclude=None):
    keys = [k for k in flat if re.search(pattern, k) and not (exclude and re.search(exclude, k))]
    assert keys, f"no parameter matches {pattern}"
    return keys


def assert_equal_at(after, before, pattern, exclude=None, prefix=""):
    """Every leaf of `after` matching `pattern` equals `before[prefix-stripped name]`."""
    keys = _select(after, pattern, exclude)
    bad = [k for k in keys if not np.array_equal(after[k], before[k[len(prefix):]])]
    assert not bad, f"{len(bad)} of {len(keys)} leaves matching {pattern} changed, e.g. {bad[:4]}"
    return keys


def assert_finite_losses(result):
    m = result["metrics"]
    losses = {k: v for k, v in m.items() if k.startswith("loss/")}
    assert "loss/g_total" in losses, sorted(m)
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert np.isfinite(m["opt/g_grad_norm"]) and m["opt/g_grad_norm"] > 0


@contextlib.contextmanager
def count_compiles():
    """Counts backend compilations per jitted function name ("jit(train_step)", ...)."""
    counts = {}

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            counts[kw.get("fun_name")] = counts.get(kw.get("fun_name"), 0) + 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        from jax._src import monitoring
        monitoring.unregister_event_duration_listener(listener)


def run(config, workdir):
    return train.train_and_evaluate(config, str(workdir), progress=False)


def _json_result(result):
    return {k: v for k, v in result.items() if k != "_run"}


def saved_state(workdir):
    """The train state of a workdir's newest checkpoint, as numpy (leaf name -> array)."""
    return _flat(checkpointing.read_state(str(workdir)))


def saved_params(workdir):
    return _flat(checkpointing.read_state(str(workdir))["params"])


@pytest.fixture(scope="module")
def stage1(dataset, tmp_path_factory):
    """The reference run: stage 1 from scratch, BASE_STEPS steps, evaluated every 4."""
    def build(workdir):
        config = make_config("stage1", dataset, dict(BASE, eval_every_steps=4, eval_batches=1))
        with count_compiles() as compiles:
            result = _json_result(run(config, workdir))
        return dict(result, compiles=compiles)
    return shared(tmp_path_factory, "stage1", build)


STAGE2 = {"total_steps": 2}


@pytest.fixture(scope="module")
def stage2(stage1, dataset, tmp_path_factory):
    """Stage 2 from stage 1's workdir, 2 steps."""
    def build(workdir):
        return _json_result(run(make_config("stage2", dataset, dict(STAGE2, init_from=stage1["workdir"])), workdir))
    return shared(tmp_path_factory, "stage2", build)


# ---- every stage -----------------------------------------------------------------------

def test_stage1_trains_logs_and_compiles_the_step_once(stage1):
    assert stage1["step"] == BASE_STEPS and not stage1["preempted"]
    assert_finite_losses(stage1)
    m = stage1["metrics"]
    assert np.isfinite(m["eval/g_total"]) and np.isfinite(m["eval/psnr"])  # evaluation ran
    # QR bases (the stage configs' mode): orthogonality logged, never a loss term
    assert "bank/orthogonality_error" in m and "loss/ortho" not in m
    # compiled ahead of time once, evaluation compiled once: no recompilation on later
    # steps (eval at steps 4 and 8, checkpoints every 2)
    compiles = stage1["compiles"]
    assert compiles.get("jit(train_step)") == 1, compiles
    assert compiles.get("jit(eval_step)") == 1, compiles
    lines = [json.loads(x) for x in open(os.path.join(stage1["workdir"], "tensorboard", "metrics.jsonl"))]
    steps = [x["step"] for x in lines if "loss/g_total" in x]
    assert steps == [2, 4, 6, 8]  # log_every_steps=2
    ckpts = sorted(int(n) for n in os.listdir(os.path.join(stage1["workdir"], "checkpoints")) if n.isdigit())
    assert ckpts == [4, 6, 8]  # keep_checkpoints=3


def test_stage2_starts_from_stage1_keeping_init_keep(stage1, stage2, dataset, tmp_path):
    """init_keep of configs/stage2.py: encoder, fc, decoder and D from stage 1; the lip and
    pose heads and the bank start fresh (the initial state of a Run set up like stage2's)."""
    config = make_config("stage2", dataset, dict(STAGE2, init_from=stage1["workdir"]))
    initial = _flat(train.Run(config, str(tmp_path), progress=False).state.params)
    source = saved_params(stage1["workdir"])
    assert initial.keys() == source.keys()
    assert_equal_at(initial, source, r"^gen/(enc|fc|dec)/")
    assert_equal_at(initial, source, r"^dis/")
    for fresh in (r"^gen/lip_fc/", r"^gen/pose_fc/", r"^gen/bank/"):
        keys = _select(initial, fresh)
        assert not any(np.array_equal(initial[k], source[k]) for k in keys), fresh
    assert stage2["step"] == 2
    assert_finite_losses(stage2)
    m = stage2["metrics"]
    assert all(np.isfinite(m[f"loss/{k}"]) for k in ("cross_l1", "latent_lip", "latent_pose"))


@pytest.mark.slow
def test_stage3_from_stage2_freezes_lip_pose_parts(stage2, dataset, tmp_path):
    """lip_pose -> generator: the expression head, bank and EEMs learn; the rest stays
    bitwise as stage 2 left it."""
    config = make_config("stage3", dataset, {"init_from": stage2["workdir"], "total_steps": 2,
                                             "checkpoint_every_steps": 1, "loss.perceptual": 1.0})
    result = run(config, tmp_path)
    assert_finite_losses(result)
    assert np.isfinite(result["metrics"]["loss/perceptual"])
    source = saved_params(stage2["workdir"])
    after = _flat(result["_run"].final_state.params)
    assert_equal_at(after, source, r"^gen/(enc|fc|lip_fc|pose_fc)/")
    assert_equal_at(after, source, r"^gen/bank/lipnonlip$")
    assert_equal_at(after, source, r"^gen/dec/", exclude=r"^gen/dec/eem_")
    step1 = saved_params(tmp_path / "checkpoints" / "1")
    for learning in (r"^gen/exp_fc/", r"^gen/bank/exp$", r"^gen/dec/eem_"):
        keys = _select(after, learning)
        assert any(not np.array_equal(after[k], step1[k]) for k in keys), learning


@pytest.mark.slow
def test_stage4_computes_targets_and_trains_only_the_audio_mapping(stage1, dataset, parity_dir, samples_dir,
                                                                   tmp_path):
    """From stage 1's generator and D and the official Audio2Lip.pt: the lip targets are
    computed (none stored), the whole generator, D (train_discriminator=False) and the
    audio encoder stay bitwise as loaded; the mapping learns."""
    from data_pipeline.loaders import targets

    data = str(tmp_path / "data")
    shutil.copytree(dataset, data)
    a2l_pt = str(parity_dir / "audio2lip_seed0.pt")
    config = make_config("stage4", data, {"init_from": stage1["workdir"], "audio2lip.init": a2l_pt,
                                          "total_steps": 2, "audio2lip.target": "offset"})
    assert config.train_discriminator is False
    result = run(config, tmp_path / "run")
    assert_finite_losses(result)
    m = result["metrics"]
    assert all(np.isfinite(m[f"loss/{k}"]) for k in ("coeff", "smooth", "l1", "mouth_l1", "gan"))
    assert "gan/d_loss" not in m  # D only scores
    assert os.path.exists(os.path.join(targets.targets_dir(data, config.data.targets), "targets.json"))
    # the predict-the-mean baseline: the training split's mean lip target
    from data_pipeline.records import directory
    store, stored = directory.open_clips(data, "train"), targets.load_targets(data, config.data.targets)
    lips = np.concatenate([stored.get(store.global_index(i))[0] for i in range(len(store))])
    np.testing.assert_allclose(result["_run"].consts["lip_mean"], lips.mean(axis=0), rtol=1e-5, atol=1e-7)
    # launch.compute_targets from the same training workdir gives the same targets
    from launch import compute_targets
    compute_targets.main(["--shards", data, "--checkpoint", stage1["workdir"], "--name", "cli", "--batch", "16"])
    cli = targets.load_targets(data, "cli")
    for i in range(len(store)):
        g = store.global_index(i)
        for a, b in zip(cli.get(g), stored.get(g)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    after = _flat(result["_run"].final_state.params)
    source = saved_params(stage1["workdir"])
    assert_equal_at(after, source, r"^gen/")
    assert_equal_at(after, source, r"^dis/")
    official = _flat({"audio2lip": model_io.load_any(a2l_pt)[2]["params"]})
    assert_equal_at(after, official, r"^audio2lip/audio_encoder_")
    mapping = _select(after, r"^audio2lip/", exclude=r"^audio2lip/audio_encoder_")
    assert any(not np.array_equal(after[k], official[k]) for k in mapping)

    # launch.infer from the run: its own Audio2Lip, read as an offset from the source's lips
    import soundfile
    from data_pipeline.preprocess import audio as audio_lib
    from edtalk_jax import infer
    models = infer.load_models(str(tmp_path / "run"), need_audio2lip=True)
    assert models.audio2lip_target == "offset"
    wav = str(tmp_path / "speech.wav")
    soundfile.write(wav, audio_lib.load_audio(samples_dir / "mouth_source.wav")[:6 * 640], 16000)
    photo = str(samples_dir / "identity_source.jpg")
    renderer = infer.Renderer(models, 4)
    job = infer.prepare(renderer, infer.Inputs(photo, audio=wav), infer.Options(crop="none", progress=False))
    own = renderer.source(infer.crop_image(infer.read_image(photo), photo, models.size, infer.Options(crop="none")))
    expected = renderer.audio_lips(audio_lib.load_audio(wav), smooth=True) + np.asarray(own["alphas"]["lip"])
    np.testing.assert_allclose(job.alphas["lip"], expected, atol=1e-6)


@pytest.mark.slow
def test_finetune_from_official_lip_pose_pt_trains_only_the_decoder(dataset, parity_dir, tmp_path):
    """The model shape comes from the .pt (64^2, widths / 8, 512-d latents); everything
    but the decoder stays bitwise as loaded."""
    pt = str(parity_dir / "edtalk_lip_pose_s64_w8_seed0.pt")
    shape_from_file = {f"model.{k}": None for k in ("size", "width_div", "channels", "style_dim", "eem_hidden")}
    config = make_config("finetune", dataset, dict(shape_from_file, init_from=pt, total_steps=2))
    result = run(config, tmp_path)
    assert_finite_losses(result)
    model = result["_run"].model_cfg
    assert (model["size"], model["style_dim"], model["lip_dim"], model["pose_dim"]) == (64, 512, 20, 6)
    official = _flat({"gen": model_io.load_any(pt)[2]["params"]})
    after = _flat(result["_run"].final_state.params)
    frozen = assert_equal_at(after, official, r"^gen/", exclude=r"^gen/dec/")
    assert len(frozen) > 10
    decoder = _select(after, r"^gen/dec/")
    assert any(not np.array_equal(after[k], official[k]) for k in decoder)


# ---- resume ----------------------------------------------------------------------------

def test_stop_and_resume_equals_one_run_bitwise(stage1, dataset, tmp_path):
    """BASE_STEPS/2 steps, then a second call in the same workdir up to BASE_STEPS: the
    same parameters, optimizer states and data position as the reference run."""
    config = lambda steps: make_config("stage1", dataset, dict(BASE, total_steps=steps))
    first = run(config(BASE_STEPS // 2), tmp_path)
    assert first["step"] == BASE_STEPS // 2
    second = run(config(BASE_STEPS), tmp_path)
    assert second["_run"].start_step == BASE_STEPS // 2 and second["step"] == BASE_STEPS
    assert_trees_equal(saved_state(tmp_path), saved_state(stage1["workdir"]))
    assert _data_position(tmp_path) == _data_position(stage1["workdir"])


def _data_position(workdir, step=BASE_STEPS):
    with open(os.path.join(workdir, "checkpoints", str(step), "data", "process_0-of-1.json")) as f:
        return json.load(f)


def _train_cli(workdir, dataset, steps=BASE_STEPS):
    return [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny", f"--workdir={workdir}",
            f"--config.data.shards_dir={dataset}", f"--config.model.size={SMALL['model.size']}",
            f"--config.model.channels={SMALL['model.channels']}", "--config.loss.perceptual=0.0",
            "--config.loss.cross_perceptual=0.0", f"--config.total_steps={steps}",
            "--config.checkpoint_every_steps=2", "--progress=false"]


def _committed_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _start(cmd, env, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _wait_for_checkpoint_after(proc, workdir, after, log_path):
    """Polls until a committed step directory > `after` exists (orbax renames its tmp
    directory only once the step is complete); -> that step."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while time.monotonic() < deadline:
        steps = [s for s in _committed_steps(workdir) if s > after]
        if steps:
            return steps[0]
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before a checkpoint after step {after}:\n"
                        + open(log_path).read()[-3000:])
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint after step {after} within {SUBPROCESS_TIMEOUT} s")


def _final_metrics(workdir):
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_kill_and_sigterm_then_resume_equal_an_uninterrupted_run(stage1, dataset, jax_cache, tmp_path):
    """`launch.train` SIGKILLed after its first checkpoint, rerun and SIGTERMed (it saves
    and exits 0, preempted), rerun to the end: bitwise the reference run's final state."""
    workdir, env = str(tmp_path / "w"), _subprocess_env(jax_cache)
    cmd = _train_cli(workdir, dataset)

    log1 = str(tmp_path / "killed.log")
    p1 = _start(cmd, env, log1)
    _wait_for_checkpoint_after(p1, workdir, 0, log1)
    p1.send_signal(signal.SIGKILL)
    assert p1.wait(60) == -signal.SIGKILL
    killed_at = _committed_steps(workdir)[-1]
    assert killed_at < BASE_STEPS and not os.path.exists(os.path.join(workdir, "final_metrics.json"))

    log2 = str(tmp_path / "preempted.log")
    p2 = _start(cmd, env, log2)
    _wait_for_checkpoint_after(p2, workdir, killed_at, log2)
    p2.send_signal(signal.SIGTERM)
    assert p2.wait(SUBPROCESS_TIMEOUT) == 0, open(log2).read()[-3000:]
    preempted = _final_metrics(workdir)
    assert preempted["preempted"] and killed_at < preempted["step"] < BASE_STEPS, preempted
    assert _committed_steps(workdir)[-1] == preempted["step"]  # saved where it stopped
    assert "preemption requested" in open(log2).read()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    final = _final_metrics(workdir)
    assert final["step"] == BASE_STEPS and not final["preempted"]
    assert_trees_equal(saved_state(workdir), saved_state(stage1["workdir"]))
    assert _data_position(workdir) == _data_position(stage1["workdir"])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(stage1, dataset, tmp_path, caplog):
    workdir = tmp_path / "w"
    shutil.copytree(stage1["workdir"], workdir)
    latest = workdir / "checkpoints" / str(BASE_STEPS)
    files = [p for p in (latest / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    biggest = max(files, key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        result = run(make_config("stage1", dataset, BASE), workdir)
    assert result["_run"].start_step == BASE_STEPS - 2
    assert str(latest) in caplog.text and "unreadable" in caplog.text
    assert "resumed from" in caplog.text and str(workdir / "checkpoints" / str(BASE_STEPS - 2)) in caplog.text
    # the damaged step was moved aside and redone: the same state as before the damage
    assert os.path.isdir(str(latest) + checkpointing.UNREADABLE_SUFFIX)
    assert_trees_equal(saved_state(workdir), saved_state(stage1["workdir"]))


# ---- the demo --------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_stage1_lowers_its_loss(dataset, tmp_path):
    """configs/demo.py (free bank mode, LPIPS VGG16): stage 1 for a few dozen steps on the
    tiny dataset; the logged total loss falls, and the orthogonality term is a loss term."""
    steps = 16
    config = demo.get_config(f"steps={steps}").stages.stage1
    _set(config, {"data.shards_dir": dataset, "log_every_steps": 1, "eval_every_steps": 0,
                  "images_every_steps": 0, "checkpoint_every_steps": steps})
    result = run(config, tmp_path)
    assert_finite_losses(result)
    assert "loss/ortho" in result["metrics"] and "bank/orthogonality_error" in result["metrics"]
    rows = [json.loads(x) for x in open(tmp_path / "tensorboard" / "metrics.jsonl")]
    loss = [r["loss/g_total"] for r in rows if "loss/g_total" in r]
    assert len(loss) == steps
    early, late = np.mean(loss[:4]), np.mean(loss[-4:])
    assert late < 0.85 * early, loss


# ---- bad input -------------------------------------------------------------------------

def _fails(config, workdir, *names):
    """train_and_evaluate raises ConfigError/ValueError naming every one of `names`, and
    compiles no step on the way."""
    with count_compiles() as compiles, pytest.raises((run_config.ConfigError, ValueError)) as e:
        run(config, workdir)
    for name in names:
        assert str(name) in str(e.value), (name, str(e.value))
    assert not any("step" in str(k) for k in compiles), compiles
    return str(e.value)


def test_bad_fields_fail_before_compiling(dataset, tmp_path):
    _fails(make_config("stage1", dataset, {"stage": "stage9"}), tmp_path / "a", "stage=", "stage9")
    _fails(make_config("stage1", dataset, {"model.size": 48, "model.channels": None}), tmp_path / "b",
           "model.size=48", "power of two")
    _fails(make_config("stage2", dataset, {"loss.latent_reduction": "median"}), tmp_path / "c",
           "loss.latent_reduction", "median")
    # more bases (20 + 6 + 10) than the latent width: QR would return too few
    _fails(make_config("stage3", dataset, {"model.style_dim": 32}), tmp_path / "d", "model.style_dim=32", "36")
    # D's minibatch-stddev groups of 4: stage 4 scores B x T frames per call
    _fails(make_config("stage4", dataset, {"data.T": 5}), tmp_path / "e", "batch_size=2 x data.T=5")
    _fails(make_config("stage1", dataset, {"batch_size": 6}), tmp_path / "f", "batch_size=6")
    with pytest.raises(ValueError, match=r"unknown field 'model\.sizee'"):
        importlib.import_module("configs.stage1").get_config("tiny,sizee=32")
    with pytest.raises(ValueError, match=r"unknown field 'loss\.l2'"):
        importlib.import_module("configs.stage1").get_config("tiny,loss.l2=1.0")


def test_cli_rejects_an_unknown_field(tmp_path):
    cmd = [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny",
           f"--workdir={tmp_path}", "--config.model.sizee=32"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "sizee" in done.stderr, done.stderr[-2000:]


def test_init_from_missing_or_of_the_wrong_kind_is_named(dataset, parity_dir, tmp_path):
    missing = str(tmp_path / "nowhere.pt")
    _fails(make_config("stage1", dataset, {"init_from": missing}), tmp_path / "a", "init_from", missing)
    a2l = str(parity_dir / "audio2lip_seed0.pt")
    _fails(make_config("stage1", dataset, {"init_from": a2l}), tmp_path / "b", "init_from", a2l, "audio2lip")
    dis = str(parity_dir / "dis_s64_w8_seed0.pt")
    _fails(make_config("stage4", dataset, {"init_from": dis}), tmp_path / "c", dis, "discriminator")
    # a shape field that contradicts the checkpoint: both values named
    pt = str(parity_dir / "edtalk_lip_pose_s64_w8_seed0.pt")
    shape = {"model.width_div": None, "model.channels": None, "model.style_dim": None, "model.size": 32}
    _fails(make_config("finetune", dataset, dict(shape, init_from=pt)), tmp_path / "d",
           "model.size=32", pt, "size=64")


def test_missing_or_empty_dataset_is_named(tmp_path):
    missing = str(tmp_path / "no_data")
    _fails(make_config("stage1", missing), tmp_path / "a", "data.shards_dir", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(make_config("stage1", str(empty)), tmp_path / "b", "data.shards_dir", str(empty), "empty")


def test_batch_not_divisible_by_the_mesh_names_batch_size(dataset, jax_cache, tmp_path):
    cmd = _train_cli(str(tmp_path / "w"), dataset) + ["--config.batch_size=3"]
    env = _subprocess_env(jax_cache, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode != 0
    assert "batch_size=3" in done.stderr and "2 devices" in done.stderr, done.stderr[-2000:]
    assert "Compiling" not in done.stderr


@pytest.mark.slow
def test_demo_curriculum_runs_every_stage_and_writes_the_report(tmp_path):
    """The README's main job at 2 steps per stage on a small synthetic dataset: stage 1 ->
    4 each in WORKDIR/<stage>/ from the previous one, report.json with every field, a
    sample grid per stage; a rerun finds every stage done and trains nothing."""
    from edtalk_jax import curriculum

    config = demo.get_config("steps=2")
    config.synthetic.update(speakers=8, clips_per_speaker=2, frames_per_clip=12)
    for stage in config.stages.values():
        stage.eval_batches = 1
    report = curriculum.run(config, str(tmp_path), progress=False)
    assert list(report["stages"]) == ["stage1", "stage2", "stage3", "stage4"]
    with open(tmp_path / "report.json") as f:
        assert json.load(f) == report
    for name, r in report["stages"].items():
        assert r["steps"] == 2 and r["seconds"] > 0
        assert os.listdir(r["samples"]) == ["0000002.png"], name
        keys = (("lip_error", "baseline_lip_error", "baseline_identity_lip_error", "lip_motion_error",
                 "baseline_lip_motion_error")
                if name == "stage4" else ("psnr", "baseline_psnr", "orthogonality_error"))
        assert all(np.isfinite(r[k]) for k in keys), (name, r)
        assert r["beats_baseline"] == (r["lip_error"] < r["baseline_lip_error"] and r["mouth_r2"]["audio"] > 0
                                       if name == "stage4"
                                       else r["psnr"] > r["baseline_psnr"])
    mouth = report["stages"]["stage4"]["mouth_r2"]  # the mouth read from the audio-driven lips
    assert mouth["copy"] == 0.0 and all(0 <= mouth[k] <= 1 for k in ("audio", "video")), mouth
    assert "psnr_without_exp" in report["stages"]["stage3"] and "cross_psnr" in report["stages"]["stage2"]
    for name in ("stage1", "stage2", "stage3"):  # the probe matrix on the held-out speakers
        matrix = report["stages"][name]["disentanglement"]
        assert set(matrix) == {"mouth", "pose", "expression"}, name
        assert os.path.getsize(tmp_path / name / "disentanglement.png") > 0
        assert all(v is None or 0 <= v <= 1 for row in matrix.values() for v in row.values()), matrix
    assert matrix["pose"]["exp"] is not None and "disentanglement" not in report["stages"]["stage4"]
    assert report["all_beat_baselines"] == all(r["beats_baseline"] for r in report["stages"].values())
    # The demo video: the held-out clip's first frame spoken by its audio, as long as the clip.
    from data_pipeline.preprocess import video_io
    video = report["demo_video"]
    assert video["mode"] == "lip-pose-A" and video["frames"] == 12 and video["audio"]
    assert len(video_io.read_frames(video["out"])) == 12 and video_io.probe(video["out"]).has_audio
    assert video["command"].startswith("python -m launch.infer --checkpoint ")
    with open(tmp_path / "stage3" / "config.json") as f:  # each stage starts from the previous one
        assert json.load(f)["init_from"] == str(tmp_path / "stage2")
    with count_compiles() as compiles:
        assert curriculum.run(config, str(tmp_path), progress=False) == report
    assert not any("step" in str(k) for k in compiles), compiles
