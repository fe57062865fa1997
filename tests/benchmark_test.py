"""launch.benchmark train: one JSON line with the step alone and end to end (tiny stage 1,
32 px, one timed step); the official VGG19 without a file becomes random_vgg19; config
errors are one line naming the field."""

import json
import os
import pathlib
import subprocess
import sys

from configs import stage2
from edtalk_jax import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config=configs/stage1.py:tiny", "--config.model.size=32", "--config.model.channels=(16,16,16,8)",
        "--config.loss.perceptual=0"]


def _launch(*args, timeout=900):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "launch.benchmark", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_benchmark_config_uses_random_vgg_without_a_file():
    config = stage2.get_config()
    config.perceptual.backbone, config.perceptual.path = "vgg19", ""
    config = benchmark.benchmark_config(config)
    assert config.perceptual.backbone == "random_vgg19"
    assert config.eval_every_steps == 0 and config.images_every_steps == 0 and config.data.datasets is None
    config = stage2.get_config()
    config.perceptual.backbone, config.perceptual.path = "vgg19", "/weights/vgg19.pth"
    assert benchmark.benchmark_config(config).perceptual.backbone == "vgg19"  # a file given: kept


def test_train_benchmark_prints_one_json_line(tmp_path):
    proc = _launch("train", *TINY, "--steps=1", "--warmup=0", "--peak_flops=1e12", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["stage"] == "stage1" and r["devices"] == 1 and r["batch"] == 2 and r["size"] == 32
    assert r["s_per_step"] > 0 and r["samples_per_s"] == 2 / r["s_per_step"] and len(r["s_per_step_all"]) == 1
    assert r["flops_per_step"] > 0
    assert r["mfu"] == r["flops_per_step"] / r["s_per_step"] / 1e12  # --peak_flops stands in for the table
    assert r["e2e_s_per_step"] > 0 and r["loader_s_per_batch"] > 0 and r["loss_finite"] is True
    assert (tmp_path / "data").is_dir()  # the synthetic dataset the loader read


def test_config_error_is_one_line(tmp_path):
    proc = _launch("train", *TINY, "--config.batch_size=6", f"--workdir={tmp_path}", timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "benchmark: batch_size=6: the discriminator scores 6 images" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_inference_benchmark_counts_the_work_of_each_mode(capsys):
    """32², the lip-pose model with a fixed pose (Audio2Lip + render) against EDTalk-A
    (the same plus two driving videos encoded per frame, and expression modules): one
    JSON line per (mode, batch), and the mode that does more costs more FLOPs per frame."""
    from launch import benchmark_infer

    benchmark_infer.main(["--modes", "lip_pose_a,edtalk_a", "--batch", "2", "--size", "32", "--width_div", "16",
                          "--repeats", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["mode"], r["batch"]) for r in rows] == [("lip_pose_a", 2), ("edtalk_a", 2)]
    for r in rows:
        assert r["frames_per_s"] > 0 and r["flops_per_frame"] > 0 and len(r["s_per_batch_all"]) == 1
    assert rows[1]["flops_per_frame"] > rows[0]["flops_per_frame"]
