"""The Inception v3 of FID (pytorch-fid's `InceptionV3([3])`, TF-FID's 2015-12-05 graph), frozen.

Talking-head papers report FID with pytorch-fid (mseitzer/pytorch-fid 0.3.0), whose network
is torchvision's `Inception3` with TF-FID's blocks patched in and TF's weights
(`pt_inception-2015-12-05-6726825d.pth`). Replicated here, up to the 2048-d pool3 features:

* input (B, H, W, 3) RGB in [0, 1] -> bilinear resize to 299 x 299 (`F.interpolate`,
  align_corners=False, no antialiasing) -> 2x - 1 (`resize_input`, `normalize_input`);
* every conv is torchvision's `BasicConv2d`: Conv2d (no bias) + BatchNorm2d (eps 0.001, eval
  mode: running statistics) + ReLU;
* the stem as pytorch-fid's blocks 0-1 (max pools 3x3 stride 2, no padding);
* FID's blocks: `FIDInceptionA`/`C` and `FIDInceptionE_1` average-pool their branch_pool input
  with count_include_pad=False (TF's average pool ignores the padding), `FIDInceptionE_2`
  (Mixed_7c) max-pools it instead (3x3, stride 1, padding 1); Mixed_6a/7a are torchvision's
  InceptionB/D unchanged;
* global average pool -> (B, 2048). The classifier (`fc`, 1008 classes) is never used.

Convolutions run in float32 at `Precision.HIGHEST` (no TF32/bf16 passes on GPU/TPU), so the
features match torch's float32 ones on any backend.

Weights: a user's `pt_inception-2015-12-05-6726825d.pth` (from the pytorch-fid release; this
package downloads nothing) through `load_fid_inception`, read by the safe `torch_io` reader
(no torch needed, no pickle code run). Variables mirror the torch names:
{"params": {"Conv2d_1a_3x3" | "Mixed_5b": {"branch1x1": ...}: {"conv": {"kernel"}, "bn": {"scale",
"bias"}}}, "batch_stats": {...: {"bn": {"mean", "var"}}}}.
"""

from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax import convert_torch as ct
from edtalk_jax import torch_io

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INPUT_SIZE = 299
FEATURES = 2048
BN_EPS = 1e-3  # torchvision BasicConv2d (TF's value)


