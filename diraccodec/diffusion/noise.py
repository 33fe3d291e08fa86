"""Gaussian noise from a counter-based generator: the same numbers on every device and tiling.

Each value is a hash of its position in the image (channel, row, column), of the seed and of
the draw, so any part of the noise can be made on its own, in any order, on the CPU or a
GPU. The hash is integer arithmetic in int64 with every product below 2^63, exact everywhere;
two uniforms per value become one normal by the Box-Muller transform, in float32, where the
devices' logarithm and cosine agree to their last bits or within a few units of them.
"""

from __future__ import annotations

import math

import torch

_MASK = 0xFFFFFFFF
# Two multiply-xorshift rounds with odd multipliers below 2^31 (so a 32-bit value times one fits
# in int64): an avalanche hash of the lowbias32 family.
_MULTIPLIERS = (0x21F0AAAD, 0x735A2D97)
_GOLDEN = 0x9E3779B9
# Values made at a time (whole rows), so that the int64 working set (about 70 bytes a value)
# stays small on a large image: 18 MiB on a CPU; a GPU makes 16 times as many, in about 0.3
# GiB, so that a 12-megapixel draw is about 840 kernel launches rather than 11,800
_VALUES_AT_ONCE = {"cpu": 1 << 18, "cuda": 1 << 22}


def mix32(value: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values in [0, 2^32)."""
    value = value ^ (value >> 16)
    value = (value * _MULTIPLIERS[0]) & _MASK
    value = value ^ (value >> 15)
    value = (value * _MULTIPLIERS[1]) & _MASK
    return value ^ (value >> 15)


def _key(seed: int, draw: int, stream: int) -> int:
    """A 32-bit key for one draw of one of the two uniform streams, from any integer seed."""
    words = [(seed >> shift) & _MASK for shift in (0, 32)] + [draw & _MASK, stream]
    key = _GOLDEN
    for word in words:
        key = int(mix32(torch.tensor([(key + word) & _MASK], dtype=torch.int64))[0])
    return key


def _uniform(counter: torch.Tensor, key: int) -> torch.Tensor:
    """Floats in [2^-25, 1] from int64 counters below 2^40 and a key: 24 bits of two hash rounds."""
    low, high = counter & _MASK, counter >> 32
    hashed = mix32(mix32(low ^ key) ^ ((high + key) & _MASK))
    return ((hashed >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def gaussian_noise(shape: tuple[int, int, int, int], seed: int, draw: int, device: torch.device | str = "cpu",
                   values_at_once: int | None = None) -> torch.Tensor:
    """(1, C, H, W) standard normal noise, value (c, y, x) a function of (seed, draw, c, y, x, H, W)
    alone: the same in whatever bands of rows it is made (values_at_once: the device's default)."""
    batch, channels, height, width = shape
    if batch != 1:
        raise ValueError("noise is drawn for one image at a time")
    values_at_once = values_at_once or _VALUES_AT_ONCE.get(torch.device(device).type, _VALUES_AT_ONCE["cpu"])
    output = torch.empty(shape, dtype=torch.float32, device=device)
    keys = _key(seed, draw, 0), _key(seed, draw, 1)
    columns = torch.arange(width, device=device, dtype=torch.int64)
    rows_at_once = max(1, values_at_once // (channels * width))
    for top in range(0, height, rows_at_once):
        rows = torch.arange(top, min(top + rows_at_once, height), device=device, dtype=torch.int64)
        planes = torch.arange(channels, device=device, dtype=torch.int64)
        counter = (planes[:, None, None] * height + rows[None, :, None]) * width + columns[None, None, :]
        radius = torch.sqrt(-2.0 * torch.log(_uniform(counter, keys[0])))
        angle = (2.0 * math.pi) * _uniform(counter, keys[1])
        output[0, :, top : top + rows.numel()] = radius * torch.cos(angle)
    return output
