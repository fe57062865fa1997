"""Checkpoints of a training run, resume sources, and preemption.

    WORKDIR/config.json            the run's config, written once
    WORKDIR/checkpoints/<step>/    state/  the train state (orbax StandardSave, OCDBT)
                                   data/   the grain iterator position, one JSON per process

Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a
step directory is whole or absent, and pruning deletes old steps only after a newer one is
committed: a crash during a save leaves the previous checkpoints intact. A step directory
can still be damaged later (a truncated copy, a lost file); `Checkpoints.restore_latest`
then falls back to the newest readable step.

Resume sources (`resolve`): a training workdir, one of its step directories, an official
PyTorch `.pt`/`.pth`, or a directory written by `launch.convert` (model.json).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from typing import Any, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from data_pipeline.loaders import LoaderError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CONFIG_JSON = "config.json"
ITEMS = ("state", "data")
# Where a step that could not be read is moved, so that a run resumed from an older step
# can save that step number again (orbax silently skips steps <= its newest one).
UNREADABLE_SUFFIX = ".unreadable"
# Orbax's messages for a readable checkpoint restored into a tree of another structure or
# shape: a caller's error, not damage, so no fallback to older steps.
_MISMATCH = ("Structure mismatch", "is not compatible with the stored shape",
             "tree structures do not match")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot serve the request; the message names its directory."""


class UnreadableCheckpointError(CheckpointError):
    """A step directory orbax or tensorstore could not read (missing or damaged files)."""

    def __init__(self, step_dir: str, error: BaseException):
        self.step_dir, self.error = step_dir, error
        super().__init__(f"{step_dir}: unreadable checkpoint: {_brief(error)}")


def _brief(error: BaseException) -> str:
    """Type and first line of an error and of its causes (orbax wraps tensorstore's error
    in a bare Exception whose message is mostly a JSON spec)."""
    parts = []
    while error is not None and len(parts) < 3:
        lines = str(error).strip().splitlines()
        first = (lines[0] if lines else "").split(" See full TensorStore details")[0]
        first = first.split(" [tensorstore_spec=")[0]
        parts.append(f"{type(error).__name__}: {first[:300]}")
        error = error.__cause__
    return "; caused by ".join(parts)


