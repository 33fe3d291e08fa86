"""Run a fully convolutional transform over overlapping tiles.

Memory then stays bounded for any image size, and since every tile carries a margin at
least as wide as the transform's receptive field, the stitched output equals the
whole-image output (up to float rounding): no seams.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator
from fractions import Fraction

import torch


def apply_tiled(
    transform: Callable[..., torch.Tensor],
    x: torch.Tensor | tuple[torch.Tensor, ...],
    scale: Fraction,
    tile: int,
    margin: int,
) -> torch.Tensor:
    """transform maps (1, C, H, W) to (1, C', H*scale, W*scale); tile and margin in input units.

    Several inputs of one size (a tuple) are cut alike, and the transform takes their tiles
    in order. tile and margin must be multiples of the input stride (1/scale when scale < 1).
    Each tile's centre is written straight into one preallocated output, so the peak memory
    is the output plus one tile's working set.
    """
    inputs = x if isinstance(x, tuple) else (x,)
    height, width = inputs[0].shape[-2:]
    if any(part.shape[-2:] != (height, width) for part in inputs):
        raise ValueError(f"inputs to cut alike must be of one size, not {[tuple(part.shape) for part in inputs]}")
    if height <= tile + 2 * margin and width <= tile + 2 * margin:
        return transform(*inputs)
    output: torch.Tensor | None = None
    for (top, left, bottom, right), (top_ext, left_ext, bottom_ext, right_ext) in tile_windows(height, width, tile,
                                                                                              margin):
        out = transform(*(part[..., top_ext:bottom_ext, left_ext:right_ext] for part in inputs))
        if output is None:
            output = out.new_empty((*out.shape[:-2], int(height * scale), int(width * scale)))
        y0, x0 = int((top - top_ext) * scale), int((left - left_ext) * scale)
        rows, columns = int((bottom - top) * scale), int((right - left) * scale)
        output[..., int(top * scale) : int(top * scale) + rows, int(left * scale) : int(left * scale) + columns] = (
            out[..., y0 : y0 + rows, x0 : x0 + columns]
        )
        del out
        return_freed_memory(int(height * width * max(1, scale * scale)))  # the image's pixels, either side
    assert output is not None
    return output


def replicate_padded(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., h, w) grown to (..., height, width) by repeating its last row and column: what
    F.pad's replicate mode gives, for any dtype on any device (8-bit pixels on a GPU too)."""
    rows, columns = x.shape[-2:]
    if (rows, columns) == (height, width):
        return x
    padded = x.new_empty((*x.shape[:-2], height, width))
    padded[..., :rows, :columns] = x
    padded[..., :rows, columns:] = x[..., columns - 1 :]
    padded[..., rows:, :] = padded[..., rows - 1 : rows, :]
    return padded


Window = tuple[int, int, int, int]  # top, left, bottom, right
Span = tuple[int, int]  # first, end (exclusive)


def spans(length: int, size: int, margin: int) -> Iterator[tuple[Span, Span]]:
    """Runs of `size` along an axis of `length` (the last shorter), each with its extent
    `margin` either side, clipped to the axis."""
    for first in range(0, length, size):
        end = min(first + size, length)
        yield (first, end), (max(0, first - margin), min(length, end + margin))


def tile_windows(height: int, width: int, tile: int, margin: int) -> Iterator[tuple[Window, Window]]:
    """Each tile's core and its extent with the margin, clipped to the image, in raster order."""
    columns = list(spans(width, tile, margin))
    for (top, bottom), (top_ext, bottom_ext) in spans(height, tile, margin):
        for (left, right), (left_ext, right_ext) in columns:
            yield (top, left, bottom, right), (top_ext, left_ext, bottom_ext, right_ext)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


# Images up to this many pixels keep their finished tiles' freed memory: there, handing it back
# costs more time than the memory is worth, since the next tile faults its working set back in
# (a Kodak encode is 15-20% faster keeping it; docs/robustness.md, scripts/trim_cost.py). Above
# it the peak would grow with the number of tiles.
TRIM_ABOVE_PIXELS = 1_000_000


def return_freed_memory(image_pixels: int) -> None:
    """Hand a finished tile's freed working set back to the system (glibc only), for images of
    more than TRIM_ABOVE_PIXELS.

    glibc keeps freed blocks of tiles of varied sizes in its heap, where they fragment, so
    that the peak grows with the number of tiles rather than staying one tile's working set.
    """
    if image_pixels > TRIM_ABOVE_PIXELS and (trim := _malloc_trim()) is not None:
        trim(0)
