"""Sweeps: expansion into named runs with their overrides, commands that launch.train's
flags read back to the same config, and a tiny two-run sweep run end to end."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from edtalk_jax import sweep as sw

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = sorted(p for p in (REPO / "configs" / "sweeps").glob("*.py") if p.name != "__init__.py")


def test_grid_tied_product():
    assert sw.grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert sw.tied(("a", "b"), [1, 2]) == [{"a": 1, "b": 1}, {"a": 2, "b": 2}]
    assert sw.product([{"a": 1}, {"a": 2}], [{"b": 3}]) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_run_names():
    assert sw.run_name({"model.lip_dim": 10, "model.pose_dim": 6}) == "lip_dim=10_pose_dim=6"
    assert sw.run_name({"optimizer.g.lr": 1e-3, "optimizer.d.lr": 2e-3}) == "optimizer.g.lr=0.001_optimizer.d.lr=0.002"
    assert sw.run_name({"perceptual.scales": (1.0, 0.5)}) == "scales=1.0,0.5"  # shell-safe: no brackets


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_expands(path, tmp_path):
    spec = sw.load(str(path))
    runs = sw.expand(spec, str(tmp_path), {"total_steps": "10"})
    assert len({r.name for r in runs}) == len(runs) == len(spec.runs) >= 2
    for r in runs:
        assert r.workdir == os.path.join(str(tmp_path), r.name)
        assert r.config.total_steps == 10
        for key, value in r.overrides.items():
            node = r.config
            for part in key.split("."):
                node = node[part]
            assert node == value, (r.name, key)


EXPECTED = {  # sweep: (base config, run names)
    "bank_sizes": ("configs/stage2.py", [f"lip_dim={a}_pose_dim={b}" for a in (10, 20, 40) for b in (3, 6, 12)]),
    "exp_bank_sizes": ("configs/stage3.py", ["exp_dim=5", "exp_dim=10", "exp_dim=20"]),
    "latent_loss": ("configs/stage2.py", [f"latent_reduction={r}_latent_lip={w}_latent_pose={w}"
                                          for r in ("mean", "sum") for w in (0.5, 1.0, 2.0)]),
    "orthogonality": ("configs/stage2.py", ["bank_mode=qr"] + [f"bank_mode=free_ortho={w}" for w in (0.1, 1.0, 10.0)]),
    "perceptual": ("configs/stage1.py", ["backbone=vgg19", "backbone=lpips_vgg16", "backbone=random_vgg19"]),
}


def test_sweeps_expand_into_the_expected_runs(tmp_path):
    assert sorted(EXPECTED) == [p.stem for p in SWEEPS]
    for stem, (base_file, names) in EXPECTED.items():
        spec = sw.load(str(REPO / "configs" / "sweeps" / f"{stem}.py"))
        assert spec.base == base_file
        runs = {r.name: r for r in sw.expand(spec, str(tmp_path / stem))}
        assert list(runs) == names, stem
    banks = sw.expand(sw.load(str(REPO / "configs" / "sweeps" / "bank_sizes.py")), str(tmp_path))
    assert {(r.config.model.lip_dim, r.config.model.pose_dim) for r in banks} == {
        (a, b) for a in (10, 20, 40) for b in (3, 6, 12)}
    assert all(r.config.stage == "stage2" and r.config.model.bank_mode == "qr" for r in banks)
    ortho = {r.name: r.config for r in sw.expand(sw.load(str(REPO / "configs" / "sweeps" / "orthogonality.py")),
                                                 str(tmp_path))}
    assert ortho["bank_mode=qr"].model.bank_mode == "qr"
    assert ortho["bank_mode=free_ortho=10.0"].model.bank_mode == "free"
    assert ortho["bank_mode=free_ortho=10.0"].loss.ortho == 10.0
    latent = {r.name: r.config for r in sw.expand(sw.load(str(REPO / "configs" / "sweeps" / "latent_loss.py")),
                                                  str(tmp_path))}
    c = latent["latent_reduction=sum_latent_lip=2.0_latent_pose=2.0"]
    assert (c.loss.latent_reduction, c.loss.latent_lip, c.loss.latent_pose) == ("sum", 2.0, 2.0)
    vgg = sw.expand(sw.load(str(REPO / "configs" / "sweeps" / "perceptual.py")), str(tmp_path))
    assert [r.config.perceptual.backbone for r in vgg] == ["vgg19", "lpips_vgg16", "random_vgg19"]


def test_print_mode_writes_one_command_per_run(tmp_path):
    out = tmp_path / "banks"
    proc = subprocess.run([sys.executable, "-m", "launch.sweep", "--sweep=configs/sweeps/bank_sizes.py",
                           f"--workdir={out}", "--mode=print", "--config.data.shards_dir=/data/hdtf"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 9 and all(line.startswith("python -m launch.train --config=configs/stage2.py ") for line in lines)
    assert f"--workdir={out}/lip_dim=40_pose_dim=12 --config.data.shards_dir=/data/hdtf " \
           "--config.model.lip_dim=40 --config.model.pose_dim=12" in lines[-1]
    assert (out / "commands.sh").read_text().endswith(proc.stdout)
    saved = json.loads((out / "lip_dim=10_pose_dim=3" / "sweep_config.json").read_text())
    assert saved["overrides"] == {"model.lip_dim": 10, "model.pose_dim": 3}
    assert saved["config"]["model"]["lip_dim"] == 10 and saved["config"]["data"]["shards_dir"] == "/data/hdtf"
    assert not list(out.rglob("final_metrics.json"))  # nothing ran
    # summary mode before the scheduler's jobs ran: every run is missing
    proc = subprocess.run([sys.executable, "-m", "launch.sweep", "--sweep=configs/sweeps/bank_sizes.py",
                           f"--workdir={out}", "--mode=summary", "--config.data.shards_dir=/data/hdtf"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("| missing |") == 9, proc.stdout + proc.stderr[-2000:]


def _parse_like_launch_train(command, monkeypatch):
    """The config and workdir launch.train would get from `command` (its own flags)."""
    import launch.train  # noqa: F401  (defines --config, --workdir, ... on absl's FLAGS)

    argv = ["launch.train"] + command[3:]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags finds the --config.* overrides here
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    try:
        return flags.FLAGS.config, flags.FLAGS.workdir
    finally:
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # defined per parse
            delattr(flags.FLAGS, name)


def test_commands_parse_back_through_launch_train(tmp_path, monkeypatch):
    spec = sw.load(str(REPO / "configs" / "sweeps" / "latent_loss.py"), base_arg="tiny")
    runs = sw.expand(spec, str(tmp_path), {"total_steps": "3", "data.shards_dir": "/data/x"})
    text = sw.write_plan(spec, runs, str(tmp_path))
    assert text.count("python -m launch.train") == len(runs) == 6
    monkeypatch.chdir(REPO)
    for r in runs:
        assert r.command[:3] == ["python", "-m", "launch.train"]
        config, workdir = _parse_like_launch_train(r.command, monkeypatch)
        assert workdir == r.workdir
        assert json.loads(config.to_json_best_effort()) == json.loads(r.config.to_json_best_effort()), r.name
        saved = json.loads((tmp_path / r.name / "sweep_config.json").read_text())
        assert saved["overrides"] == r.overrides and saved["command"] == r.shell()


def test_expansion_errors(tmp_path):
    spec = sw.load(str(REPO / "configs" / "sweeps" / "bank_sizes.py"))
    with pytest.raises(sw.SweepError, match="also swept"):
        sw.expand(spec, str(tmp_path), {"model.lip_dim": "7"})
    with pytest.raises(sw.SweepError, match="unknown config field 'loss.nope'"):
        sw.expand(spec, str(tmp_path), {"loss.nope": "1"})
    with pytest.raises(sw.SweepError, match=r"run 0 \(lip_dim=10_pose_dim=3\): model.style_dim=8"):
        sw.expand(spec, str(tmp_path), {"model.style_dim": "8"})  # 10 + 3 bases do not fit in 8
    bad = tmp_path / "dup.py"
    bad.write_text('BASE = "configs/stage1.py"\nRUNS = [{"loss.l1": 1.0}, {"loss.l1": 1.0}]\n')
    with pytest.raises(sw.SweepError, match="both named"):
        sw.expand(sw.load(str(bad)), str(tmp_path))
    with pytest.raises(sw.SweepError, match="defines no RUNS"):
        (tmp_path / "none.py").write_text('BASE = "configs/stage1.py"\n')
        sw.load(str(tmp_path / "none.py"))


def test_tiny_sweep_runs_and_summarises(tmp_path):
    sweep_file = tmp_path / "two.py"
    sweep_file.write_text('BASE = "configs/stage1.py"\nRUNS = [{"loss.l1": 1.0}, {"loss.l1": 0.5}]\n')
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "launch.sweep", f"--sweep={sweep_file}", f"--workdir={out}", "--base_arg=tiny",
           "--config.total_steps=1", "--config.model.size=32", "--config.loss.perceptual=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["runs"]}
    assert set(rows) == {"l1=1.0", "l1=0.5"}
    for row in rows.values():
        assert row["status"] == "done" and row["step"] == 1
        assert "loss/g_total" in row["metrics"]
    # The weight changed only the weighted total, not the per-term loss.
    assert rows["l1=1.0"]["metrics"]["loss/l1"] == pytest.approx(rows["l1=0.5"]["metrics"]["loss/l1"])
    md = (out / "summary.md").read_text()
    assert "| l1=0.5 | done | 1 | 0.5 |" in md and md in proc.stdout
    # Run again: both are finished, so nothing trains.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 2
