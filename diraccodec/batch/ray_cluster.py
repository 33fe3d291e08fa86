"""The batch on a Ray cluster: a pool of actors, each loading the models once.

The address: "auto" (`dirac batch --ray` alone) connects to the cluster that $RAY_ADDRESS
or `ray start` on this machine names, and where there is none starts a local Ray instance,
stopped again at the end; any other address (`--ray HOST:6379`, `--ray ray://HOST:10001`)
connects to that cluster or fails. A program that already called ray.init() keeps its
connection. Ray is imported only here, and only when asked for: it is an optional extra.

Each actor converts one file at a time with `run_job`, so the local batch's guarantees hold
(skip, atomic writes, a bad file is a failed result); a worker that dies takes only its
current file with it, as a failed result, and a fresh actor takes its place. An actor that
runs another diraccodec version or other base weights than this process is given no work.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from diraccodec.batch.jobs import BatchSettings, Job, JobResult, gather, run_job
from diraccodec.batch.storage import absolute
from diraccodec.errors import DiracError, Terminated
from diraccodec.options import AUTO

RAY_MISSING = "--ray needs Ray: pip install diraccodec[ray]"
AUTO_ADDRESS = "auto"
CONNECT_SECONDS = 10
WORKER_DIED = "Ray worker died while converting this file"
PIPELINE = 2  # files an actor holds at once
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit): ")


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise DiracError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class WorkerPlan:
    count: int  # actors
    num_cpus: float  # Ray's resource request per actor
    num_gpus: float
    threads: int  # torch threads per actor


def share(total: float, count: int) -> float:
    """total / count as Ray takes a request: whole numbers above 1, and below 1 rounded down
    to Ray's 1/10000 (2/3 rounded up three times would be more than 2, and one would never start)."""
    each = total / count
    return float(int(each)) if each >= 1 else math.floor(each * 10_000) / 10_000


def plan_workers(cpus: float, gpus: float, node_cpus: float, device: str, workers: int | None) -> WorkerPlan:
    """One actor per GPU where the cluster has them and the device allows, else one per CPU;
    `workers` overrides the count, and the resources are shared out among the actors."""
    if device == "cuda" and gpus < 1:
        raise DiracError("--device cuda was asked for, but the Ray cluster has no GPUs (use auto or cpu)")
    if gpus >= 1 and device in (AUTO, "cuda"):
        count = workers or int(gpus)
        return WorkerPlan(count, min(1.0, share(cpus, count)), min(1.0, share(gpus, count)), 1)
    count = workers or max(1, int(cpus))
    each = min(share(cpus, count), max(node_cpus, 1.0))  # an actor lives on one node
    return WorkerPlan(count, each, 0.0, max(1, int(each)))


def worker_identity(settings: BatchSettings) -> str:
    """The diraccodec version and base weights a process converts with: every node of a cluster
    must have the same, or files would silently come out of other weights."""
    from diraccodec import __version__
    from diraccodec.modelfiles import default_weights_path, load_base_weights

    try:
        weights = load_base_weights(Path(settings.weights or default_weights_path()).resolve()).weights_id.hex()
    except DiracError as error:
        weights = f"unreadable ({error})"
    return f"diraccodec {__version__} with base weights {weights}"


def warm_models(settings: BatchSettings) -> None:
    """Load the networks the jobs use, once per actor rather than on its first file."""
    from diraccodec import api

    # a failure here (weights missing on this node, say) recurs in each job, where run_job reports it
    with contextlib.suppress(DiracError):
        for exact in {False, settings.exact}:  # encoding never runs exact, decoding may
            codec = api.get_codec(settings.weights, api.compute_for(settings.device, exact))
            api.get_restorer(codec)
            if settings.steps:
                api.get_diffusion(codec)


class Converter:
    """The actor (wrapped by ray.remote when a batch starts, so that importing needs no Ray)."""

    def __init__(self, settings: BatchSettings, threads: int) -> None:
        import torch

        from diraccodec.errors import show_warnings_on_one_line

        torch.set_num_threads(threads)
        show_warnings_on_one_line()
        self.settings = settings
        warm_models(settings)

    def ready(self) -> str:
        """What it converts with (worker_identity), once its models are loaded."""
        return worker_identity(self.settings)

    def convert(self, job: Job) -> JobResult:
        return run_job(job, self.settings)


