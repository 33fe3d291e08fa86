"""The batch on this machine: a pool of worker processes, one thread each."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from diraccodec.batch.jobs import BatchSettings, Job, JobResult, gather, run_job


def _init_worker() -> None:
    import torch

    from diraccodec.errors import show_warnings_on_one_line

    torch.set_num_threads(1)
    show_warnings_on_one_line()


def run_batch(
    jobs: list[Job], settings: BatchSettings, workers: int, on_result: Callable[[JobResult], None]
) -> list[JobResult]:
    return gather(_results(jobs, settings, workers), on_result)


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
