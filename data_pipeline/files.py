"""File rules every part of the pipeline shares: atomic JSON writes, and "resume only
with the configuration that made the directory"."""

from __future__ import annotations

import json
import os
from typing import Any, Collection, Mapping


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Writes `obj` to `path` through a temporary file and a rename: a reader never sees
    a half-written file."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, separators=None if indent else (",", ":"))
    os.replace(tmp, path)


def same_config(path: str | os.PathLike, config: Mapping[str, Any], what: str,
                ignore: Collection[str] = (), added: Mapping[str, Any] | None = None) -> None:
    """Records `config` (a JSON-able mapping) in `path` the first time; later, refuses
    (ValueError naming `what` and the fields that differ) a config that differs in any
    field but `ignore`, so a resumed run never mixes two configurations' outputs.
    `added`: fields introduced after `path` may have been written, with the value that
    everything written before them had."""
    current = json.loads(json.dumps({k: v for k, v in config.items() if k not in ignore}))
    if not os.path.exists(path):
        write_json(path, current)
        return
    with open(path) as f:
        recorded = {**json.loads(json.dumps(dict(added or {}))), **json.load(f)}
        before = {k: v for k, v in recorded.items() if k not in ignore}
    if before != current:
        changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
        raise ValueError(f"{what} was made with other settings (differ: {changed}, recorded in "
                         f"{os.fspath(path)}); resume with the same settings or use a new directory")
