"""Hyper-parameter sweeps: a base config and a list of overrides, expanded into runs of
`launch.train`, each in its own workdir, then one summary table.

A sweep file (configs/sweeps/*.py) defines

    BASE = "configs/stage2.py"      # the stage config (path from the repository root)
    BASE_ARG = ""                   # its argument (presets, key=value); --base_arg replaces it
    RUNS = product(grid({"model.lip_dim": [10, 20]}), [{"loss.ortho": 1.0}])   # override dicts

Override keys are dotted config fields. A run is named from its overrides
(`lip_dim=10_pose_dim=6`: the last key component, the full key where two would clash)
and lives in WORKDIR/<name>/ with `sweep_config.json` (name, overrides, command, the
resolved config). Its command is a `python -m launch.train` line run from the repository
root, so `print` mode feeds a cluster scheduler and `run` mode executes the same lines
here one after the other (launch.train resumes an interrupted run from its checkpoints;
a finished run is skipped). The summary reads each WORKDIR/<name>/final_metrics.json.
"""

import dataclasses
import importlib.util
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
# Metrics shown in the summary table when a run has them (summary.json keeps them all).
SUMMARY_METRICS = ("eval/psnr", "train/psnr", "eval/g_total", "loss/g_total", "loss/l1", "loss/perceptual",
                   "bank/orthogonality_error", "perf/s_per_step")


class SweepError(ValueError):
    """A sweep definition or override that cannot be expanded."""


# ---- building the list of runs --------------------------------------------------------------

def grid(axes: Mapping[str, Sequence[Any]]) -> List[Dict[str, Any]]:
    """Every combination of `{key: values}` (the first key varies slowest)."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def tied(keys: Sequence[str], values: Sequence[Any]) -> List[Dict[str, Any]]:
    """One run per value, every key set to it (e.g. both latent loss weights)."""
    return [{k: v for k in keys} for v in values]


def product(*groups: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The merged dicts of every combination of one entry per group."""
    out = []
    for combo in itertools.product(*[list(g) for g in groups]):
        merged: Dict[str, Any] = {}
        for d in combo:
            merged.update(d)
        out.append(merged)
    return out


@dataclasses.dataclass
class Sweep:
    path: str  # the sweep file
    base: str  # config file, relative to the repository root (or absolute)
    base_arg: str
    runs: List[Dict[str, Any]]


def load(path: str, base_arg: Optional[str] = None) -> Sweep:
    """Reads a sweep file; `base_arg` (when not None) replaces its BASE_ARG."""
    spec = importlib.util.spec_from_file_location(f"sweep_{pathlib.Path(path).stem}", path)
    if spec is None or not os.path.isfile(path):
        raise SweepError(f"--sweep={path}: no such file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("BASE", "RUNS"):
        if not hasattr(module, name):
            raise SweepError(f"{path}: defines no {name} (see edtalk_jax/sweep.py)")
    runs = [dict(r) for r in module.RUNS]
    if not runs:
        raise SweepError(f"{path}: RUNS is empty")
    arg = getattr(module, "BASE_ARG", "") if base_arg is None else base_arg
    return Sweep(path, module.BASE, arg, runs)


def _fmt(value: Any) -> str:
    """A value as launch.train's --config.key= flag reads it."""
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
    keys = list(overrides)
    last = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for k, short in zip(keys, last):
        label = k if last.count(short) > 1 else short
        value = _fmt(overrides[k]).replace(" ", "")
        parts.append(f"{label}={value}")
    name = "_".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9._=+,-]", "", name)


def _set(config, key: str, value: Any, what: str) -> None:
    node, parts = config, key.split(".")
    for p in parts[:-1]:
        if p not in node:
            raise SweepError(f"{what}: unknown config field {key!r}")
        node = node[p]
    if parts[-1] not in node:
        raise SweepError(f"{what}: unknown config field {key!r}; fields here: {sorted(node)}")
    try:
        node[parts[-1]] = value
    except (TypeError, ValueError) as e:
        raise SweepError(f"{what}: {key}={value!r}: {e}") from None


