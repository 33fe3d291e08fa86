"""The training loop every model shares: learning-rate schedule, logging, state saves, resume.

A model's training supplies one function that draws a batch and returns its loss (and any
figures worth logging); this loop does the rest identically on the CPU and on CUDA. It serves
short, preemptible GPU runs as well as long CPU ones: on CUDA it trains with TF32, channels-last
tensors, fused Adam and a compiled model (bfloat16 autocast on request); under a wall-clock
budget it stops early enough to save; SIGTERM or Ctrl-C stop it at the next step boundary,
saved; and it reports its throughput (training pixels per second, start-up excluded) in its log
and in a JSON summary beside the state.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress, TextColumn

from diraccodec.compute import cuda_available
from diraccodec.console import bar_columns, draws_live_bars
from diraccodec.errors import DiracError, Terminated, is_out_of_memory
from diraccodec.image.files import write_atomic
from diraccodec.training.averaging import WeightAverage
from diraccodec.training.checkpoint import (
    DEFAULT_PART_BYTES,
    MOMENTS_DTYPE,
    TrainingState,
    check_state_place,
    load_checkpoint,
    save_checkpoint,
    state_exists,
    state_folder,
    state_parts,
    summary_path,
)
from diraccodec.training.speed import StepProfile, Throughput


@dataclass
class LoopOptions:
    checkpoint: Path  # the state's folder (`NAME.safetensors` names the folder NAME)
    steps: int
    learning_rate: float = 2e-4
    decay_from: float = 0.8  # fraction of `steps` after which the rate decays to 1/10
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    clip_norm: float = 1.0
    # A wall-clock budget for this run, counted from its start (data loading and compilation
    # included): the step count is set from the measured speed, so that the learning-rate
    # decay ends when the time does, and the run stops early enough to save.
    minutes: float | None = None
    # The latest end of that budget, in seconds since the epoch (time.time()): a process that
    # another one launched ends by the launcher's deadline, its own start-up counted.
    deadline: float | None = None
    calibration_steps: int = 100
    # The step that `decay_from` counts from: 0 for a run to a total step count; the run's
    # first step under `minutes`, so a resumed run decays over the end of its own budget.
    schedule_start: int = 0
    # A run without Adam moments (resumed from a copy without them, or started from trained
    # weights) ramps its learning rate up over this many steps instead of taking full-size
    # steps blind.
    warmup_steps: int = 200
    # Decay of the moving average of the weights that export ships (0: none, the last step's
    # weights are shipped). 0.999 averages over about the last thousand steps.
    average_decay: float = 0.0
    compile: bool | None = None  # torch.compile the trained model; None: on CUDA, where it pays
    channels_last: bool | None = None  # channels-last weights and crops; None: on CUDA
    bf16: bool = False  # bfloat16 autocast of the forward pass
    stop_after: int | None = None  # the most steps this run takes (the schedule still spans `steps`)
    part_bytes: int = DEFAULT_PART_BYTES  # the largest part of the saved state
    exact_moments: bool = False  # save the Adam moments in float32: a bit-exact resume, a larger state
    save_margin_seconds: float = 15.0  # kept free at the end of a `minutes` budget for the last save
    # Steps to run under torch's profiler once `profile_after` steps of this run are done
    # (compilation and warm-up behind them); the log then says where their time went. 0: none.
    profile_steps: int = 0
    profile_after: int = 50


def check_before_work(options: LoopOptions) -> None:
    """What every trainer checks before it loads anything: a place where the state can be saved
    without losing what is there, a device this machine has, and a time budget longer than
    the margin kept for the last save."""
    check_state_place(options.checkpoint)
    try:
        device = torch.device(options.device)
    except RuntimeError:
        raise DiracError(f"unknown device {options.device!r} (use cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise DiracError(f"unsupported device {options.device!r} (use cpu or cuda)")
    if device.type == "cuda" and not cuda_available():
        raise DiracError("device cuda was asked for, but this machine has no CUDA device (use cpu)")
    # (a launcher's deadline that has passed still gets its start, save and export)
    if options.minutes is not None and options.deadline is None and options.minutes * 60 <= options.save_margin_seconds:
        raise DiracError(f"--minutes {options.minutes:g} leaves no time to train: the last "
                         f"{options.save_margin_seconds:g} s are kept for the save")


def decay_start(options: LoopOptions) -> float:
    """The step where the cosine decay begins: `decay_from` of the way from schedule_start to the end."""
    return options.schedule_start + options.decay_from * (options.steps - options.schedule_start)


def learning_rate_at(step: int, options: LoopOptions, warmup_from: int | None = None) -> float:
    """Constant, then a cosine decay to 1/10 over the last part; a linear ramp after `warmup_from`."""
    ramp = 1.0
    if warmup_from is not None and options.warmup_steps > 0:
        ramp = min(1.0, (step - warmup_from + 1) / options.warmup_steps)
    start = decay_start(options)
    if step < start:
        return options.learning_rate * ramp
    progress = min(1.0, (step - start) / max(1.0, options.steps - start))
    return options.learning_rate * ramp * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainingRun:
    """What a training run holds: the model, the module its steps call, its optimiser, the data RNG
    and the progress."""

    model: torch.nn.Module  # the weights that are saved
    optimizer: torch.optim.Adam
    generator: torch.Generator  # on the device: the crops, levels and all else the data draws
    state: TrainingState
    device: torch.device
    step_model: torch.nn.Module  # what the loss calls: the model, or the model compiled
    warmup_from: int | None = None  # the step a run without Adam moments started at
    average: WeightAverage | None = None
    channels_last: bool = False
    started: float = field(default_factory=time.monotonic)  # a `minutes` budget counts from here

    def save(self, options: LoopOptions) -> list[Path]:
        self.state.warmup_from = self.warmup_from
        moments_dtype = torch.float32 if options.exact_moments else MOMENTS_DTYPE
        return save_checkpoint(options.checkpoint, self.model, self.optimizer, self.generator, self.state,
                               self.average, options.part_bytes, moments_dtype)


def start_run(model: torch.nn.Module, options: LoopOptions, console: Console,
              from_weights: bool = False) -> TrainingRun:
    """Put the model on its device, seed the data generator, and resume from the saved state when there is one.

    from_weights: the model holds trained weights (a new run started from them); without Adam
    moments its learning rate ramps up, as for a resumed run that has none."""
    started = time.monotonic()
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    on_cuda = device.type == "cuda"
    if on_cuda:  # TF32 convolutions: several times faster, ample for training
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    channels_last = on_cuda if options.channels_last is None else options.channels_last
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=options.learning_rate, fused=True if on_cuda else None)
    generator = torch.Generator(device).manual_seed(options.seed)
    state = TrainingState(step=0, seconds=0.0, metadata={})
    warmup_from = 0 if from_weights else None
    average = WeightAverage(model, options.average_decay) if options.average_decay > 0 else None
    if state_exists(options.checkpoint):
        state = load_checkpoint(options.checkpoint, model, optimizer, generator, average)
        console.print(f"resumed from {state_folder(options.checkpoint)} at step {state.step}")
        warmup_from = state.warmup_from
        if state.step > 0 and not optimizer.state:
            warmup_from = state.step
            console.print(f"no Adam moments saved: the learning rate ramps up over {options.warmup_steps} steps")
        if warmup_from is not None and state.step >= warmup_from + options.warmup_steps:
            warmup_from = None  # the ramp is over
    state.metadata.pop("average_decay", None)  # an earlier run's setting says nothing of this one's
    if average is not None:
        state.metadata["average_decay"] = options.average_decay
    compiled = on_cuda if options.compile is None else options.compile
    if compiled:  # where compilation fails, the steps run uncompiled rather than a short run ending
        torch._dynamo.config.suppress_errors = True
        _count_compilations_anew()
    step_model = torch.compile(model) if compiled else model
    return TrainingRun(model, optimizer, generator, state, device, step_model, warmup_from, average, channels_last,
                       started)


class _StopRequest:
    requested = False
    interruption: type[KeyboardInterrupt] = KeyboardInterrupt  # what the run raises once saved


def _interruption(signum: int) -> type[KeyboardInterrupt]:
    return Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def _stop_requests() -> Iterator[_StopRequest]:
    """SIGTERM (`kill`) and Ctrl-C while training: the first asks the loop to stop at the next step
    boundary and save; a second stops at once, leaving the last saved state."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def ask(signum: int, frame: object) -> None:
        if request.requested:
            raise _interruption(signum)
        request.requested = True
        request.interruption = _interruption(signum)

    previous = {number: signal.signal(number, ask) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)


