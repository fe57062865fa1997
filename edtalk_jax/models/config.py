"""Model widths and sizes: every width is a knob, the official values are the defaults."""

import math
from typing import Tuple

# Official channel table (channel_multiplier 1), by resolution.
OFFICIAL_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def log2_size(size: int) -> int:
    n = int(round(math.log2(size)))
    if 2 ** n != size or size < 16:
        raise ValueError(f"image size must be a power of two >= 16, got {size}")
    return n


def channel_table(size: int, width_div: int = 1, channels=None) -> Tuple[int, ...]:
    """Channels for resolutions 4, 8, ..., size. `channels` (same length) overrides the
    official table divided by `width_div`."""
    n = log2_size(size)
    if channels is not None:
        channels = tuple(int(c) for c in channels)
        if len(channels) != n - 1:
            raise ValueError(f"channels must list {n - 1} widths (resolutions 4..{size}), got {channels}")
        return channels
    return tuple(max(1, OFFICIAL_CHANNELS[2 ** i] // width_div) for i in range(2, n + 1))
