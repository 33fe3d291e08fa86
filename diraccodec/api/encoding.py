"""One image's encoding: its level-free latents made once, a file at any level from them, and
the search for the highest level whose file fits a target size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from diraccodec.api.arguments import check_size
from diraccodec.api.models import get_restorer
from diraccodec.codec.base_codec import LOWEST_LEVEL, BaseCodec
from diraccodec.codec.hyperprior import DEFAULT_LAMBDAS, ladder_position
from diraccodec.container import drc
from diraccodec.diffusion import detail_map as detail_maps
from diraccodec.errors import (
    InvalidOptionError,
    counted,
)
from diraccodec.image import metadata as metadata_parts
from diraccodec.image.planes import (
    Planes,
    compress_alpha,
)
from diraccodec.image.profiles import compress_profile, describes_srgb
from diraccodec.options import DEFAULT_EFFORT, EFFORT_PASSES, Progress
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
class EncodeOptions:
    """Everything besides the image and its level that decides an encoder's output."""

    effort: int = DEFAULT_EFFORT
    detail_map: bool | None = None  # None: below detail_map_below(the base's ladder)
    recommended_steps: int | None = None
    progress: Progress | None = None


class Encoder:
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


def encode_to_size(encoder: Encoder, target: int, num_levels: int) -> bytes:
    """The file of the highest level on the 1/256 grid whose size is at most `target` bytes
    (_fitting_file), the search's progress counted over every trial's tiles as one."""
    search = encoder.search
    if search.progress is not None:  # one count, not one per trial: a bar never goes back
        encoder.search = replace(search, progress=_over_trials(search.progress))
    try:
        return _fitting_file(encoder, target, num_levels)
    finally:
        encoder.search = search


def _fitting_file(encoder: Encoder, target: int, num_levels: int) -> bytes:
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


def _over_trials(progress: Progress) -> Progress:
    """`progress` of one search after another as one count: each trial's tiles are added to the
    total as it starts, so what is done never goes back (a bar does not start again at each trial)."""
    earlier = 0  # tiles of the trials finished

    def report(done: int, total: int) -> None:
        nonlocal earlier
        progress(earlier + done, earlier + total)
        if done == total:
            earlier += total

    return report