class _Budget:
    """A run's wall-clock end (its `minutes`, a launcher's `deadline`) and the margin it keeps
    before it for the last save; under `minutes` it also sets options.steps from the measured
    speed, so that the learning-rate decay ends when the time does.

    The speed is measured from the end of the run's first step, then from the step of its
    first estimate: on a GPU the first step compiles the model, which can take a minute or
    more; counted in the speed, it would set the run's end far too early, and a decay begun
    before the next estimate would keep it there."""

    def __init__(self, run: TrainingRun, options: LoopOptions) -> None:
        self.options, self.first_step = options, run.state.step
        self.end: float | None = None
        self.margin = options.save_margin_seconds
        self.next_step_seconds = 0.0
        self.paced_from, self.paced_since, self.estimated = run.state.step, time.monotonic(), False
        if options.minutes is not None:  # until the speed is known, no end and no decay
            self.end = run.started + options.minutes * 60
            options.steps, options.schedule_start = run.state.step + 10**9, run.state.step
        if options.deadline is not None:
            until = time.monotonic() + options.deadline - time.time()
            self.end = until if self.end is None else min(self.end, until)

    def out_of_time(self) -> bool:
        """Whether the next step, as long as the last, would leave too little time for the save."""
        return self.end is not None and time.monotonic() + self.next_step_seconds + self.margin > self.end

    def fit_steps(self, step: int, console: Console) -> None:
        """Under `minutes`, set options.steps so that the run ends at its end, at the speed
        measured so far, refreshed every `calibration_steps` until the decay begins (a step
        count's run keeps its count, ended early at most)."""
        options, done = self.options, step - self.paced_from
        if options.minutes is None or done == 0 or done % options.calibration_steps or step >= decay_start(options):
            return
        now = time.monotonic()
        rate = done / max(now - self.paced_since, 1e-9)
        options.steps = step + int(rate * max(0.0, self.end - self.margin - now))
        if not self.estimated:
            console.print(f"about {rate:.2f} steps/s: this run ends near step {options.steps}")
            self.paced_from, self.paced_since, self.estimated = step, now, True

    def stepped(self, step: int, seconds: float, now: float) -> None:
        """After a step that took `seconds`: the next is taken to last as long, but after the
        first, which compiles on a GPU (its time would stop a run with less than a compilation
        left); the speed is measured from its end."""
        first = step - self.first_step == 1
        self.next_step_seconds = 0.0 if first else seconds
        if first:
            self.paced_from, self.paced_since = step, now

    def saved(self, seconds: float) -> None:
        """A save that took `seconds`: the last save must fit in the margin."""
        self.margin = max(self.margin, 2 * seconds)


