"""Errors a user can cause, and warnings: the CLI prints each as one line (errors exit with status 2)."""

from __future__ import annotations

import sys
import warnings


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a service stopping) raised in the program, so that it ends as on Ctrl-C
    (the file being written is removed, a batch's workers stop, training saves) and the CLI can
    tell the two apart: status 143, not 130."""


class DiracError(Exception):
    """Base of every error caused by input, files or options rather than by a bug."""


class NotADrcFileError(DiracError, OSError):
    """Also an OSError, as Pillow's readers raise for data they cannot parse."""


class CorruptFileError(DiracError, OSError):
    """Also an OSError, as Pillow's readers raise for data they cannot parse."""


class TruncatedFileError(CorruptFileError):
    pass


class UnsupportedVersionError(DiracError, OSError):
    """Also an OSError, as Pillow's readers raise for data they cannot read."""


class WrongWeightsError(DiracError, OSError):
    """Also an OSError: to a Pillow user, a file these weights cannot read."""


class ImageReadError(DiracError):
    pass


class OutputWriteError(DiracError):
    pass


class LimitExceededError(DiracError):
    pass


def counted(number: int, noun: str) -> str:
    """"1 byte", "2 bytes": a count and its noun, as a message says them."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


MAX_PIXELS_HINT = "(raise it with --max-pixels)"  # after a LimitExceededError, where the command has the option


class InvalidOptionError(DiracError):
    pass


def show_warnings_on_one_line() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"dirac: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
