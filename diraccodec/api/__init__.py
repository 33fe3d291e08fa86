"""The Python API, used by the command line and the Pillow plugin: images in, .drc bytes out, and back.

    data = diraccodec.encode("photo.png", quality=3)
    image = diraccodec.decode(data, steps=20)

Every call is safe from several threads at once: the networks run one call at a time (each
already uses every core), so concurrent calls give the bytes and pixels of serial ones.
An encoder's output depends only on its input, its options and the installed weights, on a
given CPU and thread count; a GPU's kernels may sum in another order from run to run
(scripts/gpu_check.py measures whether its files repeat).

Its parts: `arguments` (the checks of the options), `models` (the installed models, loaded
and cached) and `encoding` (one image's files and size targets); this module holds the calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diraccodec.api.arguments import (
    MAX_PATH_LENGTH,
    DecodeOptions,
    bpp_to_bytes,
    check_decode_options,
    check_effort,
    check_flag,
    check_max_pixels,
    check_progress,
    check_quality,
    check_seed,
    check_size,
    check_steps,
    check_weights_path,
    compute_for,
    file_bytes,
    image_file_bytes,
    weights_id_bytes,
)
from diraccodec.api.encoding import DETAIL_MAP_BELOW_LAMBDA, EncodeOptions, Encoder, detail_map_below, encode_to_size
from diraccodec.api.models import (
    Support,
    codec_for_file,
    diffusion_support,
    diffusion_weights_for,
    get_codec,
    get_diffusion,
    get_restorer,
    model_calls,
    restoration_support,
    restorer_for,
    serving_weights_id,
)
from diraccodec.codec.base_codec import LOWEST_LEVEL, BaseCodec
from diraccodec.container import drc
from diraccodec.diffusion import detail_map as detail_maps
from diraccodec.diffusion.decoder import DiffusionDecoder
from diraccodec.entropy.latent_stream import Arithmetic
from diraccodec.errors import ImageReadError, InvalidOptionError, LimitExceededError, counted
from diraccodec.image.metadata import Metadata
from diraccodec.image.planes import (
    Planes,
    decompress_alpha,
    image_to_planes,
    loaded,
    open_image,
    planes_to_image,
    upright,
)
from diraccodec.options import AUTO, DEFAULT_EFFORT, EFFORT_PASSES, MAX_STEPS, Progress

# The API: the package re-exports encode, decode and inspect; the rest serves the command
# line, the batch, the evaluation and callers that keep models or check options themselves.
__all__ = [
    "DEFAULT_EFFORT",
    "DETAIL_MAP_BELOW_LAMBDA",
    "EFFORT_PASSES",
    "MAX_PATH_LENGTH",
    "MAX_STEPS",
    "STREAM_RULES",
    "DecodeOptions",
    "EncodeOptions",
    "Encoder",
    "FileInfo",
    "StreamBytes",
    "StreamRules",
    "Support",
    "bpp_to_bytes",
    "check_decode_options",
    "check_effort",
    "check_flag",
    "check_max_pixels",
    "check_progress",
    "check_quality",
    "check_seed",
    "check_size",
    "check_steps",
    "check_weights_path",
    "codec_for_file",
    "compute_for",
    "decode",
    "detail_map_below",
    "diffusion_support",
    "diffusion_weights_for",
    "encode",
    "encode_to_size",
    "file_bytes",
    "get_codec",
    "get_diffusion",
    "get_restorer",
    "image_file_bytes",
    "inspect",
    "model_calls",
    "restoration_support",
    "restore_or_enhance",
    "restorer_for",
    "serving_weights_id",
    "stream_bytes",
    "weights_id_bytes",
]


@dataclass(frozen=True)
class StreamRules:
    """How a format version's latent stream is read (docs/format.md)."""

    arithmetic: Arithmetic  # how its entropy parameters are computed
    whole_grid: bool  # it codes the padding's latents too


# Each format version's rules (drc.READABLE_VERSIONS); the encoder writes drc.version_for(level).
STREAM_RULES = {
    1: StreamRules(Arithmetic.FLOAT64_CPU, whole_grid=True),
    2: StreamRules(Arithmetic.FIXED_POINT, whole_grid=True),
    3: StreamRules(Arithmetic.FIXED_POINT, whole_grid=False),
    4: StreamRules(Arithmetic.FIXED_POINT, whole_grid=False),  # version 3 with a signed level
}


def _recommended_steps(info: FileInfo) -> int:
    """The steps the file recommends (0 where it names none). Its byte can say up to 255, more
    than this decoder runs: the error then names the file, not an option the caller never gave."""
    steps = info.recommended_steps or 0
    if steps > MAX_STEPS:
        raise InvalidOptionError(f"the file recommends {steps} diffusion steps, more than the {MAX_STEPS} "
                                 f"this decoder runs: give the steps to decode with")
    return steps