class _Log:
    """The running figures, kept on the device (no GPU sync per step), and their means over each
    window of steps: shown on the progress bar, and printed as a line where no bar is drawn (a
    log file)."""

    def __init__(self, run: TrainingRun, options: LoopOptions, console: Console, show: Callable[[str], None],
                 speed: Throughput, budget: _Budget) -> None:
        self.run, self.options, self.console, self.show, self.speed, self.budget = \
            run, options, console, show, speed, budget
        self.window: dict[str, list[torch.Tensor]] = {}
        self.logged: list[dict[str, float]] = []  # the mean figures of each window

    def add(self, figures: dict[str, torch.Tensor]) -> None:
        for name, value in figures.items():
            self.window.setdefault(name, []).append(value.detach())

    def write(self) -> None:
        """The window's means, shown and (in a log file) printed; the window starts anew."""
        state, options = self.run.state, self.options
        means = {name: float(torch.stack(values).float().mean()) for name, values in self.window.items()}
        self.window.clear()
        self.logged.append(means)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in means.items())
        rate = self.speed.window_rate(state.step - self.budget.first_step)
        if rate is not None:
            shown += f"  {rate:.1f} Mpx/s"
        self.show(shown)
        if not draws_live_bars(self.console):
            total = "?" if options.minutes is not None and not self.budget.estimated else options.steps
            self.console.print(f"step {state.step}/{total}  {shown}  "
                               f"lr {self.run.optimizer.param_groups[0]['lr']:.2e}  {state.seconds / 3600:.2f} h",
                               soft_wrap=True)  # one line per entry, however narrow
            with suppress(OSError):  # a closed or full standard error loses the line alone
                self.console.file.flush()


def run_loop(
    run: TrainingRun,
    options: LoopOptions,
    next_loss: Callable[[], dict[str, torch.Tensor]],
    console: Console,
    pixels_per_step: int | None = None,
) -> TrainingState:
    """Train until options.steps (or the time budget, or `stop_after`); next_loss returns
    {"loss": ..., other figures to log}; pixels_per_step: the training pixels in one step's batch.

    On a terminal a progress bar shows the running figures; otherwise (a log file) a line
    is printed every `log_every` steps. Under a time budget the step count is set from the
    measured speed as the run goes, in a copy of `options`: the caller's stay as they were.
    """
    options = replace(options)
    progress = Progress(*bar_columns(), TextColumn("{task.fields[figures]}"), console=console,
                        disable=not console.is_terminal)
    with progress:
        task = progress.add_task("training", total=options.steps, completed=run.state.step, figures="")
        return _train_until_stopped(run, options, next_loss, console, pixels_per_step, lambda shown: progress.update(
            task, completed=run.state.step, total=options.steps, figures=shown))


