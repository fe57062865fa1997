"""Converted models on disk: an orbax checkpoint of the Flax variables plus `model.json`
(kind and configuration), the format `launch.convert` writes and every launcher reads."""

import json
import os
from typing import Any, Dict, Tuple

import numpy as np

MODEL_JSON = "model.json"
VARIABLES = "variables"


def save_model(directory: str, kind: str, cfg: Dict[str, Any], variables: Dict[str, Any]) -> None:
    import orbax.checkpoint as ocp
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, VARIABLES)
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose a new output directory")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, variables)
    with open(os.path.join(directory, MODEL_JSON), "w") as f:
        json.dump({"kind": kind, "config": cfg}, f, indent=1, default=list)


def load_model(directory: str) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """-> (kind, config, variables as numpy trees)."""
    import orbax.checkpoint as ocp
    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, MODEL_JSON)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{directory}: no {MODEL_JSON}; not a directory written by launch.convert")
    with open(meta_path) as f:
        meta = json.load(f)
    cfg = meta["config"]
    if "channels" in cfg:
        cfg["channels"] = tuple(cfg["channels"])
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(os.path.join(directory, VARIABLES))
    return meta["kind"], cfg, _to_numpy(variables)


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def load_any(path: str, kind=None) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """An official .pt (read without torch) or a directory written by launch.convert."""
    if os.path.isdir(path):
        found, cfg, variables = load_model(path)
        if kind and found != kind:
            raise ValueError(f"{path}: holds a {found}, expected a {kind}")
        return found, cfg, variables
    from edtalk_jax import convert_torch
    return convert_torch.load_official(path, kind)
