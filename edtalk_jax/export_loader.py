"""Runs the inference functions that `python -m launch.export stablehlo` wrote, with jax
and numpy alone (edtalk-jax need not be installed). `launch.export` copies this file
into the export directory as `edtalk_exported.py`.

  from edtalk_exported import ExportedModel
  model = ExportedModel("export_dir")
  source = model.encode_source(src)                    # (1, S, S, 3) float32 in [-1, 1]
  alphas = model.coefficients(frames)                  # {"lip", "pose"[, "exp"]: (B, K)}
  lips = model.audio2lip(mel_windows)                  # (B, 80, 16) -> (B, lip_dim)
  images = model.render(source, dict(alphas, lip=lips))["image"]   # (B, S, S, 3)

`manifest.json` describes every function: its file, the weights file it takes (a
safetensors file, read here with numpy), and its inputs and outputs with shapes, where
"b" is the symbolic batch dimension (any size at call time).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, List

import numpy as np

FORMAT = "edtalk-jax-export/1"
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header size, JSON header, raw data)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key} has dtype {info['dtype']}, which this reader does not know")
        start, end = info["data_offsets"]
        out[key] = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


class ExportedModel:
    """The functions of an export directory, each called with its weights."""

    def __init__(self, directory: str):
        import jax
        from jax import export

        self.directory = directory
        with open(os.path.join(directory, "manifest.json")) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{directory}: manifest format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.weights: Dict[str, List[Any]] = {}
        for name, keys in self.manifest["weights"].items():
            tensors = read_safetensors(os.path.join(directory, name))
            self.weights[name] = [jax.device_put(tensors[k]) for k in keys]
        self.functions = {}
        for name, info in self.manifest["functions"].items():
            with open(os.path.join(directory, info["file"]), "rb") as f:
                self.functions[name] = export.deserialize(bytearray(f.read()))

    def call(self, name: str, *args):
        if name not in self.functions:
            raise KeyError(f"{self.directory}: no exported function {name!r}; it has {sorted(self.functions)}")
        return self.functions[name].call(self.weights[self.manifest["functions"][name]["weights"]], *args)

    def encode_source(self, frames):
        return self.call("encode_source", frames)

    def coefficients(self, frames):
        return self.call("coefficients", frames)

    def render(self, source, alphas):
        return self.call("render", source, alphas)

    def audio2lip(self, mel):
        return self.call("audio2lip", mel)
