"""The Python API, used by the command line and the Pillow plugin: images in, .drc bytes out, and back.

    data = diraccodec.encode("photo.png", quality=3)
    image = diraccodec.decode(data, steps=20)

Every call is safe from several threads at once: the networks run one call at a time (each
already uses every core), so concurrent calls give the bytes and pixels of serial ones.
An encoder's output depends only on its input, its options and the installed weights, on a
given CPU and thread count; a GPU's kernels may sum in another order from run to run
(scripts/gpu_check.py measures whether its files repeat).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import numbers
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from diraccodec.codec.base_codec import LOWEST_LEVEL, BaseCodec, BaseWeights
from diraccodec.codec.hyperprior import DEFAULT_LAMBDAS, ladder_position
from diraccodec.compute import Compute, float32_default, one_thread_in_forked_children, without_callers_autocast
from diraccodec.container import drc
from diraccodec.diffusion import detail_map as detail_maps
from diraccodec.diffusion.decoder import DiffusionDecoder
from diraccodec.entropy.latent_stream import Arithmetic
from diraccodec.errors import (
    CorruptFileError,
    DiracError,
    ImageReadError,
    InvalidOptionError,
    LimitExceededError,
    WrongWeightsError,
    counted,
)
from diraccodec.image import metadata as metadata_parts
from diraccodec.image.metadata import Metadata
from diraccodec.image.planes import (
    Planes,
    compress_alpha,
    decompress_alpha,
    image_to_planes,
    loaded,
    open_image,
    planes_to_image,
    upright,
)
from diraccodec.image.profiles import compress_profile, describes_srgb
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    DiffusionWeights,
    default_diffusion_path,
    default_weights_path,
    installed_restoration_path,
    load_base_weights,
    load_diffusion_weights,
    load_restoration_weights,
    released_base_weights,
    shipped_base_weights_id,
)
from diraccodec.options import AUTO, DEFAULT_EFFORT, EFFORT_PASSES, MAX_STEPS, Progress
from diraccodec.restoration.filter import Restorer
from diraccodec.transforms import search as latent_search

# The encoder writes the detail map by default below the level of this trade-off on the base's
# ladder (level 3 of the shipped ladder): the shipped diffusion decoder steers its detail by the
# map at levels 1 and 2 and ignores it above. Stated as a lambda, the rule keeps its meaning on
# another ladder, as the decoder's settings carried to that ladder do (diffusion.finishing).
DETAIL_MAP_BELOW_LAMBDA = DEFAULT_LAMBDAS[2]


def detail_map_below(lambdas: Sequence[float]) -> float:
    """The level below which an encoder with this ladder writes the detail map by default."""
    return min(max(ladder_position(lambdas, DETAIL_MAP_BELOW_LAMBDA), 1.0), float(len(lambdas)))


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

MAX_PATH_LENGTH = 4096  # Linux's PATH_MAX: a longer string is no file's name
_LOCK = threading.RLock()  # torch's thread count and kernel flags are process-wide


@contextlib.contextmanager
def model_calls() -> Iterator[None]:
    """One call's model work at a time, with torch's default dtype float32 whatever the
    caller's (its thread count, kernel flags and default dtype are process-wide), and without
    the caller's autocast; from the first call on, a forked child gets one torch thread
    (compute.one_thread_in_forked_children). Every function here that runs the models runs
    them inside it; code that runs the stages itself (evaluation, bench) does so too. It
    nests: the API's functions may be called inside it."""
    with _LOCK, float32_default(), without_callers_autocast():
        one_thread_in_forked_children()
        yield


def compute_for(device: str | torch.device | None = AUTO, exact: bool = False) -> Compute:
    """Where and how the networks run, from the user's `device` ("auto", "cpu", "cuda") and
    exact mode; a device name torch does not know, or CUDA where there is none, is an
    InvalidOptionError."""
    try:
        return Compute.of(device, exact)
    except ValueError as error:
        raise InvalidOptionError(str(error)) from None


