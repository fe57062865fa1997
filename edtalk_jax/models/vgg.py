"""The perceptual network of the official VGG loss: torchvision VGG19 features sliced at
relu1_1 ... relu5_1, applied to an anti-aliased image pyramid (FOMM's
AntiAliasInterpolation2d at scales 1, 1/2, 1/4, 1/8).

ImageNet weights are not downloadable here: convert a user-supplied torchvision
`vgg19-*.pth` with `launch.convert --kind vgg19`.
"""

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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PYRAMID_SCALES = (1.0, 0.5, 0.25, 0.125)


class VGG19(nn.Module):
    """img (B, H, W, 3) in [-1, 1] -> the 5 relu*_1 feature maps. Clamps to [-1, 1], maps
    to [0, 1] and normalises with the ImageNet statistics first, as official."""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img) -> Tuple[jnp.ndarray, ...]:
        x = (jnp.clip(img.astype(self.dtype), -1, 1) + 1) / 2
        x = (x - jnp.asarray(IMAGENET_MEAN, self.dtype)) / jnp.asarray(IMAGENET_STD, self.dtype)
        feats = []
        for idx, c in VGG19_CONVS:
            if idx in POOL_BEFORE:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = jax.nn.relu(Conv2d(c, 3, padding=1, dtype=self.dtype, param_dtype=self.param_dtype,
                                   name=f"features_{idx}")(x))
            if idx in SLICE_ENDS:
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
    c = img.shape[-1]
    w = jnp.broadcast_to(jnp.asarray(k, img.dtype)[:, :, None, None], k.shape + (1, c))
    out = jax.lax.conv_general_dilated(img, w, (1, 1), ((ka, kb), (ka, kb)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    step = int(1 / scale)
    return out[:, ::step, ::step]


class PerceptualNetwork(nn.Module):
    """img -> features per pyramid scale: a tuple over scales of the 5 VGG19 maps."""
    scales: Sequence[float] = PYRAMID_SCALES
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img):
        smallest = min(img.shape[1:3]) * min(self.scales)
        if smallest < 16:  # relu5_1 sits after 4 poolings
            raise ValueError(f"perceptual network: {img.shape[1]}x{img.shape[2]} images at scale "
                             f"{min(self.scales)} are {smallest:g} px, below the 16 px VGG19 needs")
        vgg = VGG19(self.dtype, self.param_dtype, name="vgg")
        return tuple(vgg(anti_alias_downsample(img, s)) for s in self.scales)
