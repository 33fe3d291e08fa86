"""Errors a user can cause, and warnings: the CLI prints each as one line (errors exit with status 2)."""

from __future__ import annotations

import contextlib
import os
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


CODED_SIDE = 64  # the base codec codes an image padded to multiples of this (docs/format.md)
SMALL_PADDED_PIXELS = 1 << 22  # a padded size this small (2048 x 2048) is cheap, whatever the limit


def coded_size(width: int, height: int) -> tuple[int, int]:
    """An image's size padded to multiples of CODED_SIDE, as the base codec codes it."""
    return -(-width // CODED_SIDE) * CODED_SIDE, -(-height // CODED_SIDE) * CODED_SIDE


def image_named(label: str) -> str:
    """An image by its label in a message: "image NAME" for a file's name, a phrase that says
    what the image is ("the image saved as x.drc", the Pillow plugin's) as it is."""
    return label if label.startswith("the image ") else f"image {label}"


class LimitExceededError(DiracError):
    @classmethod
    def check(cls, width: int, height: int, max_pixels: int, label: str | None = None) -> None:
        """Refuse an image over the pixel limit, in the one wording every reader uses (its size
        and the limit); or one so thin that its padded planes hold more than twice the limit
        (and more than SMALL_PADDED_PIXELS): the work and memory follow the padded size, and a
        100,000,000 x 1 strip is coded as 100,000,000 x 64 pixels."""
        image = image_named(label) if label else "image"
        limit = counted(max_pixels, "pixel")
        if width * height > max_pixels:
            raise cls(f"{image} of {width}x{height} exceeds the limit of {limit}")
        padded_width, padded_height = coded_size(width, height)
        if padded_width * padded_height > max(2 * max_pixels, SMALL_PADDED_PIXELS):
            raise cls(f"{image} of {width}x{height} is coded as {padded_width}x{padded_height} (each side padded "
                      f"to a multiple of {CODED_SIDE}), over twice the limit of {limit}")


# what torch's RuntimeErrors say when memory runs out: its CPU allocator's (Linux, Windows),
# CUDA's outside the caching allocator, cuBLAS's
OUT_OF_MEMORY_WORDS = ("can't allocate memory", "not enough memory", "CUDA error: out of memory",
                       "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (CUDA's caching allocator) or a
    RuntimeError that says memory ran out: not the input's fault, and never a sign of a
    corrupt file."""
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or (isinstance(error, RuntimeError) and any(words in str(error) for words in OUT_OF_MEMORY_WORDS)))


def out_of_memory_message(error: BaseException) -> str:
    """"out of memory", and the error's first line (CUDA's go on with debugging advice)."""
    lines = str(error).strip().splitlines()
    return f"out of memory ({lines[0]})" if lines else "out of memory"


def file_fault(error: Exception) -> str:
    """Why a file is not of the kind expected, in words: what it lacks is said so (a KeyError
    alone prints its key, as 'step')."""
    if isinstance(error, KeyError) and error.args:
        return f"it has no {error.args[0]!r}"
    return one_line(str(error))


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


class DiracWarning(UserWarning):
    """A warning of diraccodec's: something of the caller's image, file or output left out or
    read in a way the caller may not expect, or work done otherwise than asked (a CUDA graph
    not captured, evaluations pooled across settings).
    `warnings.filterwarnings("ignore", category=DiracWarning)` silences them all, and no other."""


PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))
# Between the caller and the package: Pillow (which calls the plugin), torch (whose modules and
# no_grad wrappers call the networks) and contextlib (a `with` calls a context manager's body)
_CALLING_PACKAGES = ("PIL", "torch")


def warn(message: str, category: type[Warning] = DiracWarning) -> None:
    """`warnings.warn` at the caller's line: the first frame outside this package and what calls
    it (_CALLING_PACKAGES), whatever the depth of the call, so that a warning shows where the
    caller's code asked for the work and filters by module or line apply to it."""
    folders = [PACKAGE_FOLDER]
    for name in _CALLING_PACKAGES:
        if (file := getattr(sys.modules.get(name), "__file__", None)) is not None:
            folders.append(os.path.dirname(os.path.abspath(file)))
    prefixes = tuple(folder + os.sep for folder in folders)
    frame, level = sys._getframe(1), 2  # level 2: this function's caller
    while frame.f_back is not None and (frame.f_code.co_filename == contextlib.__file__ or
                                        frame.f_code.co_filename.startswith(prefixes)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def show_warnings_on_one_line() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if sys.stderr is None:  # closed (2>&-): print would write to standard output, into a file there
            return
        with contextlib.suppress(OSError):  # lost alone, as a report is (console._StandardError)
            print(one_line(f"dirac: warning: {message}"), file=sys.stderr)

    warnings.showwarning = show