@functools.lru_cache(maxsize=8)
def _cached_codec(weights: Path, compute: Compute) -> BaseCodec:
    return BaseCodec(load_base_weights(weights), compute)


def get_codec(weights: str | Path | None = None, compute: Compute | None = None) -> BaseCodec:
    """The base codec of `weights` (the installed ones where None) on `compute`, kept for the
    next call (the last 8 weights and devices): loading and preparing the models takes longer
    than a small image's work."""
    return _cached_codec(Path(weights or default_weights_path()).resolve(), compute or Compute())


def _shown(value: object) -> str:
    """A value as an error names it: its repr, cut short (an integer of thousands of digits has
    none: Python refuses to print it)."""
    try:
        text = str(value) if isinstance(value, numbers.Real) else repr(value)  # Decimal('2.5'), not 2.5
    except ValueError:
        return "a number too long to print"
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: object) -> bool:
    """An integer of any kind (a numpy one too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: object) -> bool:
    """A real number of any kind (a numpy one too), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: float) -> float:
    """A real number as a float; an integer too large for one is infinite (out of every range)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_quality(quality: float, num_levels: int) -> float:
    """The level a file at `quality` carries: checked, then rounded to the format's 1/256 steps."""
    if not _real(quality):
        raise InvalidOptionError(f"quality must be a number, got {_shown(quality)}")
    if math.isnan(_as_float(quality)) or not LOWEST_LEVEL <= quality <= num_levels:
        raise InvalidOptionError(f"quality must be between {LOWEST_LEVEL:g} and {num_levels}, got {_shown(quality)}")
    return drc.quantize_level(float(quality)) / drc.LEVEL_DENOMINATOR


def check_effort(effort: int) -> int:
    """The encoder effort, 1 to 5, as an int: checked before any work, so a bad one costs no
    analysis transform. The checks below do the same for their arguments."""
    if not _whole(effort):
        raise InvalidOptionError(f"effort must be a whole number, got {_shown(effort)}")
    if effort not in EFFORT_PASSES:
        raise InvalidOptionError(f"effort must be between {min(EFFORT_PASSES)} and {max(EFFORT_PASSES)}, "
                                 f"got {_shown(effort)}")
    return int(effort)


def check_steps(steps: int | None) -> int:
    """The diffusion step count, 0 to MAX_STEPS (None: 0)."""
    if steps is None:
        return 0
    if not _whole(steps):
        raise InvalidOptionError(f"steps must be a whole number, got {_shown(steps)}")
    if not 0 <= steps <= MAX_STEPS:
        raise InvalidOptionError(f"steps must be between 0 and {MAX_STEPS}, got {_shown(steps)}")
    return int(steps)


def check_seed(seed: int | None) -> int | None:
    """A whole-number seed, or None for the default; any size (the sampler takes it modulo 2^64)."""
    if seed is not None and not _whole(seed):
        raise InvalidOptionError(f"seed must be a whole number, got {_shown(seed)}")
    return None if seed is None else int(seed)


def check_max_pixels(max_pixels: int) -> int:
    """The pixel limit, at least 1: images and files over it are refused before anything is allocated."""
    if not _whole(max_pixels) or max_pixels < 1:
        raise InvalidOptionError(f"max_pixels must be a whole number of at least 1, got {_shown(max_pixels)}")
    return int(max_pixels)


def check_flag(name: str, value: bool | None, none_allowed: bool = False) -> bool | None:
    """True or False (numpy's too; or None where that means a default): a truthy string is not
    taken for True."""
    if not isinstance(value, bool | np.bool_) and not (none_allowed and value is None):
        raise InvalidOptionError(f"{name} must be True or False{' or None' if none_allowed else ''}, "
                                 f"got {_shown(value)}")
    return None if value is None else bool(value)