def _primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _jsonable(config: Any) -> Any:
    """A config (dict, ml_collections ConfigDict, dataclass) as JSON-serialisable data."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)

    def default(x):
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, (set, frozenset)):
            return sorted(x)
        return repr(x)

    return json.loads(json.dumps(config, default=default, sort_keys=True))


def write_config(workdir: str, config: Any) -> None:
    """Writes WORKDIR/config.json once (call it on one process); a resumed run with another
    config keeps the first and says which top-level fields differ."""
    data = _jsonable(config)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_JSON)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != data:
            keys = sorted(k for k in set(old) | set(data) if old.get(k) != data.get(k))
            log.warning("%s: this run's config differs in %s; keeping the first run's file",
                        path, keys)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)




def _saved_items(step_dir: str) -> set[str] | None:
    """The items a step was saved with, as its orbax metadata names them (an item named
    there whose directory is gone means damage, not absence); None when unreadable."""
    try:
        with open(os.path.join(step_dir, "_CHECKPOINT_METADATA")) as f:
            return set(json.load(f)["item_handlers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _step_dirs(directory: str) -> list[int]:
    """Steps of a checkpoints/ directory, oldest first (orbax's plain integer names)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


class Checkpoints:
    """The orbax checkpoints of one workdir: the train state (any pytree of jax.Arrays,
    sharded or not) and optionally the data iterator position, saved asynchronously.
    Keeps the `keep_last` newest steps plus every step divisible by `keep_every_steps`."""

    def __init__(self, workdir: str, *, keep_last: int = 3, keep_every_steps: int | None = None,
                 config: Mapping | None = None, async_save: bool = True):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINTS)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last, keep_period=keep_every_steps,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        if config is not None and _primary():
            write_config(self.workdir, config)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
        """Starts saving `step` (returns once the arrays are copied off the devices and the
        iterator position is taken). False when not saved: the step exists already, or it
        is older than the newest checkpoint (orbax keeps steps increasing) and not `force`."""
        if step in self._manager.all_steps():
            log.info("%s exists already; not saved again", self.step_dir(step))
            return False
        latest = self.latest_step()
        if latest is not None and step < latest and not force:
            log.warning("step %d not saved: %s holds the newer step %d (force=True saves it)",
                        step, self.directory, latest)
            return False
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return bool(self._manager.save(step, args=ocp.args.Composite(**args), force=force))

    def restore(self, step: int, abstract_state, data_iterator=None):
        """The state of `step`, placed as `abstract_state`'s shardings (a pytree of
        jax.ShapeDtypeStruct, any mesh); with `data_iterator`, moves it to the saved
        position. UnreadableCheckpointError for a damaged step; LoaderError when the
        position belongs to another data configuration."""
        step_dir = self.step_dir(step)
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{step_dir}: no such checkpoint (steps: {self.all_steps()})")
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items = _saved_items(step_dir)
            if items is not None and "data" not in items:
                raise CheckpointError(
                    f"{step_dir} holds no data iterator position (saved without one); restore "
                    f"with data_iterator=None to start the data afresh")
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**args)).state
        except LoaderError:
            raise
        except Exception as e:  # orbax/tensorstore raise bare Exception, ValueError, KeyError...
            if any(m in str(e) for m in _MISMATCH):
                raise CheckpointError(f"{step_dir}: the saved state does not match "
                                      f"abstract_state: {str(e)[:1000]}") from e
            raise UnreadableCheckpointError(step_dir, e) from e

    def restore_latest(self, abstract_state, data_iterator=None) -> tuple[int, Any] | None:
        """(step, state) of the newest readable step, or None when there is none at all.
        Unreadable newer steps are logged and moved aside to `<step>.unreadable` (so their
        step numbers can be saved again); CheckpointError when no step is readable."""
        self._manager.reload()
        failed: list[UnreadableCheckpointError] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except UnreadableCheckpointError as e:
                log.warning("%s; trying the previous checkpoint", e)
                failed.append(e)
                continue
            if failed:
                log.warning("resumed from %s instead of the unreadable %s", self.step_dir(step),
                            ", ".join(e.step_dir for e in failed))
                self._move_aside([e.step_dir for e in failed])
            return step, state
        if failed:
            raise CheckpointError(f"{self.directory}: no readable checkpoint: "
                                  + "; ".join(str(e) for e in failed)) from failed[0]
        return None

    def _move_aside(self, step_dirs: list[str]) -> None:
        if _primary():
            for d in step_dirs:
                target, n = d + UNREADABLE_SUFFIX, 1
                while os.path.exists(target):
                    target, n = f"{d}{UNREADABLE_SUFFIX}.{n}", n + 1
                os.rename(d, target)
                log.warning("moved %s to %s", d, target)
        _barrier("edtalk_checkpoints_move_aside")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Blocks until pending saves are committed (re-raises their errors)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- Resume sources ----

