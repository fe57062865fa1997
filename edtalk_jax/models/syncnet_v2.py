"""The SyncNet of joonson/syncnet_python (`SyncNetModel.S`, weights `syncnet_v2.model`), frozen,
for the LSE-C / LSE-D lip-sync metrics (`edtalk_jax.lse`).

Not Wav2Lip's SyncNet_color (`models/syncnet.py`, the training-time sync expert): this is the
evaluation network every talking-head paper scores with. Two streams, each a CNN column and an
MLP head, layer for layer as the official torch module (BatchNorm in eval mode: running
statistics, eps 1e-5; max pools pad with -inf as torch's do):

* lip:   5 consecutive 224x224 face crops, BGR, raw 0..255 (no normalisation), conv3d
         (5, 7, 7) over the 5 frames and 2-D (1, k, k) conv3d after it -> 1x1x1x512 ->
         Linear 512 -> BatchNorm1d -> ReLU -> Linear 1024 (`netcnnlip`, `netfclip`);
* audio: one 13x20 MFCC window (13 cepstra x 20 steps of 10 ms = 0.2 s, the 5 frames' span),
         conv2d -> 1x1x512 -> the same head (`netcnnaud`, `netfcaud`).

The embeddings are NOT normalised (the official compares raw 1024-d vectors by Euclidean
distance). NDHWC / NHWC inside; convs and dense layers run at `precision` HIGHEST so a GPU
does not fall back to TF32 (a metric, not a training step).

Weights: a user's `syncnet_v2.model` (a torch.save'd state_dict of `S`, keys
`netcnnaud.0.weight`, ..., `netfclip.3.bias`) through `load_syncnet_v2`, read by the safe
`torch_io` reader (never runs pickle code; no torch needed). Variables mirror the torch keys:
{"params" | "batch_stats" | "unused": {"netcnnaud" | "netfcaud" | "netcnnlip" | "netfclip":
{"<Sequential index>": {...}}}}; `unused` holds BatchNorm's num_batches_tracked.

    variables = load_syncnet_v2("syncnet_v2.model")
    v = SyncNetV2().apply(variables, lips, method=SyncNetV2.embed_lip)      # (N, 5, 224, 224, 3)
    a = SyncNetV2().apply(variables, mfcc, method=SyncNetV2.embed_audio)    # (N, 13, 20)
"""

import math
from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from edtalk_jax import convert_torch as ct
from edtalk_jax import torch_io
from edtalk_jax.layers.norm import BatchNorm

Dtype = Any

LIP_SHAPE = (5, 224, 224, 3)  # (frames, H, W, BGR) of one lip window
MFCC_SHAPE = (13, 20)  # (cepstra, 10 ms steps) of one audio window
EMBED_DIM = 1024  # S(num_layers_in_fc_layers=1024), the released model

# Layer tables, one row per torch Sequential index (so the variable names are the indices):
# ("conv", features, kernel, stride, padding) | ("bn",) | ("relu",) | ("pool", kernel, stride,
# padding) | ("linear", features). Kernel/stride/padding are per spatial axis, torch order.
NETCNNAUD = (
    ("conv", 64, (3, 3), (1, 1), (1, 1)), ("bn",), ("relu",), ("pool", (1, 1), (1, 1), (0, 0)),
    ("conv", 192, (3, 3), (1, 1), (1, 1)), ("bn",), ("relu",), ("pool", (3, 3), (1, 2), (0, 0)),
    ("conv", 384, (3, 3), (1, 1), (1, 1)), ("bn",), ("relu",),
    ("conv", 256, (3, 3), (1, 1), (1, 1)), ("bn",), ("relu",),
    ("conv", 256, (3, 3), (1, 1), (1, 1)), ("bn",), ("relu",), ("pool", (3, 3), (2, 2), (0, 0)),
    ("conv", 512, (5, 4), (1, 1), (0, 0)), ("bn",), ("relu",),
)
NETCNNLIP = (
    ("conv", 96, (5, 7, 7), (1, 2, 2), (0, 0, 0)), ("bn",), ("relu",), ("pool", (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv", 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("bn",), ("relu",), ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("bn",), ("relu",),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("bn",), ("relu",),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("bn",), ("relu",), ("pool", (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv", 512, (1, 6, 6), (1, 1, 1), (0, 0, 0)), ("bn",), ("relu",),
)


def fc_head(embed_dim: int = EMBED_DIM):
    """netfcaud / netfclip: Linear(512, 512), BatchNorm1d, ReLU, Linear(512, embed_dim)."""
    return (("linear", 512), ("bn",), ("relu",), ("linear", embed_dim))


_HIGHEST = lax.Precision.HIGHEST


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvNd(nn.Module):
    """torch Conv2d / Conv3d (bias, explicit symmetric padding), channels last; weight
    (*kernel, in, out) (HWIO / DHWIO)."""
    features: int
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x):
        cin, nd = x.shape[-1], len(self.kernel)
        init = _torch_uniform(cin * math.prod(self.kernel))
        w = self.param("weight", init, tuple(self.kernel) + (cin, self.features), self.param_dtype)
        b = self.param("bias", init, (self.features,), self.param_dtype)
        spatial = "DHW"[-nd:]
        dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        out = lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), tuple(self.stride),
                                       [(p, p) for p in self.padding], dimension_numbers=dn,
                                       precision=self.precision)
        return out + b.astype(self.dtype)