def check_progress(progress: Progress | None) -> Progress | None:
    """A callback of (done, total), or None: checked before any work, not at the first tile."""
    if progress is not None and not callable(progress):
        raise InvalidOptionError(f"progress must be a function of (done, total) or None, got {_shown(progress)}")
    return progress


def check_weights_path(name: str, path: str | Path | None) -> str | Path | None:
    """A weights path or None: another type would otherwise fail deep in the loading, unnamed."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise InvalidOptionError(f"{name} must be a path or None, got {_shown(path)}")
    return path


class DecodeOptions(NamedTuple):
    """`decode`'s options as checked: Python's numbers and flags, the device resolved."""

    steps: int | None
    seed: int | None
    compute: Compute
    max_pixels: int
    restore: bool
    progress: Progress | None


def check_decode_options(steps: int | None = None, seed: int | None = None, *,
                         weights: str | Path | None = None, diffusion_weights: str | Path | None = None,
                         device: str | torch.device | None = AUTO, exact: bool = False,
                         max_pixels: int = drc.DEFAULT_MAX_PIXELS, restore: bool = True,
                         progress: Progress | None = None) -> DecodeOptions:
    """The checks `decode` makes of its options before it reads a file, also for callers that
    keep options for later decodes (the Pillow plugin's defaults): a bad one fails where it is
    set. The weights paths are checked for their kind only: they are read where they are used."""
    check_weights_path("weights", weights)
    check_weights_path("diffusion_weights", diffusion_weights)
    return DecodeOptions(check_steps(steps) if steps is not None else None, check_seed(seed),
                         compute_for(device, check_flag("exact", exact)), check_max_pixels(max_pixels),
                         bool(check_flag("restore", restore)), check_progress(progress))


def weights_id_bytes(weights_id: bytes | str) -> bytes:
    """A base weights id as the format stores it (8 bytes) from those bytes or their hex (the
    Pillow plugin's `info["weights_id"]`, `dirac info`'s)."""
    given = weights_id
    if isinstance(weights_id, str):
        with contextlib.suppress(ValueError):  # not hex: refused below as any other value
            weights_id = bytes.fromhex(weights_id)
    if not isinstance(weights_id, bytes | bytearray) or len(weights_id) != 8:
        raise InvalidOptionError(f"a weights id is 8 bytes or 16 hex digits, got {_shown(given)}")
    return bytes(weights_id)


def _bytes_of(data: object) -> bytes | None:
    """The bytes of a bytes-like object (bytes, bytearray, memoryview, arrays); None for others."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).tobytes()
    except TypeError:
        return None
    except ValueError as error:  # a memoryview released, an mmap closed
        raise InvalidOptionError(f"cannot read the {type(data).__name__}: {error}") from None


def file_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """A .drc file's bytes from any bytes-like object; a path or another object is refused by name."""
    if isinstance(data, str | os.PathLike):
        if len(text := str(data)) > MAX_PATH_LENGTH:  # text, not a path (a response's body): not echoed
            raise InvalidOptionError(f"a .drc file must be given as bytes, got {type(data).__name__} of "
                                     f"{counted(len(text), 'character')}")
        raise InvalidOptionError(f"give the .drc file's bytes, not a path: Path({text!r}).read_bytes()")
    if (found := _bytes_of(data)) is None:
        raise InvalidOptionError(f"a .drc file must be given as bytes, got {type(data).__name__}")
    return found


def _recommended_steps(info: FileInfo) -> int:
    """The steps the file recommends (0 where it names none). Its byte can say up to 255, more
    than this decoder runs: the error then names the file, not an option the caller never gave."""
    steps = info.recommended_steps or 0
    if steps > MAX_STEPS:
        raise InvalidOptionError(f"the file recommends {steps} diffusion steps, more than the {MAX_STEPS} "
                                 f"this decoder runs: give the steps to decode with")
    return steps


class _InstalledFilter(NamedTuple):
    restorer: Restorer
    base_weights_id: bytes  # the base whose reconstructions it corrects
    weights_id: bytes  # its own, which a diffusion decoder trained on its output names


@functools.lru_cache(maxsize=8)
def _cached_restorer(weights: Path, compute: Compute) -> _InstalledFilter:
    loaded = load_restoration_weights(weights)
    assert loaded is not None  # an explicit path either loads or raises
    return _InstalledFilter(Restorer(loaded.model, compute), loaded.base_weights_id, loaded.weights_id)


def _installed_restorer(compute: Compute) -> _InstalledFilter | None:
    path = installed_restoration_path()
    return _cached_restorer(path.resolve(), compute) if path is not None else None


def get_restorer(codec: BaseCodec) -> Restorer | None:
    """The restoration filter for `codec`'s reconstructions, or None where none is installed
    for these base weights (0 steps then give the base synthesis alone)."""
    installed = _installed_restorer(codec.compute)
    if installed is None or installed.base_weights_id != codec.weights.weights_id:
        return None
    return installed.restorer


@functools.lru_cache(maxsize=8)
def _cached_diffusion(weights: Path, compute: Compute, restorer: Restorer | None) -> DiffusionDecoder:
    loaded = load_diffusion_weights(weights)
    return DiffusionDecoder(loaded.model, loaded.settings, loaded.finishing, compute, restorer)


def get_diffusion(codec: BaseCodec, weights: str | Path | None = None) -> DiffusionDecoder:
    """The diffusion decoder trained on `codec`'s reconstructions (and on the installed
    restoration filter's output, where it was trained on that); a clear error if there is none."""
    loaded = diffusion_weights_for(codec, weights)
    return _cached_diffusion(loaded.path, codec.compute, restorer_for(loaded, codec.compute))


def diffusion_weights_for(codec: BaseCodec, weights: str | Path | None = None) -> DiffusionWeights:
    """The diffusion weights file for `codec`'s files (`weights`, else $DIRAC_DIFFUSION_WEIGHTS or
    the shipped file), checked but not made into a decoder; a clear error if there is none."""
    # read on every call, so $DIRAC_DIFFUSION_WEIGHTS may change; the decoder is cached by the resolved file
    path = Path(weights) if weights else default_diffusion_path()
    if not weights and not path.exists():
        raise InvalidOptionError(
            f"diffusion decoding (steps > 0) is not available: no diffusion weights at {path}; use 0 steps"
        )
    loaded = load_diffusion_weights(path.resolve())
    if loaded.base_weights_id != codec.weights.weights_id:
        raise WrongWeightsError(
            f"the diffusion weights were trained on base weights {loaded.base_weights_id.hex()}, not on the loaded "
            f"{codec.weights.weights_id.hex()}; use 0 steps, or diffusion weights trained on them "
            f"($DIRAC_DIFFUSION_WEIGHTS, which every command reads)"
        )
    return loaded


def restorer_for(diffusion: DiffusionWeights, compute: Compute | None = None) -> Restorer | None:
    """The installed filter whose output `diffusion` was trained to enhance (None where it
    enhances the base synthesis itself); WrongWeightsError where that filter is not installed."""
    if diffusion.restoration_weights_id is None:
        return None
    installed = _installed_restorer(compute or Compute())
    if installed is None or installed.weights_id != diffusion.restoration_weights_id:
        raise WrongWeightsError(
            f"the diffusion weights enhance the output of restoration weights "
            f"{diffusion.restoration_weights_id.hex()}, which are not installed; use 0 steps or matching weights"
        )
    return installed.restorer


@dataclass(frozen=True)
class Support:
    """Whether an installed model serves the files of some base weights: the weights file that
    does, or why none does (a sentence)."""

    weights: Path | None
    why_not: str = ""
    full_steps: int = 0  # of diffusion weights: the step count from which the finishing applies in full


def installed_reader(file_weights_id: bytes | str) -> bytes:
    """The base weights id whose restoration and diffusion models serve files of
    `file_weights_id`: the installed base weights' own where they read that earlier release's
    files as the same model (BaseWeights.coding_for), else the file's."""
    file_weights_id = weights_id_bytes(file_weights_id)
    try:
        installed = load_base_weights(default_weights_path().resolve())
    except DiracError:
        return file_weights_id
    if file_weights_id != installed.weights_id and installed.coding_for(file_weights_id) is not None:
        return installed.weights_id
    return file_weights_id


def diffusion_support(weights_id: bytes | str) -> Support:
    """Whether the installed diffusion weights can enhance files of base weights `weights_id`
    (decoding with steps above 0), with the restoration filter they were trained on."""
    weights_id = weights_id_bytes(weights_id)
    path = default_diffusion_path()  # read on every call: $DIRAC_DIFFUSION_WEIGHTS may change
    if not path.exists():
        return Support(None, f"not available: no diffusion weights at {path} (0 steps only)")
    try:
        diffusion = load_diffusion_weights(path.resolve())
    except DiracError as error:
        return Support(None, f"unavailable ({error})")
    if diffusion.base_weights_id != weights_id:
        return Support(None, f"not available: {diffusion.path.name} was trained on other base weights")
    try:
        restorer_for(diffusion)  # the filter it was trained on, where it needs one
    except WrongWeightsError:
        return Support(None, f"not available: {diffusion.path.name} enhances the output of restoration weights "
                             f"{diffusion.restoration_weights_id.hex()}, which are not installed")
    except DiracError as error:
        return Support(None, f"unavailable ({error})")
    return Support(diffusion.path, full_steps=diffusion.finishing.full_steps)


def restoration_support(weights_id: bytes | str) -> Support:
    """Whether 0 steps go through the installed restoration filter for files of `weights_id`."""
    weights_id = weights_id_bytes(weights_id)
    try:
        restoration = load_restoration_weights()
    except DiracError as error:
        return Support(None, f"unavailable ({error})")
    if restoration is None or restoration.base_weights_id != weights_id:
        return Support(None, "none: 0 steps give the base synthesis alone")
    return Support(restoration.path)


@dataclass(frozen=True)
class EncodeOptions:
    """Everything besides the image and its level that decides an encoder's output."""

    effort: int = DEFAULT_EFFORT
    detail_map: bool | None = None  # None: below detail_map_below(the base's ladder)
    recommended_steps: int | None = None
    progress: Progress | None = None


class _Encoder:
    """One image's encoding: its planes, its level-free latents and the files it makes."""

    def __init__(self, planes: Planes, codec: BaseCodec, options: EncodeOptions) -> None:
        self.planes, self.codec, self.options = planes, codec, options
        self.latents = codec.analysis_latents(planes.rgb)
        passes = EFFORT_PASSES[options.effort]
        # the search counts the error the way a 0-step decode will show it: after the filter
        restorer = get_restorer(codec) if passes else None
        self.search = latent_search.SearchSettings(passes, restorer.model.restore if restorer is not None else None,
                                                   options.progress)
        self.level_free_sections = self._level_free_sections()  # made once: a size target makes many files

    def _level_free_sections(self) -> dict[bytes, bytes]:
        """The sections after the latents and the detail map, the same at every level."""
        planes, sections = self.planes, {}
        if planes.alpha is not None:
            sections[drc.TAG_ALPHA] = compress_alpha(planes.alpha)
        if planes.icc_profile and not describes_srgb(planes.icc_profile):
            sections[drc.TAG_ICC_COMPRESSED] = compress_profile(planes.icc_profile)
        for tag, part in ((drc.TAG_EXIF, planes.metadata.exif), (drc.TAG_XMP, planes.metadata.xmp)):
            if part:
                sections[tag] = metadata_parts.compress(part)
        if self.options.recommended_steps is not None:
            sections[drc.TAG_STEPS] = bytes([self.options.recommended_steps])
        return sections

    def metadata_bytes(self) -> int:
        """What the image's EXIF and XMP add to each file: the bytes that metadata=False saves."""
        return sum(drc.section_size(payload) for tag, payload in self.level_free_sections.items()
                   if tag in (drc.TAG_EXIF, drc.TAG_XMP))

    def map_ends_at(self) -> float | None:
        """The lowest level without the detail map, where the levels below carry it; None
        where the caller's option gives every level the same."""
        return None if self.options.detail_map is not None else \
            detail_map_below(self.codec.weights.model.config.lambdas)

    def sends_map(self, level: float) -> bool:
        ends = self.map_ends_at()
        return bool(self.options.detail_map) if ends is None else level < ends

    def file(self, level: float, searched: bool = True) -> bytes:
        """The .drc file at this level; searched=False rounds the latents (a quick size probe)."""
        codec, planes = self.codec, self.planes
        search = self.search if searched else latent_search.SearchSettings()
        latents = codec.quantize(self.latents, level, planes.rgb, search)
        height, width = planes.rgb.shape[:2]
        sections = {drc.TAG_LATENTS: codec.write_stream(latents, level)}
        if self.sends_map(level):
            base = codec.synthesize(latents, width, height, level)
            with codec.compute.kernels():
                measured = detail_maps.measure(planes.rgb, base, device=codec.device)
            sections[drc.TAG_DETAIL] = detail_maps.to_payload(measured)
        header = drc.DrcFile(width=width, height=height, colour_mode=planes.colour_mode, quality=level,
                             weights_id=codec.weights.weights_id, sections={**sections, **self.level_free_sections})
        return drc.pack(header)


def _codec_for_file(header: drc.DrcFile, weights: str | Path | None, compute: Compute) -> BaseCodec:
    """The base codec of `weights` as it reads the file: the weights that made it, or the same
    model with level tables added since (BaseWeights.coding_for). A level outside the codec's
    range makes the file corrupt: no encoder writes one."""
    codec = get_codec(weights, compute)
    reader = codec.for_file(header.weights_id)
    if reader is None:
        raise WrongWeightsError(_wrong_weights_message(header.weights_id, codec.weights))
    if not LOWEST_LEVEL <= header.quality <= codec.num_levels:
        raise CorruptFileError(f"corrupt .drc file (level {header.quality:g} outside the model's "
                               f"{LOWEST_LEVEL:g} to {codec.num_levels})")
    return reader


def _wrong_weights_message(file_weights: bytes, loaded: BaseWeights) -> str:
    """One line that names the weights a file needs, and where they are: the weights this package
    ships, or the release that ships them."""
    message = (f"file was made with weights {file_weights.hex()}, but the loaded weights are "
               f"{loaded.weights_id.hex()} ({loaded.path.name})")
    if file_weights.hex() == shipped_base_weights_id():
        return f"{message}; decode it with the weights this package ships ({DEFAULT_BASE_WEIGHTS})"
    release = released_base_weights().get(file_weights.hex())
    if release is not None:
        return f"{message}; decode it with diraccodec {release}, which ships them (pip install 'diraccodec=={release}')"
    return f"{message}; decode it with the weights that made it"


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
                            check_steps(steps) if steps is not None else None, check_progress(progress))
    max_pixels = check_max_pixels(max_pixels)
    check_weights_path("weights", weights)
    compute = compute_for(device)
    shown = label or ("the image" if isinstance(image, Image.Image) else "input data")  # in warnings
    if isinstance(image, str | os.PathLike):
        if len(str(image)) > MAX_PATH_LENGTH:  # text, not a path: not echoed
            raise InvalidOptionError(f"an image path is at most {MAX_PATH_LENGTH} characters, got "
                                     f"{type(image).__name__} of {counted(len(str(image)), 'character')}")
        shown = label or str(image)
        image = open_image(image, max_pixels, label)  # a .drc file, whatever its name, is refused there
    elif not isinstance(image, Image.Image):
        image = open_image(_image_bytes(image), max_pixels, label)
    else:  # as open_image reads and turns a file's (the Pillow plugin's save comes here)
        LimitExceededError.check(image.width, image.height, max_pixels, label)
        image = upright(loaded(image, max_pixels, label))
    if image.width == 0 or image.height == 0:
        raise ImageReadError(f"{label or 'the image'} has no pixels ({image.width}x{image.height})")
    planes = image_to_planes(image, metadata, shown)
    del image
    with model_calls():
        codec = get_codec(weights, compute)
        if quality is not None:
            return _Encoder(planes, codec, options).file(check_quality(quality, codec.num_levels))
        # the target is checked before the analysis transform runs
        target = check_size(size) if size is not None else bpp_to_bytes(bpp, planes.rgb.shape[0] * planes.rgb.shape[1])
        return encode_to_size(_Encoder(planes, codec, options), target, codec.num_levels)


