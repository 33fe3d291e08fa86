"""What the commands and the long-running functions print through: file names as they are, and
progress bars of one look."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn


def plain_console(console: Console | None = None) -> Console:
    """The console given, or one on stderr that prints file names as they are: no rich markup
    read into a name that holds "[/x]", and no line broken inside a name, so that a log keeps
    each path whole for grep."""
    return console or Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def draws_live_bars(console: Console) -> bool:
    """Whether rich draws a live progress bar on `console`: not in a log, a pipe or a dumb
    terminal, where long work prints a line per part done instead."""
    return console.is_terminal and not console.is_dumb_terminal


def bar_columns(description: str = "{task.description}") -> tuple[ProgressColumn, ...]:
    """A progress bar's columns: what it is, the bar, parts done of all, the time left."""
    return TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
