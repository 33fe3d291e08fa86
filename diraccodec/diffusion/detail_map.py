"""The detail map: how much fine detail the original has, block by block, sent beside the latents.

At coarse levels the decoder cannot tell a textured patch from a smooth one in a blurry base
image, so it spreads its synthesized detail evenly: too much on skies, too little on foliage.
The encoder knows better. For each 32x32 block it measures the RMS of the fine detail that
the base reconstruction lacks (the original minus the base, minus its Gaussian blur of sigma
1 px), quantised to half octaves: about 125 bytes for a Kodak image. The decoder scales the
fine detail of its finished residual so that each block's RMS becomes a share of that (the
level's `detail_match`), within bounds, the scales blended bilinearly between block centres.
This is texture-energy side information in the manner of a film-grain model: it steers how
much detail appears where, never which detail, and it needs no diffusion at encode time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from diraccodec.entropy.map_coder import decode_map, encode_map
from diraccodec.errors import CorruptFileError
from diraccodec.image.filters import blur_radius, gaussian_blur
from diraccodec.transforms.tiling import spans

BLOCK = 32
STEPS_PER_OCTAVE = 2  # of the RMS: steps of sqrt(2)
LOWEST_CODE, HIGHEST_CODE = -24, 0  # RMS from 2^-12 (below: as good as none) to 1, in [0, 1] pixel units
DETAIL_SIGMA = 1.0
_RADIUS = blur_radius(DETAIL_SIGMA)
_ROWS_AT_ONCE = 8  # block rows measured together, so memory stays small for any image size


@dataclass(frozen=True)
class DetailMap:
    block: int
    codes: np.ndarray  # (rows, columns) integers: STEPS_PER_OCTAVE * log2 of each block's RMS

    def rms(self) -> torch.Tensor:
        """(1, 1, rows, columns) RMS of the original's missing fine detail, in [0, 1] pixel units."""
        return torch.from_numpy(2.0 ** (self.codes / STEPS_PER_OCTAVE)).float()[None, None]


def map_shape(width: int, height: int, block: int) -> tuple[int, int]:
    return -(-height // block), -(-width // block)


def fine_detail(image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) minus its Gaussian blur: the band the detail map measures."""
    return image - gaussian_blur(image, DETAIL_SIGMA)


def block_energy(detail: torch.Tensor, block: int) -> torch.Tensor:
    """(1, 1, rows, columns) mean square of (1, C, H, W) `detail` over channels and each block
    (a partial block at the edge over its own pixels)."""
    return F.avg_pool2d(detail.square().mean(dim=1, keepdim=True), block, ceil_mode=True)


def measure(original_rgb: np.ndarray, base_rgb: np.ndarray, block: int = BLOCK,
            device: torch.device | str = "cpu") -> DetailMap:
    """The encoder's side: (H, W, 3) uint8 original and base reconstruction -> the detail map.

    Measured in bands of block rows, each with the blur's margin of real pixels around it, so
    the map is the whole image's and the memory that of a band; on `device`, band by band."""
    energies = []
    for (top, bottom), (above, below) in spans(original_rgb.shape[0], block * _ROWS_AT_ONCE, _RADIUS):

        def band(rgb: np.ndarray, above: int = above, below: int = below) -> torch.Tensor:
            pixels = torch.from_numpy(np.require(rgb[above:below], np.uint8, ["C", "W"])).to(device)
            return pixels.permute(2, 0, 1)[None].float() / 255

        detail = fine_detail(band(original_rgb) - band(base_rgb))[..., top - above : bottom - above, :]
        energies.append(block_energy(detail, block))
    rms = torch.cat(energies, dim=2)[0, 0].double().sqrt().clamp_min(2.0**-13).cpu().numpy()
    codes = np.clip(np.round(STEPS_PER_OCTAVE * np.log2(rms)), LOWEST_CODE, HIGHEST_CODE).astype(np.int64)
    return DetailMap(block, codes)


def to_payload(detail_map: DetailMap) -> bytes:
    """Block side (1 byte), steps per octave (1 byte), then the range-coded codes."""
    return bytes([detail_map.block, STEPS_PER_OCTAVE]) + encode_map(detail_map.codes, LOWEST_CODE, HIGHEST_CODE)


def from_payload(payload: bytes, width: int, height: int) -> DetailMap:
    if len(payload) < 2 or payload[0] < 8 or payload[1] != STEPS_PER_OCTAVE:
        raise CorruptFileError("corrupt .drc file (detail map header)")
    block = payload[0]
    return DetailMap(block, decode_map(payload[2:], map_shape(width, height, block), LOWEST_CODE, HIGHEST_CODE))


Emit = Callable[[int, int, torch.Tensor], None]  # (first row, end row, those rows of the result)


def match_detail(residual: torch.Tensor, detail_map: DetailMap, strength: float,
                 bounds: tuple[float, float], share: float = 1.0) -> torch.Tensor:
    """The decoder's side: scale the fine detail of (1, 3, H, W) `residual` so that each block's
    RMS becomes `strength` times the map's, the scale kept within `bounds` and raised to
    `share` (fewer steps than the finishing's full count apply part of it)."""
    rows: list[torch.Tensor] = []
    match_detail_in_bands(residual, detail_map, strength, bounds, share, residual.shape[-2],
                          lambda first, end, matched: rows.append(matched))
    return torch.cat(rows, dim=-2)


def match_detail_in_bands(residual: torch.Tensor, detail_map: DetailMap, strength: float,
                          bounds: tuple[float, float], share: float, rows: int, emit: Emit) -> None:
    """`match_detail` by bands of `rows` rows (a multiple of the map's block), each handed to
    `emit` in order: the same values, with one band's working set beside the residual."""
    height = residual.shape[-2]

    def details() -> Iterator[tuple[int, int, torch.Tensor]]:
        for (top, bottom), (above, below) in spans(height, rows, _RADIUS):
            yield top, bottom, fine_detail(residual[..., above:below, :])[..., top - above : bottom - above, :]

    energy = torch.cat([block_energy(detail, detail_map.block) for _, _, detail in details()], dim=2)
    if energy.shape != (1, 1, *detail_map.codes.shape):
        raise CorruptFileError("corrupt .drc file (detail map does not fit the image)")
    target = strength * detail_map.rms().to(residual)
    scale = (target / energy.sqrt().clamp_min(1e-6)).clamp(*bounds) ** share
    scale = F.interpolate(scale, size=residual.shape[-2:], mode="bilinear", align_corners=False)  # one plane
    for top, bottom, detail in details():  # the fine detail again, rather than kept for the whole image
        emit(top, bottom, residual[..., top:bottom, :] + (scale[..., top:bottom, :] - 1) * detail)