def _image_bytes(image: object) -> bytes:
    """An encoded image's bytes from any bytes-like object, a binary file object, or a flat
    uint8 array (cv2.imencode's); anything else is refused by name."""
    if isinstance(image, io.TextIOBase):
        raise InvalidOptionError("an image file object must be open in binary mode ('rb'), not text")
    if callable(getattr(image, "read", None)):  # io.BytesIO, an open file
        try:
            if getattr(image, "seekable", lambda: False)():
                image.seek(0)  # read whole, as Image.open reads one: a buffer just written is at its end
            data = image.read()
        except (ValueError, OSError) as error:  # closed, or open for writing alone
            reason = "it is not open for reading" if isinstance(error, io.UnsupportedOperation) else error
            raise InvalidOptionError(f"cannot read the image file object: {reason}") from None
        if not isinstance(data, bytes | bytearray):
            raise InvalidOptionError(f"an image file object must give bytes, gave {type(data).__name__}")
        return bytes(data)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 1 or (image.ndim == 2 and image.shape[1] == 1)):  # cv2.imencode gives (N, 1)
        return image.tobytes()
    if isinstance(image, np.ndarray) and image.ndim == 1:  # (N, 1) may be pixels too: the hint below
        raise InvalidOptionError(f"an image file's bytes in an array must be uint8, got {image.dtype}")
    pixels = isinstance(image, np.ndarray | torch.Tensor)  # bytes-like, but pixels rather than a file
    if not pixels and (found := _bytes_of(image)) is not None:
        return found
    kind = type(image).__qualname__ if type(image).__module__ == "builtins" else \
        f"{type(image).__module__}.{type(image).__qualname__}"
    raise InvalidOptionError(f"image must be a PIL image, a path or an image file's bytes, got {kind}"
                             f"{': make a PIL image of its pixels first (PIL.Image.fromarray)' if pixels else ''}")