def run_batch_on_ray(
    jobs: list[Job], settings: BatchSettings, address: str, workers: int | None,
    on_result: Callable[[JobResult], None],
) -> list[JobResult]:
    """Convert `jobs` on the Ray cluster at `address`, with `workers` actors (None: see plan_workers);
    each result reaches `on_result` as its file finishes."""
    ray = import_ray()
    connected = connect(ray, address)
    results = None
    try:
        plan = cluster_plan(ray, settings.device, workers)
        results = _Dispatcher(ray, jobs, settings, plan, worker_identity(settings)).results()
        return gather(results, on_result)
    finally:
        if results is not None:
            results.close()  # its actors are killed now, while connected (Ctrl-C may come while a result prints)
        if connected:
            ray.shutdown()  # a local instance started by connect() stops with it


def connect(ray: ModuleType, address: str) -> bool:
    """Whether this call connected, and so must disconnect at the end."""
    check_address(address)
    if ray.is_initialized():
        return False
    if address != AUTO_ADDRESS:
        check_reachable(address)
    ours = signal.getsignal(signal.SIGTERM)
    try:  # no address: $RAY_ADDRESS, else the cluster `ray start` runs here, else a new local instance
        ray.init(address=None if address == AUTO_ADDRESS else address, include_dashboard=False,
                 logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as error:
        where = "a Ray cluster" if address == AUTO_ADDRESS else f"the Ray cluster at {address}"
        raise DiracError(f"cannot connect to {where}: {one_line(error)}") from None
    except SystemExit:  # SIGTERM meanwhile, through the handler ray.init sets for its start-up
        raise Terminated() from None
    finally:  # ray.init sets a SIGTERM handler that exits at once, without the batch's cleanup
        if ours is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, ours)
    return True


def check_address(address: str) -> None:
    """Refuse an empty address (`--ray ""`, a script's unset variable), before any work."""
    if not address.strip():
        raise DiracError("the Ray address is empty: give HOST:PORT or ray://HOST:PORT, or none for a local "
                         "or the configured cluster")


def check_reachable(address: str) -> None:
    """Fail in seconds where Ray would retry a wrong HOST:PORT for minutes."""
    host, _, port = address.rpartition("://")[2].rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: Ray judges it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise DiracError(f"cannot connect to the Ray cluster at {address}: {error.strerror or error}") from None


def cluster_plan(ray: ModuleType, device: str, workers: int | None) -> WorkerPlan:
    resources = ray.cluster_resources()
    node_cpus = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0)
    return plan_workers(resources.get("CPU", 0.0), resources.get("GPU", 0.0), node_cpus, device, workers)