class Dense(nn.Module):
    """torch Linear; weight (in, out)."""
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x):
        init = _torch_uniform(x.shape[-1])
        w = self.param("weight", init, (x.shape[-1], self.features), self.param_dtype)
        b = self.param("bias", init, (self.features,), self.param_dtype)
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype), precision=self.precision) + b.astype(self.dtype)


def max_pool(x, kernel, stride, padding):
    """torch MaxPool2d/3d (floor mode, padding with -inf), channels last."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + tuple(kernel) + (1,), (1,) + tuple(stride) + (1,),
                             ((0, 0),) + tuple((p, p) for p in padding) + ((0, 0),))


class Stream(nn.Module):
    """One torch nn.Sequential from a layer table; layers named by their Sequential index."""
    table: Tuple[Tuple[Any, ...], ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, (kind, *args) in enumerate(self.table):
            if kind == "conv":
                x = ConvNd(*args, precision=self.precision, name=str(i), **kw)(x)
            elif kind == "linear":
                x = Dense(*args, precision=self.precision, name=str(i), **kw)(x)
            elif kind == "bn":
                x = BatchNorm(name=str(i), **kw)(x, False)
            elif kind == "relu":
                x = jax.nn.relu(x)
            elif kind == "pool":
                x = max_pool(x, *args)
            else:
                raise ValueError(f"unknown layer kind {kind!r}")
        return x


class SyncNetV2(nn.Module):
    """syncnet_python's `S` in eval mode. `embed_lip` and `embed_audio` are its forward_lip and
    forward_aud; `__call__(lips, mfcc)` returns both (used by `init`)."""
    embed_dim: int = EMBED_DIM
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = _HIGHEST

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        self.netcnnaud = Stream(NETCNNAUD, **kw)
        self.netfcaud = Stream(fc_head(self.embed_dim), **kw)
        self.netcnnlip = Stream(NETCNNLIP, **kw)
        self.netfclip = Stream(fc_head(self.embed_dim), **kw)

    def embed_lip(self, lips):
        """lips (N, 5, 224, 224, 3): 5 consecutive face crops, BGR, 0..255 (uint8 or float)
        -> (N, embed_dim) float32, unnormalised (forward_lip)."""
        if tuple(lips.shape[-4:]) != LIP_SHAPE or lips.ndim != 5:
            raise ValueError(f"SyncNetV2.embed_lip takes (N, {', '.join(map(str, LIP_SHAPE))}) BGR windows; "
                             f"got {tuple(lips.shape)}")
        x = self.netcnnlip(lips.astype(self.dtype))
        return self.netfclip(x.reshape(x.shape[0], -1)).astype(jnp.float32)

    def embed_audio(self, mfcc):
        """mfcc (N, 13, 20): MFCC windows (cepstra, 10 ms steps) -> (N, embed_dim) float32,
        unnormalised (forward_aud)."""
        if tuple(mfcc.shape[-2:]) != MFCC_SHAPE or mfcc.ndim != 3:
            raise ValueError(f"SyncNetV2.embed_audio takes (N, {', '.join(map(str, MFCC_SHAPE))}) MFCC windows; "
                             f"got {tuple(mfcc.shape)}")
        x = self.netcnnaud(mfcc[..., None].astype(self.dtype))
        return self.netfcaud(x.reshape(x.shape[0], -1)).astype(jnp.float32)

    def __call__(self, lips, mfcc):
        return self.embed_lip(lips), self.embed_audio(mfcc)


def example_inputs(batch: int = 1):
    return jnp.zeros((batch,) + LIP_SHAPE, jnp.float32), jnp.zeros((batch,) + MFCC_SHAPE, jnp.float32)


# ---------------------------------------------------------------- syncnet_v2.model
STREAMS = ("netcnnaud", "netfcaud", "netcnnlip", "netfclip")


def _tables(embed_dim: int):
    head = fc_head(embed_dim)
    return {"netcnnaud": NETCNNAUD, "netfcaud": head, "netcnnlip": NETCNNLIP, "netfclip": head}


def syncnet_v2_entries(embed_dim: int = EMBED_DIM) -> List[ct.Entry]:
    """Every tensor of S.state_dict(): (torch key, collection, Flax path, layout)."""
    out = []
    for stream, table in _tables(embed_dim).items():
        for i, (kind, *args) in enumerate(table):
            t, f = f"{stream}.{i}", (stream, str(i))
            if kind in ("conv", "linear"):
                layout = "linear" if kind == "linear" else ("conv" if len(args[1]) == 2 else "conv3d")
                out += [ct.Entry(f"{t}.weight", "params", f + ("weight",), layout),
                        ct.Entry(f"{t}.bias", "params", f + ("bias",), "same")]
            elif kind == "bn":
                out += [ct.Entry(f"{t}.weight", "params", f + ("weight",), "same"),
                        ct.Entry(f"{t}.bias", "params", f + ("bias",), "same"),
                        ct.Entry(f"{t}.running_mean", "batch_stats", f + ("mean",), "same"),
                        ct.Entry(f"{t}.running_var", "batch_stats", f + ("var",), "same"),
                        ct.Entry(f"{t}.num_batches_tracked", "unused", f + ("num_batches_tracked",), "same")]
    return out


def variable_shapes(embed_dim: int = EMBED_DIM):
    """The Flax variable tree of SyncNetV2(embed_dim) as ShapeDtypeStructs (nothing computed)."""
    return jax.eval_shape(SyncNetV2(embed_dim).init, jax.random.PRNGKey(0), *example_inputs())


def embed_dim_of(variables) -> int:
    """The embedding width of loaded variables (1024 for the released model)."""
    return int(variables["params"]["netfclip"]["3"]["weight"].shape[-1])


def load_syncnet_v2(path: str) -> Dict[str, Any]:
    """A syncnet_python `syncnet_v2.model` (torch.save'd state_dict of `S`, as
    `SyncNetInstance.loadParameters` reads it) -> SyncNetV2 variables (float32 numpy trees:
    "params", "batch_stats", "unused").

    Every key and shape is checked; all problems are reported in one ConversionError naming
    the file and the keys. BatchNorm's num_batches_tracked may be absent (older torch never
    saved it). The embedding width (S's num_layers_in_fc_layers, 1024 in the release) is read
    from the file."""
    if not path:
        raise ValueError("no SyncNet weights given: LSE-C/D need syncnet_python's syncnet_v2.model "
                         "(http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model); "
                         "it is never downloaded here")
    try:
        sd = torch_io.load_pt(path)
    except torch_io.CheckpointError as e:
        if "'torch._utils._rebuild_tensor'" in str(e) or "torch < 0.4" in str(e):  # pre-0.4 layout
            raise type(e)(f"{e}\n(a file saved by torch < 0.4 is not read here; re-save it once with "
                          "torch >= 2.6, whose torch.load(path) defaults to its weights-only unpickler: "
                          "torch.save(torch.load(path), new_path) writes the same state_dict in today's "
                          "format)") from None
        raise
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, np.ndarray) for v in sd.values()):
        top = sorted(map(str, sd))[:10] if isinstance(sd, dict) else type(sd).__name__
        raise ct.ConversionError(f"{path}: not a syncnet_python state_dict (a flat dict of tensors, keys "
                                 f"netcnnaud.0.weight, ...; top level: {top})")
    fc = sd.get("netfclip.3.weight")
    embed_dim = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else EMBED_DIM
    entries = syncnet_v2_entries(embed_dim)
    shapes = variable_shapes(embed_dim)
    return ct.convert_entries(sd, entries, shapes, path, "a syncnet_python SyncNet (syncnet_v2.model)")
