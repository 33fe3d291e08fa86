"""The Python API, used by the command line: images in, .drc bytes out, and back.

    data = diraccodec.encode("photo.png", quality=3)
    image = diraccodec.decode(data)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from diraccodec.codec.base_codec import BaseCodec
from diraccodec.container import drc
from diraccodec.diffusion import detail_map as detail_maps
from diraccodec.diffusion.decoder import DiffusionDecoder
from diraccodec.errors import CorruptFileError, InvalidOptionError, LimitExceededError, WrongWeightsError
from diraccodec.image.planes import (
    Planes,
    compress_alpha,
    decompress_alpha,
    image_to_planes,
    open_image,
    planes_to_image,
)
from diraccodec.modelfiles import (
    DiffusionWeights,
    default_diffusion_path,
    default_restoration_path,
    default_weights_path,
    load_base_weights,
    load_diffusion_weights,
    load_restoration_weights,
)
from diraccodec.restoration.filter import Restorer
from diraccodec.transforms import search as latent_search

MAX_STEPS = 100


@functools.lru_cache(maxsize=4)
def _codec(weights: Path, device: str) -> BaseCodec:
    return BaseCodec(load_base_weights(weights), device)


def get_codec(weights: str | Path | None = None, device: str = "cpu") -> BaseCodec:
    return _codec(Path(weights or default_weights_path()).resolve(), device)


def check_quality(quality: float, num_levels: int) -> float:
    if not isinstance(quality, int | float) or math.isnan(quality) or not 1 <= quality <= num_levels:
        raise InvalidOptionError(f"quality must be between 1 and {num_levels}, got {quality}")
    return drc.quantize_quality(quality) / drc.QUALITY_DENOMINATOR


def check_search_passes(passes: int) -> int:
    if not isinstance(passes, int) or not 0 <= passes <= latent_search.MAX_PASSES:
        raise InvalidOptionError(f"search passes must be between 0 and {latent_search.MAX_PASSES}, got {passes}")
    return passes


def check_steps(steps: int | None) -> int:
    if steps is None:
        return 0
    if not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
        raise InvalidOptionError(f"steps must be between 0 and {MAX_STEPS}, got {steps}")
    return steps


@functools.lru_cache(maxsize=4)
def _restorer(weights: Path, device: str) -> tuple[Restorer, bytes, bytes]:
    loaded = load_restoration_weights(weights)
    assert loaded is not None  # an explicit path either loads or raises
    return Restorer(loaded.model, device), loaded.base_weights_id, loaded.weights_id


def _installed_restorer(device: str) -> tuple[Restorer, bytes, bytes] | None:
    path = default_restoration_path()  # read on every call: $DIRAC_RESTORATION_WEIGHTS may change
    return _restorer(path.resolve(), device) if path.exists() else None


def get_restorer(codec: BaseCodec, device: str = "cpu") -> Restorer | None:
    """The restoration filter for `codec`'s reconstructions, or None where none is installed
    for these base weights (0 steps then give the base synthesis alone)."""
    installed = _installed_restorer(device)
    return installed[0] if installed is not None and installed[1] == codec.weights.weights_id else None


@functools.lru_cache(maxsize=4)
def _diffusion(weights: Path, device: str, restorer: Restorer | None) -> DiffusionDecoder:
    loaded = load_diffusion_weights(weights)
    assert loaded is not None  # an explicit path either loads or raises
    return DiffusionDecoder(loaded.model, loaded.settings, device, restorer)


def get_diffusion(codec: BaseCodec, weights: str | Path | None = None, device: str = "cpu") -> DiffusionDecoder:
    """The diffusion decoder trained on `codec`'s reconstructions (and on the installed
    restoration filter's output, where it was trained on that); a clear error if there is none."""
    # cached by the resolved file, so $DIRAC_DIFFUSION_WEIGHTS is read on every call
    path = Path(weights) if weights else default_diffusion_path()
    if not weights and not path.exists():
        raise InvalidOptionError(
            "diffusion decoding (steps > 0) is not available yet: no diffusion weights are shipped "
            "(weights/diffusion.safetensors); use 0 steps"
        )
    loaded = load_diffusion_weights(path.resolve())
    assert loaded is not None
    if loaded.base_weights_id != codec.weights.weights_id:
        raise WrongWeightsError(
            f"the diffusion weights were trained on base weights {loaded.base_weights_id.hex()}, not on the loaded "
            f"{codec.weights.weights_id.hex()}; use 0 steps or matching diffusion weights"
        )
    return _diffusion(path.resolve(), device, restorer_for(loaded, device))


def restorer_for(diffusion: DiffusionWeights, device: str = "cpu") -> Restorer | None:
    """The installed filter whose output `diffusion` was trained to enhance (None where it
    enhances the base synthesis itself); WrongWeightsError where that filter is not installed."""
    if diffusion.restoration_weights_id is None:
        return None
    installed = _installed_restorer(device)
    if installed is None or installed[2] != diffusion.restoration_weights_id:
        raise WrongWeightsError(
            f"the diffusion weights enhance the output of restoration weights "
            f"{diffusion.restoration_weights_id.hex()}, which are not installed; use 0 steps or matching weights"
        )
    return installed[0]