def _train_until_stopped(
    run: TrainingRun,
    options: LoopOptions,
    next_loss: Callable[[], dict[str, torch.Tensor]],
    console: Console,
    pixels_per_step: int | None,
    show: Callable[[str], None],
) -> TrainingState:
    """Step, log and save until a stop reason (_stop_reason), then save and print the summary."""
    state = run.state
    budget = _Budget(run, options)
    speed = Throughput(run.device, run.started, pixels_per_step)
    profiled = StepProfile(options.profile_steps, options.profile_after, run.device)
    log = _Log(run, options, console, show, speed, budget)
    last_save, saved_step = time.monotonic(), state.step
    with _stop_requests() as stop:
        try:
            while not (stopped_by := _stop_reason(options, state.step, state.step - budget.first_step,
                                                  stop.requested, budget.out_of_time())):
                budget.fit_steps(state.step, console)
                step_started = time.monotonic()
                log.add(_measured_step(run, options, next_loss, profiled, speed, console, budget.first_step))
                now = time.monotonic()
                budget.stepped(state.step, now - step_started, now)
                state.seconds += now - step_started
                if state.step % options.log_every == 0 or state.step == options.steps:
                    log.write()
                if now - last_save > options.checkpoint_minutes * 60:
                    run.save(options)
                    budget.saved(time.monotonic() - now)
                    last_save, saved_step = time.monotonic(), state.step
        except Exception:  # a fault mid-run (out of memory, a kernel's): keep the steps since the last save
            if state.step != saved_step:
                with suppress(Exception):  # a device that faulted may not give its tensors back
                    run.save(options)
                    console.print(f"fault at step {state.step}: the state is saved there")
            raise
    with suppress(Exception):  # a run that ended while it profiled; a fault costs nothing
        profiled.stop()
    measured = speed.summary(state.step - budget.first_step)  # before the last save and log line
    if log.window:
        log.write()
    _finish_run(run, options, console, stopped_by, state.step - budget.first_step, measured, log.logged, saved_step,
                stop.interruption)
    return state


def _measured_step(run: TrainingRun, options: LoopOptions, next_loss: Callable[[], dict[str, torch.Tensor]],
                   profiled: StepProfile, speed: Throughput, console: Console, first_step: int
                   ) -> dict[str, torch.Tensor]:
    """One step (_take_step), profiled where due and marked for the throughput; a profile's time
    is left out of the throughput."""
    profiled.before_step(run.state.step - first_step)
    if run.state.step == first_step and run.step_model is not run.model:
        figures = _first_compiled_step(run, options, next_loss, console)
    else:
        figures = _take_step(run, options, next_loss)
    profile_lines = profiled.after_step(run.state.step - first_step)
    for line in profile_lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if profile_lines and profiled.seconds:
        speed.leave_out(profiled.steps, profiled.seconds)
    speed.stepped(run.state.step - first_step)
    return figures


def _first_compiled_step(run: TrainingRun, options: LoopOptions, next_loss: Callable[[], dict[str, torch.Tensor]],
                         console: Console) -> dict[str, torch.Tensor]:
    """The run's first step, which compiles. Where the compiled model fails as it runs (a
    generated kernel that cannot launch: suppress_errors covers compiling alone), the step is
    taken again uncompiled, on the same batch, and so are the steps after it, rather than the
    run ending before its first save. Nothing was updated yet: the fault came before the
    optimiser's step. Out of memory ends the run (the uncompiled step needs more), and so does
    a fault the uncompiled model makes too."""
    drawn_from = run.generator.get_state()
    try:
        figures = _gradients(run, options, next_loss)
    except Exception as error:  # left before the retry: its traceback holds the failed step's tensors
        if is_out_of_memory(error):  # the uncompiled step needs more
            raise
        fault = "".join(traceback.format_exception_only(error)).strip().splitlines()[0][:300]
    else:
        _update(run, options)
        return figures
    console.print(f"the compiled step failed ({fault}): it is taken again uncompiled, and so are the later ones",
                  markup=False, highlight=False, soft_wrap=True)
    run.step_model = run.model
    run.generator.set_state(drawn_from)
    return _take_step(run, options, next_loss)


