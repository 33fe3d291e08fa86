"""What the commands and the long-running functions print through: file names as they are, and
progress bars of one look."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn, track

Item = TypeVar("Item")


class _StandardError:
    """Standard error as it is at each write (a caller may replace sys.stderr), where a write
    that fails (a full disk, /dev/full, a closed pipe) loses that message alone: progress and
    reports must not stop the work they describe, whose result the exit status still gives.
    Closed when the program started (`2>&-`, where Python's sys.stderr is None), it takes
    every message and keeps none."""

    def write(self, text: str) -> int:
        try:
            return standard_error().write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            standard_error().flush()

    def __getattr__(self, name: str) -> object:
        return getattr(standard_error(), name)


def standard_error() -> TextIO:
    """sys.stderr, or where it is closed (None) a stream that keeps nothing."""
    return sys.stderr if sys.stderr is not None else _discarded()


@functools.cache
def _discarded() -> TextIO:
    return open(os.devnull, "w", encoding="utf-8")  # open for the process's life


def plain_console(console: Console | None = None) -> Console:
    """The console given, or one on stderr that prints file names as they are: no rich markup
    read into a name that holds "[/x]", and no line broken inside a name, so that a log keeps
    each path whole for grep. A message that cannot be written is lost, not an error."""
    return console or Console(file=_StandardError(), highlight=False, markup=False, soft_wrap=True)


def draws_live_bars(console: Console) -> bool:
    """Whether rich draws a live progress bar on `console`: not in a log, a pipe or a dumb
    terminal, where long work prints a line per part done instead."""
    return console.is_terminal and not console.is_dumb_terminal


def bar_columns(description: str = "{task.description}") -> tuple[ProgressColumn, ...]:
    """A progress bar's columns: what it is, the bar, parts done of all, the time left."""
    return TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()


def tracked(items: Sequence[Item], description: str, console: Console, lines: int = 10) -> Iterator[Item]:
    """`items` one by one, with progress: a live bar on a terminal; elsewhere (a log, a pipe) a
    line at each tenth done, so that minutes of work do not look like a hung command."""
    if draws_live_bars(console):
        yield from track(items, description=description, console=console)
        return
    total, started = len(items), time.monotonic()
    shown = {math.ceil(total * part / lines) for part in range(1, lines + 1)}
    for done, item in enumerate(items, 1):
        yield item
        if done in shown:
            console.print(f"{description}: {done}/{total} ({time.monotonic() - started:.0f} s)")
