"""The training loop every model shares: learning-rate schedule, logging, checkpoints, resume.

A model's training supplies one function that draws a batch and returns its loss (and any
figures worth logging); this loop does the rest identically on the CPU and on CUDA.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diraccodec.training.averaging import WeightAverage
from diraccodec.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint


@dataclass
class LoopOptions:
    checkpoint: Path
    steps: int
    learning_rate: float = 2e-4
    decay_from: float = 0.8  # fraction of `steps` after which the rate decays to 1/10
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    clip_norm: float = 1.0
    # A wall-clock budget for this run: after `calibration_steps` the step count is set from
    # the measured speed, so that the learning-rate decay ends when the time does.
    minutes: float | None = None
    calibration_steps: int = 100
    # The step that `decay_from` counts from: 0 for a run to a total step count; the run's
    # first step under `minutes`, so a resumed run decays over the end of its own budget.
    schedule_start: int = 0
    # A run that resumes without Adam moments (weights brought from elsewhere) ramps its
    # learning rate up over this many steps instead of taking full-size steps blind.
    warmup_steps: int = 200
    # Decay of the moving average of the weights that export ships (0: none, the last step's
    # weights are shipped). 0.999 averages over about the last thousand steps.
    average_decay: float = 0.0


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
class Session:
    """What a training run holds: the model, its optimiser, the data RNG and the progress."""

    model: torch.nn.Module
    optimizer: torch.optim.Adam
    generator: torch.Generator
    state: TrainingState
    device: torch.device
    warmup_from: int | None = None  # the step a run without Adam moments started at
    average: WeightAverage | None = None

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.model, self.optimizer, self.generator, self.state, self.average)


def start_session(model: torch.nn.Module, options: LoopOptions, console: Console) -> Session:
    """Seed everything, then resume from the checkpoint when there is one."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    if device.type == "cuda":  # TF32 convolutions: several times faster, ample for training
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    state = TrainingState(step=0, seconds=0.0, metadata={})
    warmup_from = None
    average = WeightAverage(model, options.average_decay) if options.average_decay > 0 else None
    if options.checkpoint.exists():
        state = load_checkpoint(options.checkpoint, model, optimizer, generator, average)
        console.print(f"resumed from {options.checkpoint} at step {state.step}")
        if state.step > 0 and not optimizer.state:
            warmup_from = state.step
            console.print(f"no Adam moments saved: the learning rate ramps up over {options.warmup_steps} steps")
    state.metadata.pop("average_decay", None)  # an earlier run's setting says nothing of this one's
    if average is not None:
        state.metadata["average_decay"] = options.average_decay
    return Session(model, optimizer, generator, state, device, warmup_from, average)


def _stop_on_sigterm() -> Callable[..., object] | int | None:
    """Make `kill` (SIGTERM) stop training like Ctrl-C, so the checkpoint is saved first."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def run_loop(
    session: Session,
    options: LoopOptions,
    next_loss: Callable[[], dict[str, torch.Tensor]],
    console: Console,
) -> TrainingState:
    """Train until options.steps; next_loss returns {"loss": ..., other figures to log}.

    On a terminal a progress bar shows the running figures; otherwise (a log file) a line
    is printed every `log_every` steps.
    """
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[figures]}"), console=console, disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("training", total=options.steps, completed=session.state.step, figures="")
        return _steps(session, options, next_loss, console, lambda shown: progress.update(
            task, completed=session.state.step, total=options.steps, figures=shown))


def _steps(
    session: Session,
    options: LoopOptions,
    next_loss: Callable[[], dict[str, torch.Tensor]],
    console: Console,
    show: Callable[[str], None],
) -> TrainingState:
    state, optimizer = session.state, session.optimizer
    last_save, saved_step = time.monotonic(), state.step
    window: dict[str, list[torch.Tensor]] = {}
    step_started = time.monotonic()
    run_started, calibration = step_started, (state.step, step_started)
    if options.minutes is not None:  # until the speed is known, no end and no decay
        options.steps, options.schedule_start = state.step + 10**9, state.step
    previous_handler = _stop_on_sigterm()
    try:
        while state.step < options.steps:
            if options.minutes is not None:
                calibration = _fit_steps_to_time(options, state.step, run_started, calibration, console)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(state.step, options, session.warmup_from)
            figures = next_loss()
            optimizer.zero_grad(set_to_none=True)
            figures["loss"].backward()
            torch.nn.utils.clip_grad_norm_(session.model.parameters(), options.clip_norm)
            optimizer.step()
            if session.average is not None:
                session.average.update(session.model)
            state.step += 1
            now = time.monotonic()
            state.seconds += now - step_started
            step_started = now
            for name, value in figures.items():  # kept on the device: no GPU sync per step
                window.setdefault(name, []).append(value.detach())
            if state.step % options.log_every == 0 or state.step == options.steps:
                shown = "  ".join(f"{name} {float(torch.stack(v).mean()):.4f}" for name, v in window.items())
                show(shown)
                if not console.is_terminal:
                    uncalibrated = options.minutes is not None and calibration[1] == run_started
                    total = "?" if uncalibrated else options.steps
                    console.print(
                        f"step {state.step}/{total}  {shown}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                        f"{state.seconds / 3600:.2f} h",
                        soft_wrap=True,  # one line per log entry, however narrow the console
                    )
                    sys.stderr.flush()
                window.clear()
            if now - last_save > options.checkpoint_minutes * 60:
                session.save(options.checkpoint)
                last_save, saved_step = time.monotonic(), state.step
        if state.step != saved_step:  # the end, also where a time budget ran out at a calibration
            session.save(options.checkpoint)
    except KeyboardInterrupt:  # stopping by hand loses no steps: the next run resumes here
        session.save(options.checkpoint)
        console.print(f"interrupted: checkpoint saved at step {state.step}")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return state


def _fit_steps_to_time(
    options: LoopOptions, step: int, run_started: float, calibration: tuple[int, float], console: Console
) -> tuple[int, float]:
    """Set options.steps so that the run ends on its time budget, at the speed measured so far.

    The speed is measured from `calibration_steps` into the run (the first steps carry
    start-up costs) and refreshed until the decay begins; the returned mark is that start.
    """
    assert options.minutes is not None
    first_step, since = calibration
    done = step - first_step
    if done == 0 or done % options.calibration_steps or step >= decay_start(options):
        return calibration
    now = time.monotonic()
    rate = done / max(now - since, 1e-9)
    options.steps = step + int(rate * max(0.0, run_started + options.minutes * 60 - now))
    if since == run_started:  # the first estimate, with start-up costs: measure afresh from here
        console.print(f"about {rate:.2f} steps/s: this run ends near step {options.steps}")
        return step, now
    return calibration