def _conv(name, out, k, s=1, p=0):
    """A BasicConv2d: name, out channels, kernel (h, w), stride, padding (h, w)."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    return ("conv", name, out, pair(k), s, pair(p))


AVG = ("avg",)  # 3x3 stride 1 pad 1, count_include_pad=False (the FID patch)
MAX = ("max", 1)  # 3x3 stride 1 pad 1 (FIDInceptionE_2)
MAX_S2 = ("max", 2)  # 3x3 stride 2, no padding
_split = lambda a, b: ("split", a, b)  # two convs on the same input, concatenated


def _a(pool_features):
    return ((_conv("branch1x1", 64, 1),),
            (_conv("branch5x5_1", 48, 1), _conv("branch5x5_2", 64, 5, p=2)),
            (_conv("branch3x3dbl_1", 64, 1), _conv("branch3x3dbl_2", 96, 3, p=1), _conv("branch3x3dbl_3", 96, 3, p=1)),
            (AVG, _conv("branch_pool", pool_features, 1)))


def _c(c7):
    return ((_conv("branch1x1", 192, 1),),
            (_conv("branch7x7_1", c7, 1), _conv("branch7x7_2", c7, (1, 7), p=(0, 3)),
             _conv("branch7x7_3", 192, (7, 1), p=(3, 0))),
            (_conv("branch7x7dbl_1", c7, 1), _conv("branch7x7dbl_2", c7, (7, 1), p=(3, 0)),
             _conv("branch7x7dbl_3", c7, (1, 7), p=(0, 3)), _conv("branch7x7dbl_4", c7, (7, 1), p=(3, 0)),
             _conv("branch7x7dbl_5", 192, (1, 7), p=(0, 3))),
            (AVG, _conv("branch_pool", 192, 1)))


def _e(pool):
    return ((_conv("branch1x1", 320, 1),),
            (_conv("branch3x3_1", 384, 1),
             _split(_conv("branch3x3_2a", 384, (1, 3), p=(0, 1)), _conv("branch3x3_2b", 384, (3, 1), p=(1, 0)))),
            (_conv("branch3x3dbl_1", 448, 1), _conv("branch3x3dbl_2", 384, 3, p=1),
             _split(_conv("branch3x3dbl_3a", 384, (1, 3), p=(0, 1)), _conv("branch3x3dbl_3b", 384, (3, 1), p=(1, 0)))),
            (pool, _conv("branch_pool", 192, 1)))


_B = ((_conv("branch3x3", 384, 3, s=2),),
      (_conv("branch3x3dbl_1", 64, 1), _conv("branch3x3dbl_2", 96, 3, p=1), _conv("branch3x3dbl_3", 96, 3, s=2)),
      (MAX_S2,))
_D = ((_conv("branch3x3_1", 192, 1), _conv("branch3x3_2", 320, 3, s=2)),
      (_conv("branch7x7x3_1", 192, 1), _conv("branch7x7x3_2", 192, (1, 7), p=(0, 3)),
       _conv("branch7x7x3_3", 192, (7, 1), p=(3, 0)), _conv("branch7x7x3_4", 192, 3, s=2)),
      (MAX_S2,))

# pytorch-fid's blocks 0-3 (output_blocks=[3]): the stem's steps, then (name, branches) blocks.
STEM = (_conv("Conv2d_1a_3x3", 32, 3, s=2), _conv("Conv2d_2a_3x3", 32, 3), _conv("Conv2d_2b_3x3", 64, 3, p=1),
        MAX_S2, _conv("Conv2d_3b_1x1", 80, 1), _conv("Conv2d_4a_3x3", 192, 3), MAX_S2)
MIXED = (("Mixed_5b", _a(32)), ("Mixed_5c", _a(64)), ("Mixed_5d", _a(64)), ("Mixed_6a", _B),
         ("Mixed_6b", _c(128)), ("Mixed_6c", _c(160)), ("Mixed_6d", _c(160)), ("Mixed_6e", _c(192)),
         ("Mixed_7a", _D), ("Mixed_7b", _e(AVG)), ("Mixed_7c", _e(MAX)))


class BasicConv(nn.Module):
    out: int
    kernel: Tuple[int, int]
    stride: int = 1
    padding: Tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        (ph, pw), s = self.padding, self.stride
        x = nn.Conv(self.out, self.kernel, (s, s), ((ph, ph), (pw, pw)), use_bias=False,
                    precision=jax.lax.Precision.HIGHEST, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _step(x, step):
    """Runs one table step (conv, pool or split) on x, creating convs in the current module."""
    kind = step[0]
    if kind == "conv":
        _, name, out, k, s, p = step
        return BasicConv(out, k, s, p, name=name)(x)
    if kind == "split":
        return jnp.concatenate([_step(x, step[1]), _step(x, step[2])], axis=-1)
    if kind == "avg":
        return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)
    if kind == "max":
        s = step[1]
        return nn.max_pool(x, (3, 3), (s, s), ((1, 1), (1, 1)) if s == 1 else "VALID")
    raise ValueError(f"unknown step {step!r}")


class Mixed(nn.Module):
    branches: Tuple[Any, ...]

    @nn.compact
    def __call__(self, x):
        outs = []
        for branch in self.branches:
            y = x
            for step in branch:
                y = _step(y, step)
            outs.append(y)
        return jnp.concatenate(outs, axis=-1)


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix of torch's 1-D bilinear interpolation, align_corners=False,
    no antialias (`F.interpolate(..., mode='bilinear')` is separable: rows, then columns).

    Weights bit-exact to torch's CPU kernel: float32 scale in/out, source coordinate
    scale * (i + 0.5) - 0.5 rounded once (a fused multiply-add), clamped at 0;
    lambda1 = src - floor(src), lambda0 = 1 - lambda1 in float32."""
    f32 = np.float32
    scale = np.float64(f32(n_in) / f32(n_out))
    src = np.maximum((scale * (np.arange(n_out) + 0.5) - 0.5).astype(f32), f32(0))  # exact product, one rounding
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
    m = np.zeros((n_out, n_in), f32)
    np.add.at(m, (np.arange(n_out), i0), f32(1) - lam1)
    np.add.at(m, (np.arange(n_out), i1), lam1)
    return m