def encode(
    image: Image.Image | str | Path | bytes,
    quality: float | None = None,
    *,
    effort: int = DEFAULT_EFFORT,
    size: int | None = None,
    bpp: float | None = None,
    steps: int | None = None,
    detail_map: bool | None = None,
    weights: str | Path | None = None,
    device: str | torch.device | None = AUTO,
    max_pixels: int = drc.DEFAULT_MAX_PIXELS,
    label: str | None = None,
    progress: Progress | None = None,
    metadata: bool = True,
) -> bytes:
    """Compress an image (a PIL image, a path or encoded image bytes) into .drc bytes.

    The rate is a level `quality` from -1 to 8 (fractions allowed), or a target: `size` in
    bytes or `bpp` in bits per pixel, reached by searching the fractional level (the file is
    at or under the target). `effort` 1 (plain rounding, fastest) to 5 (2 by default) spends more time on
    cheaper latents; `progress(done, total)` hears of each searched tile. `steps` stores a
    recommended step count. `detail_map`: whether to send the map of where the original has
    fine detail, which the diffusion decoder steers by (None: below level 3, where the shipped
    decoder uses it; about 125 bytes per Kodak image). `label` names byte input in errors.
    `metadata=False` leaves out the image's EXIF and XMP (carried by default, without the EXIF
    thumbnail; diraccodec.image.metadata); the ICC profile is always kept.
    """
    targets = [name for name, value in (("quality", quality), ("size", size), ("bpp", bpp)) if value is not None]
    if len(targets) != 1:
        raise InvalidOptionError("give exactly one of quality, size or bpp" if targets else
                                 f"give a quality ({LOWEST_LEVEL:g} to 8), a size in bytes or a bpp")
    metadata = check_flag("metadata", metadata)
    options = EncodeOptions(check_effort(effort), check_flag("detail_map", detail_map, none_allowed=True),
                            check_steps(steps), check_progress(progress))
    max_pixels = check_max_pixels(max_pixels)
    check_weights_path("weights", weights)
    compute = compute_for(device)
    shown = label or ("the image" if isinstance(image, Image.Image) else "input data")  # in warnings
    if isinstance(image, str | os.PathLike):
        if len(str(image)) > MAX_PATH_LENGTH:  # text, not a path: not echoed
            raise InvalidOptionError(f"an image path is at most {MAX_PATH_LENGTH} characters, got "
                                     f"{type(image).__name__} of {counted(len(str(image)), 'character')}")
        if not str(image):
            raise InvalidOptionError("the image path is empty")
        shown = str(image)  # named by its path: a label names data
        image = open_image(image, max_pixels)  # a .drc file, whatever its name, is refused there
    elif not isinstance(image, Image.Image):
        image = open_image(image_file_bytes(image, max_pixels), max_pixels, label)
    else:  # as open_image reads and turns a file's (the Pillow plugin's save comes here)
        LimitExceededError.check(image.width, image.height, max_pixels, label)
        image = upright(loaded(image, max_pixels, label))
    if image.width == 0 or image.height == 0:
        raise ImageReadError(f"{shown} has no pixels ({image.width}x{image.height})")
    planes = image_to_planes(image, metadata, shown)
    del image
    with model_calls():
        codec = get_codec(weights, compute)
        if quality is not None:
            return Encoder(planes, codec, options).file(check_quality(quality, codec.num_levels))
        # the target is checked before the analysis transform runs
        target = check_size(size) if size is not None else bpp_to_bytes(bpp, planes.rgb.shape[0] * planes.rgb.shape[1])
        return encode_to_size(Encoder(planes, codec, options), target, codec.num_levels)


@dataclass
class FileInfo:
    """What `inspect` reads of a .drc file without decoding it: its header and sections, and
    the figures derived from them (`dirac info` shows these)."""

    header: drc.DrcFile
    file_size: int

    @property
    def bits_per_pixel(self) -> float:
        return 8 * self.file_size / self.header.pixels

    @property
    def recommended_steps(self) -> int | None:
        return self.header.recommended_steps

    @property
    def detail_map(self) -> detail_maps.DetailMap | None:
        """The encoder's map of where the original has fine detail, where the file has one."""
        payload = self.header.sections.get(drc.TAG_DETAIL)  # an empty one is refused, as any under 2 bytes
        return None if payload is None else detail_maps.from_payload(payload, self.header.width, self.header.height)

    @property
    def icc_profile(self) -> bytes | None:
        return self.header.icc_profile

    @property
    def metadata(self) -> Metadata:
        return self.header.metadata

    @property
    def alpha_payload(self) -> bytes | None:
        """The compressed alpha plane, where the colour mode has alpha (its absence is corrupt)."""
        return self.header.alpha_payload

    def check_sections(self) -> None:
        """Read the sections that every decode reads before its work (the alpha plane's
        presence, the profile, the metadata), as Image.open does: a damaged one raises
        CorruptFileError now, not on first use. The alpha plane's contents and the detail map
        (read only with steps) are checked where they are decoded, as docs/format.md says."""
        _ = self.alpha_payload, self.icc_profile, self.metadata