KINDS = ("workdir", "step", "official", "converted")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where to resume or initialise from. `step`: the newest step of a workdir (at the
    time of `resolve`) or the step of a step directory; None for the other kinds."""

    kind: str  # one of KINDS
    path: str  # absolute: the workdir, the step directory, the .pt file or the model dir
    step: int | None = None


def resolve(path: str) -> Source:
    """Identifies a resume source (module docstring); FileNotFoundError/ValueError naming
    the path and what was expected."""
    from edtalk_jax import model_io

    full = os.path.abspath(os.path.expanduser(path))
    expected = ("a training workdir (holding checkpoints/), a step directory "
                "(.../checkpoints/<step>), an official .pt/.pth file, or a directory written "
                "by launch.convert (holding model.json)")
    if os.path.isfile(full):
        if full.endswith((".pt", ".pth")):
            return Source("official", full)
        raise ValueError(f"{path}: a file that is not .pt/.pth; expected {expected}")
    if not os.path.isdir(full):
        raise FileNotFoundError(f"{path}: not found; expected {expected}")
    if os.path.isfile(os.path.join(full, model_io.MODEL_JSON)):
        return Source("converted", full)
    name, parent = os.path.basename(full), os.path.dirname(full)
    if name.isdigit() and os.path.basename(parent) == CHECKPOINTS:
        if not os.path.isdir(os.path.join(full, "state")):
            raise ValueError(f"{path}: a step directory without state/; expected {expected}")
        return Source("step", full, int(name))
    if name == CHECKPOINTS and _step_dirs(full):
        full = parent  # the checkpoints/ folder itself: its workdir
    checkpoints = os.path.join(full, CHECKPOINTS)
    if os.path.isdir(checkpoints):
        steps = _step_dirs(checkpoints)
        if not steps:
            raise FileNotFoundError(f"{path}: {checkpoints} holds no checkpoint yet")
        return Source("workdir", full, steps[-1])
    raise ValueError(f"{path}: a directory that is none of {expected}")


def _as_source(source: Source | str) -> Source:
    return resolve(source) if isinstance(source, str) else source


def _read_state_dir(step_dir: str, abstract_state) -> Any:
    path = os.path.join(step_dir, "state")
    as_numpy = ocp.RestoreArgs(restore_type=np.ndarray)
    with ocp.PyTreeCheckpointer() as ckptr:
        if abstract_state is None:
            tree = ckptr.metadata(path).item_metadata.tree
            args = ocp.args.PyTreeRestore(restore_args=jax.tree.map(lambda _: as_numpy, tree))
        else:
            args = ocp.args.PyTreeRestore(
                item=abstract_state, restore_args=jax.tree.map(lambda _: as_numpy, abstract_state),
                partial_restore=True)
        return ckptr.restore(path, args=args)


def read_state(source: Source | str, abstract_state=None) -> Any:
    """The `state` item of a workdir (its newest readable step) or step directory as numpy
    arrays, on the host, whatever mesh saved it. `abstract_state` selects the part to read
    (a subtree of the saved tree, e.g. {"params": ...}); None reads the whole tree as saved
    (optax states then come back as lists and dicts)."""
    source = _as_source(source)
    if source.kind == "step":
        step_dirs = [source.path]
    elif source.kind == "workdir":
        directory = os.path.join(source.path, CHECKPOINTS)
        step_dirs = [os.path.join(directory, str(s)) for s in reversed(_step_dirs(directory))]
    else:
        raise ValueError(f"{source.path}: a {source.kind} source holds no train state; "
                         f"expected a workdir or step directory")
    errors = []
    for step_dir in step_dirs:
        try:
            state = _read_state_dir(step_dir, abstract_state)
        except Exception as e:  # see Checkpoints.restore
            errors.append(UnreadableCheckpointError(step_dir, e))
            log.warning("%s; trying the previous checkpoint", errors[-1])
            continue
        if errors:
            log.warning("read %s instead of the unreadable %s", step_dir,
                        ", ".join(e.step_dir for e in errors))
        return state
    raise CheckpointError(f"{source.path}: no readable checkpoint: "
                          + "; ".join(str(e) for e in errors))


def read_config(source: Source | str) -> dict | None:
    """The config.json saved beside a workdir's (or step directory's) checkpoints (a
    workdir without checkpoints yet included); None for other sources or when there is
    none."""
    if isinstance(source, str) and os.path.isfile(os.path.join(source, CONFIG_JSON)):
        source = Source("workdir", os.path.abspath(source))
    source = _as_source(source)
    if source.kind == "workdir":
        workdir = source.path
    elif source.kind == "step":
        workdir = os.path.dirname(os.path.dirname(source.path))
    else:
        return None
    path = os.path.join(workdir, CONFIG_JSON)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---- Preemption ----


class PreemptionGuard:
    """Turns SIGTERM (and SIGINT with `sigint=True`) into a flag, `requested`, that the
    training loop polls to save and exit cleanly; `close` restores the previous handlers.
    A second SIGINT raises KeyboardInterrupt, so Ctrl-C twice still stops a stuck run.

    Python runs signal handlers in the main thread only, so create it there. Installing it
    replaces any SIGTERM handler installed before, jax's preemption notifier included;
    `should_stop` also asks orbax's `reached_preemption`, which covers the opposite order."""

    def __init__(self, *, sigint: bool = False):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be created in the main thread")
        self.requested = False
        self.signal: int | None = None
        self._announced = False
        signals = [signal.SIGTERM] + ([signal.SIGINT] if sigint else [])
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame) -> None:
        # Only set the flag: the handler interrupts arbitrary code (even a save in progress).
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum

    def should_stop(self, step: int) -> bool:
        """True when this process (or, with several processes, any of them) was asked to
        stop. With several processes it is a collective: every process must call it at
        the same steps."""
        stop = self.requested
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray(stop, np.int32))
            stop = bool(np.any(flags)) or ocp.multihost.reached_preemption(step)
        if stop and not self._announced:
            self._announced = True
            cause = signal.Signals(self.signal).name if self.signal else "another process"
            log.warning("stop requested (%s) at step %d: saving and exiting", cause, step)
        return stop

    def close(self) -> None:
        for s, previous in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back.
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def __enter__(self) -> "PreemptionGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["CheckpointError", "Checkpoints", "KINDS", "PreemptionGuard", "Source",
           "UnreadableCheckpointError", "read_config", "read_state", "resolve", "write_config"]
