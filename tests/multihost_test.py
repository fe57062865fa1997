"""Two trainer processes joined by jax.distributed on localhost (2 fake CPU devices each)
train a tiny stage 1 and write one checkpoint together; a process whose coordinator
never answers, or a coordinator whose peers never join, exits with an error within its
--initialization_timeout, not a hang; bad multi-host flags are refused with a message."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import fake_devices_env

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 1200  # seconds for the whole two-process run (compiles on 2 shared cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = fake_devices_env(2)
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    return env


def _train(workdir, port, process_id, num_processes=2, extra=(), timeout_s=120):
    return [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny", f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
            f"--process_id={process_id}", f"--initialization_timeout={timeout_s}", "--progress=false", *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Built once by the test, so the two processes never race to write it."""
    from data_pipeline import synthetic
    out = tmp_path_factory.mktemp("data")
    cfg = synthetic.SyntheticConfig(num_speakers=4, clips_per_speaker=2, frames_per_clip=8, size=32, seed=0)
    synthetic.write_dataset(cfg, out, workers=1, progress=False)
    return str(out)


def test_two_processes_train_and_checkpoint(tmp_path, dataset):
    workdir, port = tmp_path / "run", _free_port()
    extra = ["--config.model.size=32", "--config.loss.perceptual=0", "--config.batch_size=4",
             "--config.total_steps=2", "--config.checkpoint_every_steps=2", "--config.log_every_steps=1",
             f"--config.data.shards_dir={dataset}", "--config.data.split="]
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(_train(workdir, port, i, extra=extra), cwd=REPO, env=_env(), stdout=logs[i],
                              stderr=subprocess.STDOUT) for i in range(2)]
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    text = [(tmp_path / f"p{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in text)
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 2 and not final["preempted"]
    assert (workdir / "checkpoints" / "2").is_dir()
    # Both processes' iterator positions are in the checkpoint (orbax writes one per process).
    data_files = list((workdir / "checkpoints" / "2" / "data").rglob("*"))
    assert len([f for f in data_files if f.is_file()]) >= 2, data_files
    # Only process 0 writes the scalar log: each step appears once.
    steps = [json.loads(line)["step"] for line in (workdir / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 2


def test_unreachable_coordinator_fails_with_a_message(tmp_path):
    port = _free_port()  # nobody listens here
    t0 = time.time()
    proc = subprocess.run(_train(tmp_path / "run", port, 1, timeout_s=5), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=180)
    seconds = time.time() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert seconds < 120, f"took {seconds:.0f} s with --initialization_timeout=5"
    assert (f"launch.train: no coordinator answered at --coordinator_address=127.0.0.1:{port} within "
            "--initialization_timeout=5 s") in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_coordinator_whose_peers_never_join_stops(tmp_path):
    """Process 0 of 2 alone: jax's coordination service gives up after the timeout (XLA
    aborts the process with DEADLINE_EXCEEDED; it cannot be caught in Python)."""
    t0 = time.time()
    proc = subprocess.run(_train(tmp_path / "run", _free_port(), 0, timeout_s=5), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=180)
    seconds = time.time() - t0
    assert proc.returncode != 0 and seconds < 120, (proc.returncode, seconds)
    assert "DEADLINE_EXCEEDED" in proc.stdout + proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--coordinator_address=127.0.0.1:1", "--process_id=0"], "give all of --coordinator_address"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"], "--process_id=2 not in [0,"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=1"], "expected host:port"),
])
def test_bad_multihost_flags(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny",
                           f"--workdir={tmp_path / 'run'}", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]