def parse_overrides(args: Sequence[str]) -> Dict[str, Any]:
    """`--config.k=v` arguments -> {k: v (text)}; typed later against the config."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--config\.([A-Za-z0-9_.]+)=(.*)", a, re.S)
        if not m:
            raise SweepError(f"{a!r}: expected --config.key=value")
        out[m.group(1)] = m.group(2)
    return out


def _typed(config, key: str, text: str):
    from configs import base
    node = config
    for p in key.split(".")[:-1]:
        node = node[p] if p in node else {}
    old = node[key.rsplit(".", 1)[-1]] if hasattr(node, "keys") and key.rsplit(".", 1)[-1] in node else None
    return base._typed(old, text)


def base_config(sweep: Sweep):
    """BASE's get_config(BASE_ARG), as launch.train's --config=BASE:BASE_ARG reads it."""
    path = sweep.base if os.path.isabs(sweep.base) else str(REPO / sweep.base)
    if not os.path.isfile(path):
        raise SweepError(f"{sweep.path}: BASE={sweep.base!r} is not a config file")
    spec = importlib.util.spec_from_file_location("sweep_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(sweep.base_arg) if sweep.base_arg else module.get_config()


def check(config, what: str) -> None:
    """launch.train's field checks and model shape rules for one run, before anything is
    written or launched. Weight files and datasets are not looked for: the runs may execute
    on other machines (`print` mode)."""
    from edtalk_jax import run_config

    config = config.copy_and_resolve_references()
    with config.unlocked():
        for field in ("init_from", "resume_from", "perceptual.path", "syncnet.path", "audio2lip.init"):
            node, _, leaf = field.rpartition(".")
            (config[node] if node else config)[leaf] = ""
    try:
        run_config.validate(config)
        run_config.resolve_model(config)
    except run_config.ConfigError as e:
        raise SweepError(f"{what}: {e}") from None


@dataclasses.dataclass
class Run:
    name: str
    overrides: Dict[str, Any]  # this run's sweep values
    workdir: str
    config: Any  # ConfigDict: base + common overrides + this run's
    command: List[str]  # argv of `python -m launch.train ...`, run from the repository root

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.command)


def expand(sweep: Sweep, workdir: str, common: Optional[Mapping[str, str]] = None) -> List[Run]:
    """The sweep's runs. `common`: {key: text} overrides for every run (the sweep command's
    --config.k=v); a key a run also sets is an error (the swept value would hide it)."""
    common = dict(common or {})
    config_arg = f"{sweep.base}:{sweep.base_arg}" if sweep.base_arg else sweep.base
    runs, seen = [], {}
    for i, overrides in enumerate(sweep.runs):
        clash = sorted(set(common) & set(overrides))
        if clash:
            raise SweepError(f"--config.{clash[0]} is also swept by {sweep.path}")
        config = base_config(sweep)
        for k, text in common.items():
            _set(config, k, _typed(config, k, text), "--config overrides")
        for k, v in overrides.items():
            _set(config, k, v, f"{sweep.path} run {i}")
        check(config, f"{sweep.path} run {i} ({run_name(overrides)})")
        name = run_name(overrides)
        if name in seen:
            raise SweepError(f"{sweep.path}: runs {seen[name]} and {i} are both named {name!r} "
                             "(duplicate overrides?)")
        seen[name] = i
        run_dir = os.path.join(workdir, name)
        cmd = ["python", "-m", "launch.train", f"--config={config_arg}", f"--workdir={run_dir}"]
        cmd += [f"--config.{k}={text}" for k, text in common.items()]
        cmd += [f"--config.{k}={_fmt(v)}" for k, v in overrides.items()]
        runs.append(Run(name, dict(overrides), run_dir, config, cmd))
    return runs


def write_plan(sweep: Sweep, runs: Sequence[Run], workdir: str) -> str:
    """WORKDIR/<name>/sweep_config.json per run, WORKDIR/commands.sh; -> the commands text."""
    os.makedirs(workdir, exist_ok=True)
    for r in runs:
        os.makedirs(r.workdir, exist_ok=True)
        with open(os.path.join(r.workdir, "sweep_config.json"), "w") as f:
            json.dump({"name": r.name, "sweep": sweep.path, "overrides": r.overrides, "command": r.shell(),
                       "config": json.loads(r.config.to_json_best_effort())}, f, indent=1, default=str)
    text = "".join(r.shell() + "\n" for r in runs)
    with open(os.path.join(workdir, "commands.sh"), "w") as f:
        f.write(f"# {sweep.path}: {len(runs)} runs; run each line from {REPO}\n" + text)
    return text


# ---- running and summarising ---------------------------------------------------------------

def _final(run: Run) -> Optional[Dict[str, Any]]:
    path = os.path.join(run.workdir, "final_metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_done(run: Run) -> bool:
    final = _final(run)
    return bool(final) and not final.get("preempted") and final.get("step", 0) >= run.config.total_steps


def execute(runs: Sequence[Run], env: Optional[Mapping[str, str]] = None, echo=print) -> Dict[str, Dict[str, Any]]:
    """Runs the commands one after another (log: WORKDIR/<name>/train.log); a failed run is
    recorded and the sweep goes on. -> {name: {"returncode", "seconds"}}."""
    results = {}
    for i, r in enumerate(runs):
        if is_done(r):
            echo(f"[{i + 1}/{len(runs)}] {r.name}: done already")
            results[r.name] = {"returncode": 0, "seconds": 0.0, "skipped": True}
            continue
        echo(f"[{i + 1}/{len(runs)}] {r.name}")
        t0 = time.time()
        log_path = os.path.join(r.workdir, "train.log")
        with open(log_path, "a") as log:
            proc = subprocess.run([sys.executable] + r.command[1:] + ["--progress=false"], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT, env=dict(env or os.environ))
        results[r.name] = {"returncode": proc.returncode, "seconds": round(time.time() - t0, 1)}
        if proc.returncode:
            echo(f"  failed (exit {proc.returncode}); see {log_path}")
    return results


def summarize(sweep: Sweep, runs: Sequence[Run], workdir: str,
              results: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
    """The table of final metrics per run -> WORKDIR/summary.md and summary.json; returns the
    markdown."""
    rows = []
    for r in runs:
        final = _final(r)
        res = dict((results or {}).get(r.name, {}))
        if final is None:
            status = f"failed (exit {res['returncode']})" if res.get("returncode") else "missing"
        else:
            status = "preempted" if final.get("preempted") else (
                "done" if final.get("step", 0) >= r.config.total_steps else "incomplete")
        rows.append({"name": r.name, "status": status, "overrides": r.overrides,
                     "step": (final or {}).get("step"), "metrics": (final or {}).get("metrics", {}),
                     "workdir": r.workdir, **res})
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))  # in order of first appearance
    shown = [m for m in SUMMARY_METRICS if any(m in row["metrics"] for row in rows)]
    head = ["run", "status", "step"] + [k.rsplit(".", 1)[-1] for k in keys] + shown
    lines = [f"# Sweep {sweep.path}", "", f"base: `{sweep.base}{':' + sweep.base_arg if sweep.base_arg else ''}`", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["name"], row["status"], str(row["step"] if row["step"] is not None else "")]
        cells += [_fmt(row["overrides"][k]) if k in row["overrides"] else "" for k in keys]
        cells += [f"{row['metrics'][m]:.4g}" if m in row["metrics"] else "" for m in shown]
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(md)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({"sweep": sweep.path, "base": sweep.base, "base_arg": sweep.base_arg, "runs": rows}, f,
                  indent=1, default=str)
    return md
