"""Official EDTalk `.pt` state_dicts <-> Flax variables (pure functions, no torch needed).

Every official tensor has one entry in a key map built from the model's configuration:
(torch key, Flax collection + path, layout transform). The same map drives both
directions, so import and export cannot drift apart. Sizes and widths are inferred from
the tensor shapes, then the whole state_dict is checked against the map: missing,
unexpected and mis-shaped keys are reported together in one error.

Collections: `params` (trained), `batch_stats` (Audio2Lip BatchNorm running statistics),
`unused` (official tensors the forward pass never reads: the EEM's dead conv1/norm1
branch, dec.to_rgb1, the noise weights, BatchNorm's num_batches_tracked). FIR kernel
buffers are checked against the values the model recomputes, and regenerated on export.
"""

import dataclasses
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edtalk_jax.layers.upfirdn import make_kernel
from edtalk_jax.models.audio2lip import AUDIO_ENCODER
from edtalk_jax.models.config import log2_size
from edtalk_jax.models.vgg import VGG19_CONVS

KINDS = ("generator", "lip_pose", "audio2lip", "discriminator", "vgg19")
# Where each kind's state_dict lives inside an official checkpoint file (None: top level).
CHECKPOINT_KEYS = {"generator": "gen", "lip_pose": "gen", "audio2lip": "audio2lip",
                   "discriminator": "dis", "vgg19": None}


