"""Run a fully convolutional transform over overlapping tiles.

Memory then stays bounded for any image size, and since every tile carries a margin at
least as wide as the transform's receptive field, the stitched output equals the
whole-image output (up to float rounding): no seams.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch


def apply_tiled(
    transform: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: Fraction,
    tile: int,
    margin: int,
) -> torch.Tensor:
    """transform maps (1, C, H, W) to (1, C', H*scale, W*scale); tile and margin in input units.

    tile and margin must be multiples of the input stride (1/scale when scale < 1).
    """
    height, width = x.shape[-2:]
    if height <= tile + 2 * margin and width <= tile + 2 * margin:
        return transform(x)
    rows = []
    for top in range(0, height, tile):
        row = []
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            top_ext, left_ext = max(0, top - margin), max(0, left - margin)
            bottom_ext, right_ext = min(height, bottom + margin), min(width, right + margin)
            out = transform(x[..., top_ext:bottom_ext, left_ext:right_ext])
            y0, x0 = int((top - top_ext) * scale), int((left - left_ext) * scale)
            row.append(out[..., y0 : y0 + int((bottom - top) * scale), x0 : x0 + int((right - left) * scale)])
        rows.append(torch.cat(row, dim=-1))
    return torch.cat(rows, dim=-2)
