"""The batch on this machine: a pool of worker processes, one thread each."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing.context import BaseContext

from diraccodec.batch.jobs import BatchSettings, Job, JobResult, gather, run_job
from diraccodec.batch.storage import local_path
from diraccodec.image.files import remove_left_by, remove_unfinished

WORKER_DIED = "worker process died while converting this file"
# How long a broken pool's futures may take to end (they end at once; a submit that raced the
# break may leave one that never does, and its file then goes again as a suspect)
BROKEN_POOL_SECONDS = 60
WINDOWS_MOST_WORKERS = 61  # a process pool's limit there (its wait takes 63 handles)


def _init_worker() -> None:
    """A worker ends on SIGTERM only, sent by the batch's own process (or by its pool when a
    worker died), which handles Ctrl-C for the whole batch: the terminal's SIGINT, sent to
    every process in the group, is ignored here."""
    signal.signal(signal.SIGTERM, _end_mid_write)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from diraccodec.errors import show_warnings_on_one_line

    torch.set_num_threads(1)
    show_warnings_on_one_line()


def _end_mid_write(number: int, _frame: object) -> None:
    """A worker's end when told to stop, without Python's own end, which would leave the
    file being written beside the outputs. Its file goes again in a fresh pool, or not at all
    where the batch is stopping."""
    remove_unfinished()
    os._exit(128 + number)


def run_batch(
    jobs: list[Job], settings: BatchSettings, workers: int, on_result: Callable[[JobResult], None]
) -> list[JobResult]:
    results = _results(jobs, settings, workers)
    try:
        return gather(results, on_result)
    finally:
        results.close()  # stopped early (Ctrl-C while a result is shown): the workers stop now, not when collected


def worker_start(device: str) -> BaseContext | None:
    """How the workers start: fresh interpreters (spawn) where the work runs on CUDA, which a
    process forked from one that has used CUDA cannot use, and this one has (resolving `auto`
    initialises the driver; the options are checked on the device). Elsewhere the platform's
    default (a fork on Linux: quick, with torch already imported)."""
    from diraccodec.compute import resolve_device

    return multiprocessing.get_context("spawn") if resolve_device(device).type == "cuda" else None


def _results(jobs: list[Job], settings: BatchSettings, workers: int) -> Iterator[JobResult]:
    """Every job's result. A worker that dies (killed, out of memory) takes the pool down, and
    with it the files the other workers were converting: each file that was in the pool goes
    again alone, in a pool of its own, so that only a file that kills its worker fails. The
    rest go on in a fresh pool."""
    if workers <= 1:
        for job in jobs:
            yield run_job(job, settings)
        return
    if sys.platform == "win32":
        workers = min(workers, WINDOWS_MOST_WORKERS)
    queue, start = deque(jobs), worker_start(settings.device)
    while queue:
        suspects = yield from _until_a_worker_dies(queue, settings, workers, start)
        for job in suspects:
            alone = deque([job])
            while alone:  # emptied by the run, unless the pool was found broken before it took the file
                if (yield from _until_a_worker_dies(alone, settings, 1, start)):
                    yield JobResult(job, "failed", WORKER_DIED)


def _until_a_worker_dies(queue: deque[Job], settings: BatchSettings, workers: int,
                         start: BaseContext | None) -> Iterator[JobResult]:
    """The results of jobs taken from `queue`, one per worker at a time, so that the files in a
    pool are known when a worker dies; returns those files then (else nothing). Once the
    pool's workers have ended, what one ended mid-write without its own cleanup left beside
    its output goes: a worker killed (out of memory), or stopped on Windows, where no signal
    runs its handler."""
    running: dict[Future, Job] = {}
    worker_ids: set[int] = set()
    try:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=start) as pool:
            try:
                return (yield from _results_in(pool, queue, settings, workers, running, worker_ids))
            except BaseException:  # Ctrl-C, SIGTERM (the CLI raises it as one), or the batch closed early
                _stop_workers(pool)
                raise
    finally:
        remove_left_by(worker_ids, [path for job in running.values() if (path := local_path(job.target))])


def _results_in(pool: ProcessPoolExecutor, queue: deque[Job], settings: BatchSettings, workers: int,
                running: dict[Future, Job], worker_ids: set[int]) -> Iterator[JobResult]:
    """The results of `queue`'s jobs, with the jobs in the pool kept in `running` and the ids
    of its worker processes (known once a submit has started them) in `worker_ids`."""
    while queue or running:
        broken = False
        while queue and len(running) < workers and not broken:
            job = queue.popleft()
            try:
                with _signals_held():
                    running[pool.submit(run_job, job, settings)] = job
                worker_ids.update(process.pid for process in _workers_of(pool) if process.pid is not None)
            except BrokenProcessPool:  # a worker died since the last wait
                queue.appendleft(job)
                broken = True
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        if broken or any(isinstance(future.exception(), BrokenProcessPool) for future in finished):
            finished, _ = wait(running, timeout=BROKEN_POOL_SECONDS)  # a broken pool ends every future
            broken = True
        for future in finished:
            if not isinstance(future.exception(), BrokenProcessPool):
                yield future.result()
                del running[future]
        if broken:
            return list(running.values())
    return []


def _workers_of(pool: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """The pool's worker processes (it does not publish them)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now rather than wait for their files (minutes, for a large
    decode); each removes the file it was writing (`_end_mid_write`). Left running, they would
    finish after this process is gone, or wait for work forever."""
    with _signals_held():
        for process in _workers_of(pool):
            process.terminate()


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the end of the block, then act as they would have: a
    worker forked by a submit is on the pool's list only once the submit returns, and one
    missed by `_stop_workers` would wait for work forever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    holder = os.getpid()

    def hold(number: int, _frame: object) -> None:
        if os.getpid() == holder:
            held.append(number)
        elif number == signal.SIGTERM:  # a worker forked in the block, told to stop before it set its own handler
            os._exit(128 + number)

    previous = {number: signal.signal(number, hold) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in sorted(set(held), key=lambda number: number != signal.SIGTERM):  # SIGTERM's status wins
            signal.raise_signal(number)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