def inspect(data: bytes, max_pixels: int = drc.DEFAULT_MAX_PIXELS) -> FileInfo:
    """The file's header and sections, checked (drc.unpack, FileInfo.check_sections) but not
    decoded: no model is loaded."""
    data = file_bytes(data)
    info = FileInfo(drc.unpack(data, check_max_pixels(max_pixels)), len(data))
    info.check_sections()
    return info


@dataclass(frozen=True)
class StreamBytes:
    """Where a file's latent stream goes: the information content of its two parts in bytes
    (the stream itself, `total`, is within a few bytes of their sum)."""

    hyper_latents: float
    latents: float
    total: int


def stream_bytes(data: bytes, *, weights: str | Path | None = None,
                 max_pixels: int = drc.DEFAULT_MAX_PIXELS) -> StreamBytes:
    """Read a file's latent stream (no synthesis) and split its bytes between its two parts, the
    hyper-latents (the side information) and the latents, under the base weights that made it."""
    data = file_bytes(data)
    check_weights_path("weights", weights)
    header = drc.unpack(data, check_max_pixels(max_pixels))
    with model_calls():
        codec = codec_for_file(header, weights, compute_for("cpu"))
        rules = STREAM_RULES[header.version]
        payload = header.sections[drc.TAG_LATENTS]
        latents = codec.read_stream(payload, header.width, header.height, header.quality, rules.arithmetic,
                                    rules.whole_grid)
        hyper_bits, latent_bits = codec.stream.information_bits(latents, header.quality)
    return StreamBytes(hyper_bits / 8, latent_bits / 8, len(payload))


def decode(
    data: bytes,
    steps: int | None = None,
    seed: int | None = None,
    *,
    weights: str | Path | None = None,
    diffusion_weights: str | Path | None = None,
    device: str | torch.device | None = AUTO,
    exact: bool = False,
    max_pixels: int = drc.DEFAULT_MAX_PIXELS,
    restore: bool = True,
    progress: Progress | None = None,
) -> Image.Image:
    """Decompress .drc bytes. steps=None uses the file's recommendation (0 if it has none).

    0 steps gives the base reconstruction, corrected by the restoration filter where one is
    installed for these weights (restore=False: the base synthesis alone); more steps add
    realistic detail with the diffusion decoder. The same file, steps, seed, device and mode
    give the same pixels on the same machine; exact=True gives pixels that are also the same
    with any thread count (slower). Other machines and devices decode within the tolerance
    that docs/format.md states. `progress(done, total)` hears of the start (0), the base
    reconstruction (1) and each diffusion step: total is steps + 1.
    """
    data = file_bytes(data)
    options = check_decode_options(steps, seed, weights=weights, diffusion_weights=diffusion_weights, device=device,
                                   exact=exact, max_pixels=max_pixels, restore=restore, progress=progress)
    header = drc.unpack(data, options.max_pixels)
    with model_calls():
        codec = codec_for_file(header, weights, options.compute)
        info = FileInfo(header, len(data))
        steps = options.steps if options.steps is not None else _recommended_steps(info)
        diffusion = get_diffusion(codec, diffusion_weights) if steps > 0 else None
        alpha = None  # checked first: a corrupt plane fails before the work
        if (alpha_payload := info.alpha_payload) is not None:
            alpha = decompress_alpha(alpha_payload, header.width, header.height)
        profile = info.icc_profile  # a corrupt profile or metadata, too, fails before the work
        metadata = info.metadata
        detail_map = info.detail_map if diffusion is not None else None
        rules = STREAM_RULES[header.version]
        report = options.progress or (lambda done, total: None)
        report(0, steps + 1)
        rgb = codec.decompress(header.sections[drc.TAG_LATENTS], header.width, header.height, header.quality,
                               rules.arithmetic, rules.whole_grid)
        report(1, steps + 1)
        rgb = restore_or_enhance(codec, rgb, header.quality, steps, options.seed, diffusion, detail_map,
                                 options.restore, lambda done, total: report(1 + done, 1 + total))
    return planes_to_image(Planes(rgb, header.colour_mode, alpha, profile, metadata))


def restore_or_enhance(codec: BaseCodec, rgb: np.ndarray, level: float, steps: int, seed: int | None,
                       diffusion: DiffusionDecoder | None, detail_map: detail_maps.DetailMap | None,
                       restore: bool = True, progress: Progress | None = None) -> np.ndarray:
    """The decoder's last stages on a base synthesis: diffusion at steps > 0, else the filter."""
    if diffusion is not None and steps > 0:
        return diffusion.enhance(rgb, level, steps, seed, detail_map, progress)
    if restore and (restorer := get_restorer(codec)) is not None:
        return restorer.restore(rgb, level)
    return rgb