def check_size(size: int) -> int:
    """A target file size: a positive whole number of bytes."""
    if not _whole(size) or size <= 0:
        raise InvalidOptionError(f"size must be a positive number of bytes, got {_shown(size)}")
    return int(size)


def bpp_to_bytes(bpp: float | None, pixels: int) -> int:
    """The file size a target of `bpp` bits per pixel allows for `pixels` pixels (rounded down:
    the file is at or under the target); refused where it is not a positive finite number of
    bits or comes to less than one byte."""
    if not _real(bpp) or not bpp > 0 or math.isinf(_as_float(bpp)):
        raise InvalidOptionError(f"bpp must be a positive number, got {_shown(bpp)}")
    bpp = float(bpp)
    if not math.isfinite(bpp * pixels):
        raise InvalidOptionError(f"{bpp} bpp is too many bits for an image of {counted(pixels, 'pixel')}")
    target = math.floor(bpp * pixels / 8)
    if target < 1:
        raise InvalidOptionError(f"{bpp} bpp is less than one byte for an image of {counted(pixels, 'pixel')}")
    return target


def encode_to_size(encoder: _Encoder, target: int, num_levels: int) -> bytes:
    """The file of the highest level on the 1/256 grid whose size is at most `target` bytes.

    Sizes grow with the level among the levels that carry the detail map, and among those
    that do not; but the map is a large share of a small image's file, so the first level
    without it may make a smaller file than the last with it. Each run of levels is searched
    by bisection, the highest run first: with plain rounding first (quick), then, where the
    effort searches the latents, again with the search over the few grid steps that the
    search's smaller files make room for."""
    check_size(target)
    grid = drc.LEVEL_DENOMINATOR
    lowest, highest = round(LOWEST_LEVEL * grid), num_levels * grid  # the levels in grid units
    runs = [(lowest, highest)]
    ends = encoder.map_ends_at()
    if ends is not None and lowest < (first_without := math.ceil(ends * grid)) <= highest:
        runs = [(lowest, first_without - 1), (first_without, highest)]
    searches = encoder.search.passes > 0
    sizes: dict[tuple[int, bool], int] = {}  # of the files made so far: several checks ask for the same ones
    fitting: dict[tuple[int, bool], bytes] = {}  # those within the target, one of which is the answer

    def size_at(step: int, searched: bool) -> tuple[int, bytes | None]:
        """The size of the file at this step, and the file where it fits."""
        if (step, searched) not in sizes:
            data = encoder.file(step / grid, searched)
            sizes[step, searched] = len(data)
            if len(data) <= target:
                fitting[step, searched] = data
        return sizes[step, searched], fitting.get((step, searched))

    def highest_fitting(low: int, high: int, searched: bool) -> tuple[int, bytes] | None:
        """The highest grid step in [low, high] whose file fits, with its file; None if none does."""
        best = None
        while low <= high:
            middle = (low + high) // 2
            data = size_at(middle, searched)[1]
            if data is not None:
                best, low = (middle, data), middle + 1
            else:
                high = middle - 1
        return best

    def fitting_in(first: int, last: int) -> tuple[int, bytes] | None:
        """The answer within one run of steps, whose sizes grow with the level. The run's
        smallest file is tried first: where it does not fit, one trial saves a bisection (a
        target below level 3 is the common low-rate case), and where it does, the bisection
        costs one trial more."""
        if size_at(first, searched=False)[0] > target and (not searches or size_at(first, searched=True)[0] > target):
            return None
        plain = highest_fitting(first, last, searched=False)
        if not searches or (plain is None and size_at(first, searched=True)[0] > target):
            return plain  # without the search the plain answer is the file; with it, nothing fits
        # the searched file at a level is usually a few percent smaller than the plain one (at
        # fine levels it can be a little larger): look around the plain answer, then everywhere
        start = first if plain is None else plain[0]
        top = min(last, start + grid // 4)
        found = highest_fitting(max(first, start - grid // 4), top, searched=True)
        if found is not None and found[0] == top < last:  # the window's top fits: higher levels may too
            found = highest_fitting(top + 1, last, searched=True) or found
        return found or highest_fitting(first, last, searched=True)

    for low, high in reversed(runs):
        if (found := fitting_in(low, high)) is not None:
            return found[1]
    smallest_size, smallest_step = min((size_at(low, searches)[0], low) for low, _ in runs)
    metadata = encoder.metadata_bytes()
    smallest = counted(smallest_size, "byte") + (
        f", {metadata} of them metadata that --strip (metadata=False) leaves out" if metadata else "")
    raise InvalidOptionError(f"a target of {counted(target, 'byte')} is below the smallest file at level "
                             f"{smallest_step / grid:g} ({smallest}); ask for at least that")


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
        codec = _codec_for_file(header, weights, compute_for("cpu"))
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
        codec = _codec_for_file(header, weights, options.compute)
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

