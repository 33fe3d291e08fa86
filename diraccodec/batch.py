"""Converting whole folder trees: images to .drc files, or .drc files to images.

Each file goes into the same relative place under the destination. Work is spread over
worker processes; an existing output is skipped unless overwriting is asked for; a bad
file is recorded and the rest still converted. Outputs are written atomically, so a run
that is killed can simply be started again: finished files are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from diraccodec.api import DEFAULT_EFFORT
from diraccodec.compute import AUTO
from diraccodec.container.drc import DEFAULT_MAX_PIXELS
from diraccodec.errors import DiracError
from diraccodec.image.planes import IMAGE_SUFFIXES

DRC_SUFFIX = ".drc"


@dataclass(frozen=True)
class BatchSettings:
    quality: float = 3.0
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


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path

    @property
    def encodes(self) -> bool:
        return self.source.suffix.lower() != DRC_SUFFIX


@dataclass
class JobResult:
    job: Job
    status: str  # "converted", "skipped" or "failed"
    message: str = ""
    input_bytes: int = 0
    output_bytes: int = 0
    pixels: int = 0


def plan_jobs(source: Path, destination: Path, settings: BatchSettings) -> list[Job]:
    """Every image and .drc file under `source`, with its output path under `destination`."""
    jobs = []
    for path in sorted(source.rglob("*")):
        suffix = path.suffix.lower()
        if not path.is_file() or path.name.startswith("."):
            continue
        if suffix == DRC_SUFFIX:
            target = destination / path.relative_to(source).with_suffix(settings.decoded_suffix)
        elif suffix in IMAGE_SUFFIXES:
            target = destination / path.relative_to(source).with_suffix(DRC_SUFFIX)
        else:
            continue
        jobs.append(Job(path, target))
    return jobs


def run_job(job: Job, settings: BatchSettings) -> JobResult:
    from diraccodec import api
    from diraccodec.image.files import read_bytes, write_atomic, write_image

    if job.target.exists() and not settings.overwrite:
        return JobResult(job, "skipped", "output exists")
    try:
        data = read_bytes(job.source)
        if job.encodes:
            quality = None if settings.size is not None or settings.bpp is not None else settings.quality
            encoded = api.encode(data, quality, size=settings.size, bpp=settings.bpp, effort=settings.effort,
                                 steps=settings.steps, detail_map=settings.detail_map, weights=settings.weights,
                                 device=settings.device, max_pixels=settings.max_pixels, label=str(job.source))
            write_atomic(job.target, encoded)
            info = api.inspect(encoded)
            return JobResult(job, "converted", "", len(data), len(encoded), info.header.pixels)
        image = api.decode(data, settings.steps, settings.seed, weights=settings.weights, device=settings.device,
                           exact=settings.exact, max_pixels=settings.max_pixels)
        write_image(job.target, image)
        return JobResult(job, "converted", "", len(data), job.target.stat().st_size, image.width * image.height)
    except DiracError as error:
        return JobResult(job, "failed", str(error))
    except Exception as error:
        return JobResult(job, "failed", f"unexpected {type(error).__name__}: {error}")


def _init_worker() -> None:
    import torch

    from diraccodec.errors import show_warnings_on_one_line

    torch.set_num_threads(1)
    show_warnings_on_one_line()


def run_batch(
    jobs: list[Job], settings: BatchSettings, workers: int, on_result: Callable[[JobResult], None]
) -> list[JobResult]:
    results = []
    for result in _results(jobs, settings, workers):
        on_result(result)
        results.append(result)
    return results


def _results(jobs: list[Job], settings: BatchSettings, workers: int) -> Iterator[JobResult]:
    if workers <= 1:
        for job in jobs:
            yield run_job(job, settings)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        futures = {pool.submit(run_job, job, settings): job for job in jobs}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:  # a worker died (killed, out of memory): report, do not crash
                yield JobResult(futures[future], "failed", "worker process died while converting this file")


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
