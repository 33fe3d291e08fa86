"""Errors a user can cause, and warnings: the CLI prints each as one line (errors exit with status 2)."""

from __future__ import annotations

import sys
import unicodedata
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
    @classmethod
    def of_pixels(cls, width: int, height: int, max_pixels: int, label: str | None = None) -> LimitExceededError:
        """An image over the pixel limit, in the one wording every reader uses: its size and the limit."""
        image = f"image {label}" if label else "image"
        return cls(f"{image} of {width}x{height} exceeds the limit of {counted(max_pixels, 'pixel')}")


def counted(number: int, noun: str) -> str:
    """"1 byte", "2 bytes": a count and its noun, as a message says them."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


MAX_PIXELS_HINT = "(raise it with --max-pixels)"  # after a LimitExceededError, where the command has the option


class InvalidOptionError(DiracError):
    pass


# Characters a message shows as escapes: control characters, the line and paragraph
# separators (str.splitlines breaks at them) and the bidirectional controls, which can make
# a line read otherwise than it is
_ESCAPED_CATEGORIES = {"Cc", "Zl", "Zp"}
_BIDIRECTIONAL_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def one_line(text: str) -> str:
    """`text` with its control characters written as escapes (\\n, \\x1b, \\u202e): a file
    name that holds a line break keeps its message on one line, and one that holds a
    terminal's escape sequence shows it rather than act on it."""
    return "".join(char.encode("unicode_escape").decode("ascii")
                   if char in _BIDIRECTIONAL_CONTROLS or unicodedata.category(char) in _ESCAPED_CATEGORIES else char
                   for char in text)


def show_warnings_on_one_line() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(one_line(f"dirac: warning: {message}"), file=sys.stderr)

    warnings.showwarning = show