def encode(
    image: Image.Image | str | Path | bytes,
    quality: float,
    *,
    steps: int | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    max_pixels: int = drc.DEFAULT_MAX_PIXELS,
    label: str | None = None,
    search_passes: int = latent_search.DEFAULT_PASSES,
    progress: latent_search.Progress | None = None,
    detail_map: bool | None = None,
) -> bytes:
    """Compress an image (a PIL image, a path or encoded image bytes) at a rate level 1..8.

    `label` names the input in error messages when it is given as bytes. search_passes=0
    skips the encoder's search for cheaper symbols: faster, a slightly larger file;
    `progress(done, total)` hears of each searched tile. detail_map: whether to send the
    map of where the original has fine detail (None: where the installed diffusion decoder
    uses one at this level; True: at any level, for decoders that may; about 0.0025 bpp, some
    125 bytes per Kodak image).
    """
    codec = get_codec(weights, device)
    quality = check_quality(quality, codec.num_levels)
    search_passes = check_search_passes(search_passes)
    recommended_steps = check_steps(steps) if steps is not None else None
    if not isinstance(image, Image.Image):
        image = open_image(image, max_pixels, label)
    elif image.width * image.height > max_pixels:
        raise LimitExceededError(f"image of {image.width}x{image.height} exceeds the limit of {max_pixels} pixels")
    planes = image_to_planes(image)
    height, width = planes.rgb.shape[:2]
    # the search counts the error the way a 0-step decode will show it: after the filter
    restorer = get_restorer(codec, device) if search_passes else None
    search = latent_search.SearchSettings(search_passes, restorer.model.restore if restorer is not None else None,
                                           progress)
    sections = {drc.TAG_LATENTS: codec.compress(planes.rgb, quality, search)}
    diffusion = _installed_diffusion(codec, device) if detail_map is not False else None
    if detail_map and diffusion is None:
        raise InvalidOptionError("a detail map needs the diffusion weights installed for these base weights")
    if diffusion is not None and (detail_map or diffusion.uses_detail_map(quality)):
        base = codec.decompress(sections[drc.TAG_LATENTS], width, height, quality)
        measured = detail_maps.measure(planes.rgb, diffusion.conditioning(base, quality))
        sections[drc.TAG_DETAIL] = detail_maps.to_payload(measured)
    if planes.alpha is not None:
        sections[drc.TAG_ALPHA] = compress_alpha(planes.alpha)
    if planes.icc_profile:
        sections[drc.TAG_ICC] = planes.icc_profile
    if recommended_steps is not None:
        sections[drc.TAG_STEPS] = bytes([recommended_steps])
    return drc.pack(
        drc.DrcFile(
            width=width,
            height=height,
            colour_mode=planes.colour_mode,
            quality=quality,
            weights_id=codec.weights.weights_id,
            sections=sections,
        )
    )


def _installed_diffusion(codec: BaseCodec, device: str) -> DiffusionDecoder | None:
    """The installed diffusion decoder for `codec`, None where there is none that fits."""
    try:
        return get_diffusion(codec, device=device)
    except (InvalidOptionError, WrongWeightsError):
        return None


@dataclass
class FileInfo:
    header: drc.DrcFile
    file_size: int

    @property
    def bits_per_pixel(self) -> float:
        return 8 * self.file_size / self.header.pixels

    @property
    def recommended_steps(self) -> int | None:
        value = self.header.sections.get(drc.TAG_STEPS)
        return value[0] if value else None

    @property
    def detail_map(self) -> detail_maps.DetailMap | None:
        """The encoder's map of where the original has fine detail, where the file has one."""
        payload = self.header.sections.get(drc.TAG_DETAIL)
        return detail_maps.from_payload(payload, self.header.width, self.header.height) if payload else None


def inspect(data: bytes, max_pixels: int = drc.DEFAULT_MAX_PIXELS) -> FileInfo:
    return FileInfo(drc.unpack(data, max_pixels), len(data))


def decode(
    data: bytes,
    steps: int | None = None,
    seed: int | None = None,
    *,
    weights: str | Path | None = None,
    diffusion_weights: str | Path | None = None,
    device: str = "cpu",
    max_pixels: int = drc.DEFAULT_MAX_PIXELS,
    fast: bool = False,
    restore: bool = True,
) -> Image.Image:
    """Decompress .drc bytes. steps=None uses the file's recommendation (0 if it has none).

    0 steps gives the base reconstruction, corrected by the restoration filter where one is
    installed for these weights (restore=False: the base synthesis alone); more steps add
    realistic detail with the diffusion decoder. The same file, steps and seed always give
    the same pixels; with fast=True (oneDNN kernels for the U-Nets) only on the same thread
    count.
    """
    header = drc.unpack(data, max_pixels)
    codec = get_codec(weights, device)
    if header.weights_id != codec.weights.weights_id:
        raise WrongWeightsError(
            f"file was made with weights {header.weights_id.hex()}, but the loaded weights are "
            f"{codec.weights.weights_id.hex()} ({codec.weights.path.name}); decode it with the weights that made it"
        )
    if header.quality > codec.num_levels:
        raise CorruptFileError(f"corrupt .drc file (quality {header.quality} above the model's {codec.num_levels})")
    info = FileInfo(header, len(data))
    steps = check_steps(info.recommended_steps if steps is None else steps)
    diffusion = get_diffusion(codec, diffusion_weights, device) if steps > 0 else None
    rgb = codec.decompress(header.sections[drc.TAG_LATENTS], header.width, header.height, header.quality)
    if diffusion is not None:
        rgb = diffusion.enhance(rgb, header.quality, steps, seed, fast, info.detail_map)
    elif restore and (restorer := get_restorer(codec, device)) is not None:
        rgb = restorer.restore(rgb, header.quality, fast)
    alpha = None
    if header.colour_mode.has_alpha:
        if drc.TAG_ALPHA not in header.sections:
            raise CorruptFileError("corrupt .drc file (alpha plane missing)")
        alpha = decompress_alpha(header.sections[drc.TAG_ALPHA], header.width, header.height)
    return planes_to_image(Planes(rgb, header.colour_mode, alpha, header.sections.get(drc.TAG_ICC)))