def resize_bilinear(x, size: int = FID_INPUT_SIZE):
    """(B, H, W, C) -> (B, size, size, C), as torch's bilinear F.interpolate(align_corners=False)."""
    _, h, w, _ = x.shape
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", resize_matrix(h, size), x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", resize_matrix(w, size), x, precision=hi)


class FIDInception(nn.Module):
    """pytorch-fid's InceptionV3(output_blocks=[3], use_fid_inception=True) in NHWC.

    __call__(images (B, H, W, 3) RGB float in [0, 1]) -> pool3 features (B, 2048) float32."""
    resize_input: bool = True
    normalize_input: bool = True

    @nn.compact
    def __call__(self, images):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FIDInception takes images (B, H, W, 3); got {images.shape}")
        x = images.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x)
        if self.normalize_input:
            x = 2 * x - 1
        for step in STEM:
            x = _step(x, step)
        for name, branches in MIXED:
            x = Mixed(branches, name=name)(x)
        return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------ pytorch-fid weights
def _convs(steps, prefix: Tuple[str, ...] = ()) -> List[Tuple[str, ...]]:
    """Flax paths of every BasicConv in a table (split steps included), in table order."""
    out = []
    for step in steps:
        if step[0] == "conv":
            out.append(prefix + (step[1],))
        elif step[0] == "split":
            out += _convs(step[1:], prefix)
    return out


def conv_paths() -> List[Tuple[str, ...]]:
    """Every BasicConv of the network: ("Conv2d_1a_3x3",), ("Mixed_5b", "branch1x1"), ..."""
    paths = _convs(STEM)
    for name, branches in MIXED:
        for branch in branches:
            paths += _convs(branch, (name,))
    return paths


# torch key suffix of a BasicConv -> (collection, flax sub-path, OIHW conv weight?)
_BASIC_CONV = (("conv.weight", "params", ("conv", "kernel"), True),
               ("bn.weight", "params", ("bn", "scale"), False),
               ("bn.bias", "params", ("bn", "bias"), False),
               ("bn.running_mean", "batch_stats", ("bn", "mean"), False),
               ("bn.running_var", "batch_stats", ("bn", "var"), False))


def _ignored(key: str, convs: set) -> bool:
    """In the file, never read: the classifier and BatchNorm counters (absent before torch 0.4.1)."""
    if key in ("fc.weight", "fc.bias"):
        return True
    return key.endswith(".bn.num_batches_tracked") and key[:-len(".bn.num_batches_tracked")] in convs


def load_fid_inception(path: str) -> Dict[str, Any]:
    """pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` -> FIDInception variables
    {"params", "batch_stats"} (float32 numpy trees).

    Every tensor is checked: missing, unexpected and mis-shaped keys are reported together in
    one `ConversionError` naming the file and each key. `fc.*` and BatchNorm's
    `num_batches_tracked` may be present or not (never read)."""
    if not path:
        raise ValueError(f"no FID Inception weights given: FID needs pytorch-fid's {FID_WEIGHTS_FILE} "
                         "(https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights)")
    sd = torch_io.load_pt(path)
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in sd.items()):
        raise ct.ConversionError(f"{path}: not a state_dict (a dict str -> tensor) like {FID_WEIGHTS_FILE}; "
                                 f"got {type(sd).__name__}")
    shapes = jax.eval_shape(FIDInception(resize_input=False).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, FID_INPUT_SIZE, FID_INPUT_SIZE, 3)))
    convs = {".".join(p) for p in conv_paths()}
    entries = [ct.Entry(".".join(fpath) + "." + suffix, col, fpath + sub, "conv" if is_conv else "same")
               for fpath in conv_paths() for suffix, col, sub, is_conv in _BASIC_CONV]
    return ct.convert_entries(sd, entries, shapes, path, f"the FID Inception ({FID_WEIGHTS_FILE})",
                              ignore=lambda k: _ignored(k, convs))