class _Dispatcher:
    """The files of one batch to the cluster's actors, and their results in the order files
    finish. Work goes only to actors that have started, so actors the cluster cannot place
    (yet) hold nothing up. An actor holds at most PIPELINE files: one converting and the next
    already sent, so it never waits for a round trip through this driver. When an actor dies,
    a file it finished keeps its result; if it held one file more, that file fails, and if it
    held several, none can be blamed for sure (a result on its way dies with the actor), so
    each goes back to the queue to be converted alone, by an actor holding nothing else. An
    actor whose worker_identity differs from `identity` gets no work."""

    def __init__(self, ray: ModuleType, jobs: list[Job], settings: BatchSettings, plan: WorkerPlan,
                 identity: str) -> None:
        self.ray, self.settings, self.plan, self.identity = ray, settings, plan, identity
        self.actor_class = ray.remote(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=0)(Converter)
        self.actors: list[Any] = []
        self.starting: dict[Any, Any] = {}  # ready() reference -> actor
        self.running: dict[Any, tuple[Job, Any]] = {}  # convert() reference -> (job, actor)
        self.held: dict[Any, deque[Any]] = {}  # actor -> its convert() references, oldest first
        self.suspects: set[Job] = set()  # files of an actor that died holding several: each goes alone
        self.queue = deque(jobs)
        self.start_failure = ""

    def results(self) -> Iterator[JobResult]:
        for _ in range(min(self.plan.count, len(self.queue))):
            self._start()
        try:
            while self.queue or self.running:
                if not self.starting and not self.running:
                    for job in self.queue:
                        yield JobResult(job, "failed", f"no Ray worker could start: {self.start_failure}")
                    return
                [reference], _ = self.ray.wait([*self.running, *self.starting], num_returns=1)
                if reference in self.starting:
                    self._started(reference)
                else:
                    yield from self._finished(reference)
        finally:
            for actor in self.actors:
                self.ray.kill(actor)

    def _start(self) -> None:
        actor = self.actor_class.remote(self.settings, self.plan.threads)
        self.actors.append(actor)
        self.starting[actor.ready.remote()] = actor

    def _give_work(self, actor: Any) -> None:
        files = self.held.setdefault(actor, deque())
        # a second file only while there is work for every actor, so the last files go to idle ones
        while self.queue and (not files or (len(files) < PIPELINE and len(self.queue) >= self.plan.count)):
            if files and (self.queue[0] in self.suspects or self.running[files[0]][0] in self.suspects):
                break
            job = self.queue.popleft()
            # the worker's folder is not ours; the job's own flags go with it
            shipped = replace(job, source=absolute(job.source), target=absolute(job.target))
            reference = actor.convert.remote(shipped)
            self.running[reference] = (job, actor)
            files.append(reference)

    def _started(self, reference: Any) -> None:
        """An actor's start ended: work for it, or the reason why no actor could start."""
        actor = self.starting.pop(reference)
        try:
            converts_with = self.ray.get(reference)
        except self.ray.exceptions.RayError as error:
            self.start_failure = one_line(error)
            return
        if converts_with != self.identity:  # its files would not be this batch's
            self.start_failure = f"a worker runs {converts_with}, where this batch runs {self.identity}"
            self.ray.kill(actor)
            return
        self._give_work(actor)

    def _finished(self, reference: Any) -> Iterator[JobResult]:
        """A file's conversion ended: its result, or those of its dead actor's files."""
        job, actor = self.running[reference]
        result, died = _outcome(self.ray, reference, job)
        if not died:
            del self.running[reference]
            self.held[actor].remove(reference)
            self._give_work(actor)  # before the caller sees the result: its printing may take a while
            yield result
            return
        with contextlib.suppress(Exception):  # unreachable rather than dead: it must not convert them too
            self.ray.kill(actor)
        # a file it finished before it died keeps its result (the wait may have named the death first)
        unfinished = []
        for sent in self.held.pop(actor):
            sent_job = self.running.pop(sent)[0]
            finished = sent != reference and self.ray.wait([sent], timeout=0)[0]
            sent_result, lost = _outcome(self.ray, sent, sent_job) if finished else (None, True)
            if lost:
                unfinished.append(sent_job)
            else:
                yield sent_result
        if len(unfinished) == 1:
            yield JobResult(unfinished[0], "failed", WORKER_DIED)
        else:
            self.suspects.update(unfinished)
            self.queue.extendleft(reversed(unfinished))
            for idle in [other for other, files in self.held.items() if not files]:
                self._give_work(idle)  # no result of theirs will come to ask for these
        if self.queue:
            self._start()  # in place of the dead one


def _outcome(ray: ModuleType, reference: Any, job: Job) -> tuple[JobResult, bool]:
    """The file's result, and whether its actor died (then the result is unused)."""
    try:
        return replace(ray.get(reference), job=job), False
    except ray.exceptions.RayActorError:
        return JobResult(job, "failed", WORKER_DIED), True
    except ray.exceptions.RayError as error:
        return JobResult(job, "failed", f"Ray: {one_line(error)}"), False


def one_line(error: BaseException) -> str:
    """A Ray error in one line: a task's own exception, or the exception that ends the worker's
    traceback that Ray puts in the message (an actor whose constructor raised), else its first line."""
    cause = getattr(error, "cause", None)
    cause = cause if isinstance(cause, BaseException) else error
    lines = [line.strip() for line in ANSI_COLOUR.sub("", str(cause)).splitlines() if line.strip()]
    raised = [line for line in lines if EXCEPTION_LINE.match(line)]
    text = raised[-1] if raised else lines[0] if lines else ""
    return text if raised else f"{type(cause).__name__}: {text}".rstrip(": ")