class ConversionError(ValueError):
    """A state_dict that does not fit the model; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Entry:
    torch_key: str
    collection: Optional[str]  # None: a buffer checked against `expected`, not stored
    path: Tuple[str, ...]
    layout: str  # see _TO_FLAX
    expected: Any = None


# torch layout -> flax layout. Conv (O,I,kh,kw) -> (kh,kw,I,O); ModulatedConv2d
# (1,O,I,k,k) -> (k,k,I,O); Linear (out,in) -> (in,out); activation bias (1,C,1,1) -> (C,);
# ConstantInput (1,C,h,w) -> (1,h,w,C).
_TO_FLAX = {
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "conv3d": lambda a: a.transpose(2, 3, 4, 1, 0),  # (O, I, D, H, W) -> (D, H, W, I, O)
    "modconv": lambda a: a[0].transpose(2, 3, 1, 0),
    "linear": lambda a: a.T,
    "bias4": lambda a: a.reshape(-1),
    "const": lambda a: a.transpose(0, 2, 3, 1),
    "same": lambda a: a,
}
_TO_TORCH = {
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "conv3d": lambda a: a.transpose(4, 3, 0, 1, 2),
    "modconv": lambda a: a.transpose(3, 2, 0, 1)[None],
    "linear": lambda a: a.T,
    "bias4": lambda a: a.reshape(1, -1, 1, 1),
    "const": lambda a: a.transpose(0, 3, 1, 2),
    "same": lambda a: a,
}


# ----------------------------------------------------------------------------- key maps
def _kernel(t: str, factor: int) -> Entry:
    return Entry(t, None, (), "same", make_kernel() * factor ** 2)


def _convlayer(t, f, col="params", bias=True, down=False):
    """A ConvLayer: [blur] -> conv -> [FusedLeakyReLU]; torch Sequential indices shift by
    one when the blur is present."""
    i = 1 if down else 0
    out = [_kernel(f"{t}.0.kernel", 1)] if down else []
    out.append(Entry(f"{t}.{i}.weight", col, f + ("conv", "weight"), "conv"))
    if bias:
        out.append(Entry(f"{t}.{i + 1}.bias", col, f + ("act", "bias"), "bias4"))
    return out


def _resblock(t, f):
    return (_convlayer(f"{t}.conv1", f + ("conv1",)) + _convlayer(f"{t}.conv2", f + ("conv2",), down=True)
            + _convlayer(f"{t}.skip", f + ("skip",), bias=False, down=True))


def _linear(t, f, col="params", layout="linear"):
    return [Entry(f"{t}.weight", col, f + ("weight",), layout), Entry(f"{t}.bias", col, f + ("bias",), "same")]


def _modconv(t, f, upsample=False):
    out = [Entry(f"{t}.weight", "params", f + ("weight",), "modconv")]
    if upsample:
        out.append(_kernel(f"{t}.blur.kernel", 2))
    return out + _linear(f"{t}.modulation", f + ("modulation",))


def _styled_conv(t, f, upsample=False):
    return _modconv(f"{t}.conv", f + ("conv",), upsample) + [
        Entry(f"{t}.noise.weight", "unused", f + ("noise_weight",), "same"),
        Entry(f"{t}.activate.bias", "params", f + ("activate", "bias"), "bias4")]


def _to_rgb(t, f, col="params", upsample=True):
    out = [Entry(f"{t}.bias", col, f + ("bias",), "bias4")]
    if upsample:
        out.append(_kernel(f"{t}.upsample.kernel", 2))
    return out + _convlayer(f"{t}.conv", f + ("conv",), col)


def _adain(t, f, col):
    return (_linear(f"{t}.mlp_shared.0", f + ("mlp_shared",), col) + _linear(f"{t}.mlp_gamma", f + ("mlp_gamma",), col)
            + _linear(f"{t}.mlp_beta", f + ("mlp_beta",), col))


def _encoder_like(t, f, n):
    out = _convlayer(f"{t}.0", f + ("convs_0",))
    for i in range(1, n + 1):
        out += _resblock(f"{t}.{i}", f + (f"convs_{i}",))
    return out


def generator_entries(cfg: Dict[str, Any]) -> List[Entry]:
    """The official key order of networks/generator.py (exp_dim > 0) or
    networks/generator_lip_pose.py (exp_dim == 0)."""
    n = log2_size(cfg["size"]) - 2
    e = _encoder_like("enc.net_app.convs", ("enc",), n)
    e.append(Entry(f"enc.net_app.convs.{n + 1}.weight", "params", ("enc", f"convs_{n + 1}", "weight"), "conv"))
    e.append(Entry("dec.input.input", "params", ("dec", "input", "input"), "const"))
    e += _styled_conv("dec.conv1", ("dec", "conv1"))
    e += _to_rgb("dec.to_rgb1", ("dec", "to_rgb1"), col="unused", upsample=False)
    for j in range(2 * n):
        e += _styled_conv(f"dec.convs.{j}", ("dec", f"convs_{j}"), upsample=j % 2 == 0)
    for lvl in range(n):
        e += _to_rgb(f"dec.to_rgbs.{lvl}", ("dec", f"to_rgbs_{lvl}"))
    for lvl in range(n):
        t, f = f"dec.to_flows.{lvl}", ("dec", f"to_flows_{lvl}")
        e += [Entry(f"{t}.bias", "params", f + ("bias",), "bias4"), _kernel(f"{t}.upsample.kernel", 2)]
        e += _modconv(f"{t}.conv", f + ("conv",))
    if cfg["exp_dim"]:
        for lvl in range(n):
            t, f = f"dec.fineadainresblock.{lvl}", ("dec", f"eem_{lvl}")
            e += _linear(f"{t}.conv1", f + ("conv1",), "unused", "conv")
            e += _linear(f"{t}.conv2", f + ("conv2",), "params", "conv")
            e += _adain(f"{t}.norm1", f + ("norm1",), "unused") + _adain(f"{t}.norm2", f + ("norm2",), "params")
    e.append(Entry("direction_lipnonlip.weight", "params", ("bank", "lipnonlip"), "same"))
    if cfg["exp_dim"]:
        e.append(Entry("direction_exp.weight", "params", ("bank", "exp"), "same"))
    heads = [("fc", 4), ("lip_fc", 3), ("pose_fc", 3)] + ([("exp_fc", 3)] if cfg["exp_dim"] else [])
    for name, layers in heads:
        for i in range(layers):
            e += _linear(f"{name}.{i}", (name, f"layers_{i}"))
    return e


def discriminator_entries(cfg):
    n = log2_size(cfg["size"]) - 2
    e = _encoder_like("convs", (), n)
    e += _convlayer("final_conv", ("final_conv",))
    return e + _linear("final_linear.0", ("final_linear_0",)) + _linear("final_linear.1", ("final_linear_1",))


def audio2lip_entries(cfg):
    e = []
    for i in range(len(AUDIO_ENCODER)):
        t, f = f"audio_encoder.{i}.conv_block", (f"audio_encoder_{i}",)
        e += _linear(f"{t}.0", f + ("conv",), layout="conv")
        e += [Entry(f"{t}.1.weight", "params", f + ("bn", "weight"), "same"),
              Entry(f"{t}.1.bias", "params", f + ("bn", "bias"), "same"),
              Entry(f"{t}.1.running_mean", "batch_stats", f + ("bn", "mean"), "same"),
              Entry(f"{t}.1.running_var", "batch_stats", f + ("bn", "var"), "same"),
              Entry(f"{t}.1.num_batches_tracked", "unused", f + ("bn", "num_batches_tracked"), "same")]
    return e + _linear("mapping", ("mapping",))


def vgg19_entries(cfg):
    e = []
    for idx, _ in VGG19_CONVS:
        e += _linear(f"features.{idx}", ("vgg", f"features_{idx}"), layout="conv")
    return e


ENTRIES = {"generator": generator_entries, "lip_pose": generator_entries, "audio2lip": audio2lip_entries,
           "discriminator": discriminator_entries, "vgg19": vgg19_entries}
# Official tensors that a kind may carry and the model does not use (torchvision's
# classifier and the convs after relu5_1).
IGNORED = {"vgg19": re.compile(r"^(classifier\.|features\.(3[0-9])\.)")}


# ------------------------------------------------------------------ config from shapes
def _shape(sd, key, path):
    if key not in sd:
        raise ConversionError(f"{path}: cannot infer the model size: key {key!r} is missing")
    return tuple(np.shape(sd[key]))


def _count(sd, pattern):
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd for m in [rx.match(k)] if m})


def _pyramid_channels(sd, prefix, path):
    """Channels for resolutions 4..size from an encoder-like conv stack."""
    n = _count(sd, rf"^{re.escape(prefix)}\.(\d+)\.conv1\.")
    if n == 0:
        raise ConversionError(f"{path}: no ResBlocks under {prefix!r}")
    ch = [_shape(sd, f"{prefix}.0.0.weight", path)[0]]
    ch += [_shape(sd, f"{prefix}.{i}.conv2.1.weight", path)[0] for i in range(1, n + 1)]
    return 2 ** (n + 2), tuple(ch[::-1])


def infer_config(kind: str, sd: Dict[str, Any], path: str = "state_dict") -> Dict[str, Any]:
    """Model configuration (sizes and widths) from the tensor shapes."""
    if kind in ("generator", "lip_pose"):
        size, channels = _pyramid_channels(sd, "enc.net_app.convs", path)
        n = log2_size(size) - 2
        cfg = dict(size=size, channels=channels,
                   style_dim=_shape(sd, f"enc.net_app.convs.{n + 1}.weight", path)[0],
                   lip_dim=_shape(sd, "lip_fc.2.weight", path)[0],
                   pose_dim=_shape(sd, "pose_fc.2.weight", path)[0],
                   exp_dim=_shape(sd, "exp_fc.2.weight", path)[0] if kind == "generator" else 0)
        if kind == "generator":
            cfg["eem_hidden"] = _shape(sd, "dec.fineadainresblock.0.norm2.mlp_shared.0.weight", path)[0]
        return cfg
    if kind == "discriminator":
        size, channels = _pyramid_channels(sd, "convs", path)
        return dict(size=size, channels=channels)
    if kind == "audio2lip":
        return dict(lip_dim=_shape(sd, "mapping.weight", path)[0])
    if kind == "vgg19":
        return {}
    raise ConversionError(f"unknown kind {kind!r}; expected one of {KINDS}")


def detect_kind(ckpt: Dict[str, Any], path: str = "checkpoint") -> str:
    """The kind of an official checkpoint from its top-level keys and state_dict keys."""
    if "gen" in ckpt:
        return "generator" if "direction_exp.weight" in ckpt["gen"] else "lip_pose"
    if "audio2lip" in ckpt:
        return "audio2lip"
    if "dis" in ckpt:
        return "discriminator"
    if "features.0.weight" in ckpt:
        return "vgg19"
    raise ConversionError(f"{path}: not an EDTalk checkpoint: top-level keys {sorted(map(str, ckpt))[:10]} "
                          "(expected 'gen', 'audio2lip', 'dis' or a torchvision VGG19 state_dict)")


def state_dict_of(ckpt: Dict[str, Any], kind: str, path: str = "checkpoint") -> Dict[str, Any]:
    key = CHECKPOINT_KEYS[kind]
    if key is None:
        return ckpt
    if key not in ckpt:
        raise ConversionError(f"{path}: no {key!r} entry for a {kind} (top-level keys: {sorted(map(str, ckpt))})")
    return ckpt[key]


# ----------------------------------------------------------------------- conversion
def _flax_shapes(kind, cfg):
    import jax
    from edtalk_jax.models import build_model, example_inputs
    model = build_model(kind, cfg)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_inputs(kind, cfg))


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaf_paths(v, prefix + (k,))
    else:
        yield prefix


def torch_to_flax(kind: str, sd: Dict[str, Any], path: str = "state_dict"):
    """Official state_dict (numpy arrays) -> (config, Flax variables as numpy trees)."""
    cfg = infer_config(kind, sd, path)
    entries = ENTRIES[kind](cfg)
    shapes = _flax_shapes(kind, cfg)
    known = {e.torch_key for e in entries}
    ignored = IGNORED.get(kind)
    problems = [f"missing key {e.torch_key}" for e in entries if e.torch_key not in sd]
    problems += [f"unexpected key {k}" for k in sd if k not in known and not (ignored and ignored.match(k))]
    variables: Dict[str, Any] = {}
    for e in entries:
        if e.torch_key not in sd:
            continue
        a = np.asarray(sd[e.torch_key])
        if e.collection is None:
            if a.shape != e.expected.shape or not np.allclose(a, e.expected, rtol=0, atol=1e-7):
                problems.append(f"buffer {e.torch_key} differs from the FIR kernel the model uses")
            continue
        want = _get(shapes[e.collection], e.path)
        torch_shape = _TO_TORCH[e.layout](np.empty(want.shape, np.uint8)).shape
        if a.shape != torch_shape:
            problems.append(f"key {e.torch_key} has shape {a.shape}, expected {torch_shape}")
            continue
        dtype = np.int32 if e.torch_key.endswith("num_batches_tracked") else np.float32
        _set(variables, (e.collection,) + e.path, np.array(_TO_FLAX[e.layout](a), dtype=dtype, order="C"))
    if problems:
        raise ConversionError(f"{path}: {len(problems)} problem(s) loading a {kind} with inferred config "
                              f"{cfg}:\n  " + "\n  ".join(problems))
    return cfg, variables


def flax_to_torch(kind: str, cfg: Dict[str, Any], variables: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Flax variables -> an official-layout state_dict (numpy, official key order)."""
    out = {}
    for e in ENTRIES[kind](cfg):
        if e.collection is None:
            out[e.torch_key] = e.expected.astype(np.float32)
            continue
        try:
            a = np.asarray(_get(variables[e.collection], e.path))
        except KeyError as err:
            raise ConversionError(f"variables lack {e.collection}/{'/'.join(e.path)} "
                                  f"(official key {e.torch_key})") from err
        if e.torch_key.endswith("num_batches_tracked"):
            out[e.torch_key] = a.astype(np.int64)
        else:
            out[e.torch_key] = np.array(_TO_TORCH[e.layout](a), dtype=np.float32, order="C")
    return out


