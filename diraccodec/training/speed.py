"""How fast a training run goes: its throughput in training pixels per second, and profiles of
a few of its steps that say where the time goes (the device's busy share, kernel launches, the
costliest operators). The loop (`training.loop`) reports both in its log and summary."""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from diraccodec.compute import profile_totals


class Throughput:
    """Training pixels per second, timed from the end of a run's first steps (which carry
    compilation and warm-up) to its last; CUDA is synchronised at each mark."""

    SKIPPED_STEPS = 2

    def __init__(self, device: torch.device, started: float, pixels_per_step: int | None) -> None:
        self.device, self.pixels_per_step = device, pixels_per_step
        self.started = started  # the run's start (time.monotonic()), which the first mark counts from
        self.marks: list[tuple[int, float]] = []  # (steps of this run, time) after each skipped step
        self.window = (0, time.monotonic())
        self.left_out = (0, 0.0)  # profiled steps and their seconds, which the summary's figure leaves out

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.monotonic()

    def stepped(self, steps: int) -> None:
        if steps <= self.SKIPPED_STEPS:
            self.marks.append((steps, self._now()))

    def _rate(self, steps: int, since: tuple[int, float], now: float) -> float | None:
        if self.pixels_per_step is None or steps <= since[0]:
            return None
        return self.pixels_per_step * (steps - since[0]) / max(now - since[1], 1e-9) / 1e6

    def window_rate(self, steps: int) -> float | None:
        """Mpx/s since the previous call (the first window includes the start-up)."""
        now = self._now()
        rate, self.window = self._rate(steps, self.window, now), (steps, now)
        return rate

    def leave_out(self, steps: int, seconds: float) -> None:
        self.left_out = (self.left_out[0] + steps, self.left_out[1] + seconds)

    def summary(self, steps: int) -> dict[str, float | None]:
        """Mpx/s over the run (profiled steps left out), the seconds its first step ended at, and
        the pixels per step."""
        now = self._now()
        counted = [mark for mark in self.marks if mark[0] < steps]
        since = counted[-1] if counted else (0, self.started)  # one step alone: start-up included
        profiled_steps, profiled_seconds = self.left_out
        rate = self._rate(steps - profiled_steps, since, now - profiled_seconds)
        return {"mpx_per_second": round(rate, 3) if rate is not None else None,
                "startup_seconds": round(self.marks[0][1] - self.started, 2) if self.marks else None,
                "pixels_per_step": self.pixels_per_step}


class StepProfile:
    """A few training steps under torch's profiler, so that a run's log says where the time of a
    step goes: the seconds a step, how much of it kept the device busy, the kernel launches a
    step (what launch-bound small models pay for), and the operators that took the most. A
    profiler that fails costs a log line, never the run."""

    def __init__(self, steps: int, after: int, device: torch.device) -> None:
        self.steps, self.after, self.device = steps, after, device
        self.profiler: profile | None = None
        self.started = 0.0
        self.seconds = 0.0  # what the profiled steps took, with the profiler's work (0: no profile)
        self.failure = ""

    def before_step(self, done: int) -> None:
        """Begins profiling before the step that follows `done` steps of this run, where due."""
        if self.steps <= 0 or done != self.after:
            return
        cuda = self.device.type == "cuda"
        try:
            self.profiler = profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])])
            self.profiler.start()
        except Exception as error:  # any profiler fault: the training goes on
            self.profiler, self.failure = None, f"no profile: {error}"
        self.started = time.monotonic()

    def after_step(self, done: int) -> list[str]:
        """The log's lines once the profiled steps are done (`done` counts this run's steps)."""
        if done != self.after + self.steps or not (self.profiler or self.failure):
            return []
        if self.failure:
            return [self.failure]
        try:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = (time.monotonic() - self.started) / self.steps
            events = self.stop()
            totals = {name: value / self.steps for name, value in profile_totals(events).items()}
            order = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            table = events.table(sort_by=order, row_limit=15)
        except Exception as error:  # any profiler fault: the training goes on
            self.profiler = None
            return [f"no profile: {error}"]
        self.seconds = time.monotonic() - self.started  # the profiler's own work included
        return [f"profile of steps {self.after + 1}-{self.after + self.steps} of this run: {seconds:.4f} s a step, "
                f"the device busy {totals['device seconds']:.4f} s of it ({totals['device seconds'] / seconds:.0%}), "
                f"{totals['kernel launches']:.0f} kernel launches and {totals['CPU seconds']:.4f} CPU seconds a step "
                "(the profiler slows the steps)", table]

    def stop(self) -> list:
        """Stops profiling (also for a run that ends first) and returns what it saw."""
        profiler, self.profiler = self.profiler, None
        if profiler is None:
            return []
        profiler.stop()
        return profiler.key_averages()
