"""One file's conversion, the same wherever it runs: a local worker process or a Ray worker.

Everything a guarantee rests on happens here, so both runners keep it alike: an existing
output is skipped unless overwriting is asked for, an output is written atomically, and a
bad file becomes a failed JobResult with its message instead of an exception.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from diraccodec.batch.storage import Location, is_uri, join, local_path, location_of, path_of, storage_for
from diraccodec.container.drc import DEFAULT_MAX_PIXELS, unpack
from diraccodec.errors import MAX_PIXELS_HINT, DiracError, LimitExceededError, is_out_of_memory, out_of_memory_message
from diraccodec.image.planes import IMAGE_SUFFIXES
from diraccodec.options import AUTO, DEFAULT_EFFORT, DEFAULT_PNG_COMPRESSION, DEFAULT_QUALITY

DRC_SUFFIX = ".drc"


@dataclass(frozen=True)
class BatchSettings:
    """The options every file of a batch is converted with (the API's arguments), sent to each
    worker with its jobs."""

    quality: float = DEFAULT_QUALITY
    steps: int | None = None
    seed: int | None = None
    decoded_suffix: str = ".png"
    weights: str | None = None
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    effort: int = DEFAULT_EFFORT  # the encoder's effort (see api.encode)
    size: int | None = None  # a target file size in bytes instead of the quality
    bpp: float | None = None  # a target in bits per pixel instead of the quality
    detail_map: bool | None = None
    device: str = AUTO
    exact: bool = False  # thread-invariant decoding (see api.decode)
    metadata: bool = True  # carry each image's EXIF and XMP (see api.encode)
    restore: bool = True  # at 0 steps, the restoration filter (see api.decode)
    diffusion_weights: str | None = None
    png_compression: int = DEFAULT_PNG_COMPRESSION  # zlib's level for PNG outputs


@dataclass(frozen=True)
class Job:
    """One file's conversion: where it comes from and where its output goes."""

    source: Location  # a Path, or a URI string (see diraccodec.batch.storage)
    target: Location
    # another input that converts to the same output (photo.png and photo.jpg): this one fails
    same_output_as: Location | None = None
    # its output is one of the batch's own inputs (a folder converted in place: a.drc to a.png
    # beside the original a.png): never replaced, even when overwriting
    replaces_source: bool = False
    # the source is a folder under the batch's that could not be read, for this reason: its
    # files, unknown, fail as one job
    unreadable: str | None = None

    @property
    def encodes(self) -> bool:
        return self.unreadable is None and path_of(self.source).suffix.lower() != DRC_SUFFIX

    @property
    def decodes(self) -> bool:
        return self.unreadable is None and path_of(self.source).suffix.lower() == DRC_SUFFIX


@dataclass
class JobResult:
    """How one job ended, with its sizes for the batch's summary."""

    job: Job
    status: str  # "converted", "skipped" or "failed"
    message: str = ""
    input_bytes: int = 0
    output_bytes: int = 0
    pixels: int = 0


def plan_jobs(source: str | Path, destination: str | Path, settings: BatchSettings) -> list[Job]:
    """Every image and .drc file under `source`, with its output path under `destination`; a
    folder under `source` that could not be read is a job too, which fails."""
    source, destination = location_of(source), location_of(destination)
    jobs = []
    first_source: dict[str, Location] = {}
    listing = storage_for(source).walk(source)
    nested = _inside(destination, source)  # the outputs of earlier runs are not inputs
    local_source = local_path(source) is not None  # whose names compare as the system's (_fold)

    def left_alone(relative: str) -> bool:
        """Hidden files and folders (temporary files too), and the destination and all in it."""
        hidden = any(part.startswith(".") for part in PurePosixPath(relative).parts)
        path = PurePosixPath(_fold(relative) if local_source else relative)
        return hidden or (nested is not None and (nested == path or nested in path.parents))

    unreadable = [Job(join(source, relative), join(destination, relative), unreadable=reason)
                  for relative, reason in listing.unreadable.items() if not left_alone(relative)]
    for relative in listing.files:
        path = PurePosixPath(relative)
        suffix = path.suffix.lower()
        if left_alone(relative):
            continue
        if suffix == DRC_SUFFIX:
            output = path.with_suffix(settings.decoded_suffix)
        elif suffix in IMAGE_SUFFIXES:
            output = path.with_suffix(DRC_SUFFIX)
        else:
            continue
        job = Job(join(source, relative), join(destination, output.as_posix()))
        first = first_source.setdefault(_same_place(job.target), job.source)  # a link in the destination too
        jobs.append(job if first == job.source else Job(job.source, job.target, same_output_as=first))
    sources = {_same_place(job.source) for job in jobs}
    jobs = [replace(job, replaces_source=True) if _same_place(job.target) in sources else job for job in jobs]
    return sorted(jobs + unreadable, key=lambda job: path_of(job.source))


def _same_place(location: Location) -> str:
    """A key that two names of one file share (./p/a.png, /abs/p/a.png, a link to p, file:///abs/p/a.png;
    on macOS and Windows A.PNG too: _fold)."""
    local = local_path(location)
    return str(location) if local is None else _fold(os.path.realpath(local))  # never raises on a link loop


def _fold(name: str) -> str:
    """A local name as the system's own file systems compare names: NTFS whatever the case,
    APFS and HFS+ whatever the case and the Unicode composition (é as one character or two);
    elsewhere as it is. A case-sensitive volume on a Mac sees a collision more than there is:
    a failure, not a loss."""
    if sys.platform not in ("darwin", "win32"):
        return name
    if sys.platform == "darwin":
        name = unicodedata.normalize("NFD", name)
    return "".join(map(_fold_character, name))


def _fold_character(character: str) -> str:
    """One character's case folded alone, as those file systems fold it: the Greek capital,
    small and final sigma alike, the long s as s, but ß not as ss (a fold to several
    characters is not theirs)."""
    folded = character.casefold()
    if len(folded) == 1:
        return folded
    lowered = character.lower()
    return lowered if len(lowered) == 1 else character


def _inside(destination: Location, source: Location) -> PurePosixPath | None:
    """Where `destination` lies under `source`, relative to it (None: elsewhere, or the same
    folder); for local folders in the system's own comparison of names (_fold)."""
    if (below := local_path(destination)) is not None and (above := local_path(source)) is not None:
        below, above = (Path(_fold(os.path.realpath(folder))) for folder in (below, above))
        return PurePosixPath(below.relative_to(above).as_posix()) if below != above and below.is_relative_to(above) \
            else None
    if not (is_uri(destination) and is_uri(source)):  # one here, the other in a store
        return None
    # two URIs: the same scheme, host and query (?endpoint_override=...), a path below
    below, above = urlsplit(str(destination)), urlsplit(str(source))
    if (below.scheme, below.netloc, below.query) != (above.scheme, above.netloc, above.query):
        return None
    lower, upper = unquote(below.path).rstrip("/"), unquote(above.path).rstrip("/")
    return PurePosixPath(lower[len(upper):].strip("/")) if lower.startswith(upper + "/") else None


def check_settings(settings: BatchSettings, jobs: Iterable[Job], on_ray: bool = False) -> None:
    """Fail once, before any worker, where every file would fail alike: base weights that do
    not load, a level out of range for them, and, where a .drc file may decode with steps (asked
    for, or recommended by the files when diffusion weights are named), diffusion weights
    missing, for other base weights, or without their restoration filter. For Ray the models
    load on the CPU: the head node may have no GPU."""
    from diraccodec import api

    codec = api.get_codec(settings.weights, api.compute_for("cpu" if on_ray else settings.device, settings.exact))
    if settings.size is None and settings.bpp is None:
        api.check_quality(settings.quality, codec.num_levels)
    may_take_steps = settings.steps or (settings.steps is None and settings.diffusion_weights is not None)
    if may_take_steps and any(job.decodes for job in jobs):
        api.restorer_for(api.diffusion_weights_for(codec, settings.diffusion_weights), codec.compute)


def run_job(job: Job, settings: BatchSettings) -> JobResult:
    """Convert one file, in the process of whichever worker runs it (local or Ray): every
    failure becomes the job's result, named, so that one bad file never stops the batch."""
    from diraccodec import api
    from diraccodec.image.files import check_image_fits, image_bytes, image_format_for

    if job.unreadable is not None:
        return JobResult(job, "failed", f"cannot read this folder ({job.unreadable}): nothing in it is converted")
    if job.same_output_as is not None:
        return JobResult(job, "failed", f"converts to the same output as {job.same_output_as}; rename one of them")
    try:
        source, target = storage_for(job.source), storage_for(job.target)
        if not settings.overwrite and target.exists(job.target):
            return JobResult(job, "skipped", "output exists")
        if job.replaces_source:
            return JobResult(job, "failed", f"its output {job.target} is an input of this batch, left as it is: "
                                            f"convert into another folder")
        data = source.read(job.source)
        if job.encodes:
            quality = None if settings.size is not None or settings.bpp is not None else settings.quality
            encoded = api.encode(data, quality, size=settings.size, bpp=settings.bpp, effort=settings.effort,
                                 steps=settings.steps, detail_map=settings.detail_map, weights=settings.weights,
                                 device=settings.device, max_pixels=settings.max_pixels, label=str(job.source),
                                 metadata=settings.metadata)
            info = api.inspect(encoded, settings.max_pixels)  # before the write, as `dirac encode` does
            target.write_atomic(job.target, encoded)
            return JobResult(job, "converted", "", len(data), len(encoded), info.header.pixels)
        image_format = image_format_for(Path(path_of(job.target)))
        header = unpack(data, settings.max_pixels)  # the decode reads its sections
        check_image_fits(image_format, header.width, header.height, header.colour_mode.has_alpha)  # before the work
        image = api.decode(data, settings.steps, settings.seed, weights=settings.weights,
                           diffusion_weights=settings.diffusion_weights, device=settings.device, exact=settings.exact,
                           max_pixels=settings.max_pixels, restore=settings.restore)
        output = image_bytes(image, image_format, settings.png_compression)
        target.write_atomic(job.target, output)
        return JobResult(job, "converted", "", len(data), len(output), image.width * image.height)
    except LimitExceededError as error:
        return JobResult(job, "failed", f"{error} {MAX_PIXELS_HINT}")
    except DiracError as error:
        return JobResult(job, "failed", str(error))
    except Exception as error:
        if is_out_of_memory(error):
            return JobResult(job, "failed", out_of_memory_message(error))
        return JobResult(job, "failed", f"unexpected {type(error).__name__}: {error}")


def gather(results: Iterable[JobResult], on_result: Callable[[JobResult], None]) -> list[JobResult]:
    """Every result, each handed to `on_result` as it arrives (the progress bar moves with them)."""
    collected = []
    for result in results:
        on_result(result)
        collected.append(result)
    return collected