def convert_entries(sd: Dict[str, Any], entries: List[Entry], shapes, path: str, what: str,
                    only: Optional[str] = None, ignore=None) -> Dict[str, Any]:
    """A third-party state_dict (SyncNets, the FID Inception) checked against `entries` ->
    float32 Flax variables; every problem (missing, unexpected, mis-shaped or non-float
    key) in one ConversionError naming the file. `shapes`: the module's variable shapes
    (jax.eval_shape of its init). BatchNorm's num_batches_tracked may be absent (old torch
    never saved it). `only`: a key prefix outside which keys are ignored; `ignore(key)`:
    keys in the file that are never read."""
    known = {e.torch_key for e in entries}
    problems = [f"unexpected key {k}" for k in sd
                if k not in known and (only is None or k.startswith(only)) and not (ignore and ignore(k))]
    variables: Dict[str, Any] = {}
    for e in entries:
        counter = e.torch_key.endswith("num_batches_tracked")
        if e.torch_key not in sd:
            if counter:  # never read
                _set(variables, (e.collection,) + e.path, np.zeros((), np.int32))
            else:
                problems.append(f"missing key {e.torch_key}")
            continue
        a = np.asarray(sd[e.torch_key])
        want = _TO_TORCH[e.layout](np.empty(_get(shapes[e.collection], e.path).shape, np.uint8)).shape
        if a.shape != want:
            problems.append(f"key {e.torch_key} has shape {a.shape}, expected {want}")
            continue
        if not counter and a.dtype.kind != "f" and a.dtype.name != "bfloat16":
            problems.append(f"key {e.torch_key} has dtype {a.dtype}, expected a floating tensor")
            continue
        value = _TO_FLAX[e.layout](a)
        _set(variables, (e.collection,) + e.path, np.array(value, np.int32 if counter else np.float32, order="C"))
    if problems:
        raise ConversionError(f"{path}: {len(problems)} problem(s) loading {what}:\n  " + "\n  ".join(problems))
    return variables


def load_official(path: str, kind: Optional[str] = None):
    """Reads an official .pt (without torch) -> (kind, config, variables)."""
    from edtalk_jax import torch_io
    ckpt = torch_io.load_pt(path)
    kind = kind or detect_kind(ckpt, path)
    if kind not in KINDS:
        raise ConversionError(f"unknown kind {kind!r}; expected one of {KINDS}")
    cfg, variables = torch_to_flax(kind, state_dict_of(ckpt, kind, path), path)
    return kind, cfg, variables


def save_official(path: str, kind: str, cfg: Dict[str, Any], variables: Dict[str, Any], extra=None) -> None:
    """Writes Flax variables as an official-layout .pt (needs the `torch` extra)."""
    from edtalk_jax import torch_io
    sd = flax_to_torch(kind, cfg, variables)
    key = CHECKPOINT_KEYS[kind]
    torch_io.save_pt(sd if key is None else {key: sd, **(extra or {})}, path)