def _finish_run(run: TrainingRun, options: LoopOptions, console: Console, stopped_by: str, steps_this_run: int,
                measured: dict[str, float | None], logged: list[dict[str, float]], saved_step: int,
                interruption: type[KeyboardInterrupt]) -> None:
    """Save what the last checkpoint missed, print and write the summary; an interrupted run
    raises `interruption` (KeyboardInterrupt, or Terminated for SIGTERM) after its save, so
    that stopping by hand loses no steps."""
    if run.state.step != saved_step or not state_parts(options.checkpoint):
        run.save(options)
    summary = _summary(run, options, stopped_by, steps_this_run, measured, logged)
    console.print("summary " + json.dumps(summary), markup=False, highlight=False, soft_wrap=True)
    if stopped_by == "interrupted":
        console.print(f"interrupted: checkpoint saved at step {run.state.step}")
        raise interruption


def _stop_reason(options: LoopOptions, step: int, steps_this_run: int, requested: bool, out_of_time: bool) -> str:
    """Why the loop stops before another step ("" where it goes on)."""
    if step >= options.steps:  # under `minutes`, the step count is the time budget's
        return "steps" if options.minutes is None else "time"
    if options.stop_after is not None and steps_this_run >= options.stop_after:
        return "stop_after"
    if requested:
        return "interrupted"
    return "time" if out_of_time else ""


def _take_step(run: TrainingRun, options: LoopOptions,
               next_loss: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One optimiser step at the schedule's learning rate; its figures stay on the device."""
    figures = _gradients(run, options, next_loss)
    _update(run, options)
    return figures


def _gradients(run: TrainingRun, options: LoopOptions,
               next_loss: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A step's loss and gradients, at the schedule's learning rate; no weight changes yet."""
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate_at(run.state.step, options, run.warmup_from)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=options.bf16):
        figures = next_loss()
    run.optimizer.zero_grad(set_to_none=True)
    figures["loss"].backward()
    return figures


def _update(run: TrainingRun, options: LoopOptions) -> None:
    """The optimiser's step on the gradients, the weight average after it, and the step counted."""
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), options.clip_norm)
    run.optimizer.step()
    if run.average is not None:
        run.average.update(run.model)
    run.state.step += 1


def _compiler_counters() -> dict[str, Any] | None:
    """torch.compile's own counters (None where this torch has them elsewhere): not a public interface."""
    with suppress(Exception):
        from torch._dynamo.utils import counters

        return counters
    return None


def _count_compilations_anew() -> None:
    """The compiler's counters are the process's: a run after another in one process
    (train_candidate.py's stages) counts its own graphs and breaks, not the sum."""
    counters = _compiler_counters()
    if counters is not None:
        counters.clear()


def _compilation(run: TrainingRun) -> dict[str, int]:
    """What torch.compile made of the steps: graphs compiled and breaks between them (none
    compiled: it gave up, and the steps ran uncompiled; suppress_errors keeps that quiet)."""
    counters = _compiler_counters()
    if run.step_model is run.model or counters is None:
        return {}
    with suppress(Exception):  # counters of another shape in another torch
        return {"compiled_graphs": int(counters["stats"]["unique_graphs"]),
                "graph_breaks": int(sum(counters["graph_break"].values()))}
    return {}


def _summary(run: TrainingRun, options: LoopOptions, stopped_by: str, steps: int,
             measured: dict[str, float | None], logged: list[dict[str, float]]) -> dict[str, Any]:
    """What the run did, written as JSON beside the state (replacing the previous run's)."""
    summary = {
        "state": str(state_folder(options.checkpoint)),
        "stopped_by": stopped_by,
        "step": run.state.step,
        "steps_this_run": steps,
        "seconds": round(time.monotonic() - run.started, 2),
        **measured,
        "training_hours": round(run.state.seconds / 3600, 4),
        "learning_rate": run.optimizer.param_groups[0]["lr"],
        "first_figures": logged[0] if logged else {},
        "last_figures": logged[-1] if logged else {},
        "device": str(run.device),
        "compiled": run.step_model is not run.model,
        **_compilation(run),
        "channels_last": run.channels_last,
        "bf16": options.bf16,
        "part_bytes": [part.stat().st_size for part in state_parts(options.checkpoint)],
    }
    write_atomic(summary_path(options.checkpoint), (json.dumps(summary, indent=2) + "\n").encode())
    return summary
