"""What the commands share: the console, one-line errors, common options and value parsers."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import click
from rich.console import Console

from diraccodec.cli.entry import EXIT_INTERRUPTED, INTERRUPTED_LINE
from diraccodec.console import plain_console
from diraccodec.container.drc import DEFAULT_MAX_PIXELS
from diraccodec.errors import (
    MAX_PIXELS_HINT,
    DiracError,
    LimitExceededError,
    OutputWriteError,
    Terminated,
    is_out_of_memory,
    one_line,
    out_of_memory_message,
)
from diraccodec.options import DEFAULT_EFFORT, DEFAULT_PNG_COMPRESSION, DEVICE_CHOICES, EFFORT_PASSES, MAX_STEPS

EXIT_SOME_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_TERMINATED = 128 + signal.SIGTERM


# Set when SIGTERM came during the command: Ray turns the Terminated raised in its wait into a
# plain KeyboardInterrupt
_sigterm_came = threading.Event()


def _raise_terminated(_number: int, _frame: object) -> NoReturn:
    _sigterm_came.set()
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Python's own end on SIGTERM runs no cleanup: a half-made output stays, a batch's
    workers go on alone. While a command runs SIGTERM raises `Terminated` instead, unless the
    caller set its own handler or ignores it; the caller's is back afterwards. Only the main
    thread may set a handler (a CLI run in a thread keeps what it has)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_came.clear()


def say(line: str) -> None:
    """A line on standard error. Where it cannot be written (a full disk, /dev/full, a closed
    pipe) the line is lost and the command goes on: its exit status still says how it ended."""
    with contextlib.suppress(OSError):
        click.echo(line, err=True)


def report_interruption(interruption: BaseException) -> NoReturn:
    """One line, and the status a shell gives a process ended by that signal."""
    terminated = _sigterm_came.is_set() or isinstance(interruption, Terminated) or \
        isinstance(interruption.__cause__, Terminated)
    say("dirac: terminated" if terminated else INTERRUPTED_LINE)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


console = plain_console()


STREAM = "-"  # a SOURCE or OUTPUT of "-" is standard input or output, as in cwebp and djxl
# The one object that stands for it: Path folds "./-", the file named -, to the same value
STANDARD_STREAM = Path(STREAM)


class FileName(click.Path):
    """A file's path. An empty one (a script's unset variable) is refused, where Path would
    take it for the current folder. A name that ends in "/" (or "/.") names a folder: where
    none is there, it is refused (Path drops the ending, so a file of the folder's name would
    be written or read)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("it is empty: name a file", param, ctx)
        if isinstance(value, str) and os.path.basename(value) in ("", ".", "..") and \
                not os.path.isdir(value):
            self.fail(f"{value} names a folder, and there is none: name a file", param, ctx)
        return super().convert(value, param, ctx)


class FolderName(click.Path):
    """A folder's path, or a URI: an empty one (a script's unset variable) is refused, where
    Path would take it for the current folder and read or write the whole tree there."""

    def __init__(self, path_type: type = str) -> None:
        super().__init__(file_okay=False, path_type=path_type)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("it is empty: name a folder (. for the current one)", param, ctx)
        return super().convert(value, param, ctx)


class FileOrStream(FileName):
    """A file, or "-" as typed for standard input or output; "./-" stays the file named -."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return STANDARD_STREAM if value == STREAM else super().convert(value, param, ctx)


def is_stream(path: Path) -> bool:
    """By identity: only FileOrStream's "-" is the stream, not a Path equal to it (./-)."""
    return path is STANDARD_STREAM


def shown_name(path: Path, stream: str) -> str:
    """The path as printed: "standard input" or "standard output" for "-"."""
    return stream if is_stream(path) else str(path)


def read_standard_input_image(max_pixels: int) -> bytes:
    """An image file piped into standard input (refused on a terminal, where it would wait for
    typed bytes), read no further than a file within `max_pixels` can hold: Pillow reads a
    named file itself, from its header on."""
    from diraccodec.image.files import read_image_file

    return read_image_file(_standard_input(), max_pixels, "standard input")


def read_drc_source(path: Path, max_pixels: int) -> bytes:
    """The bytes of a .drc file, or of standard input for "-" (refused on a terminal, where it
    would wait for typed bytes). Its first bytes are checked before the rest is read, so
    that a large file of another kind (a video, /dev/zero) is refused at once, not read whole,
    and no more is read than a file of its header's size can hold (a stream with no end)."""
    from diraccodec.container import drc

    return _read_source(path, functools.partial(drc.check_start, max_pixels=max_pixels), drc.START_BYTES)


def _read_source(path: Path, check_start: Callable[[bytes], int | None] | None, start_bytes: int) -> bytes:
    from diraccodec.image.files import read_bytes, read_checked

    if not is_stream(path):
        return read_bytes(path, check_start, start_bytes)
    return read_checked(_standard_input(), check_start, start_bytes)


def _standard_input() -> BinaryIO:
    if sys.stdin is None:
        raise DiracError("standard input is closed: pipe a file into it, or name the file")
    if sys.stdin.isatty():
        raise DiracError("standard input is a terminal: pipe a file into it, or name the file")
    return sys.stdin.buffer


def check_weights_there(path: Path) -> None:
    """Refuse named weights that are not there even where the work would not read them
    (diffusion weights for a 0-step decode): a mistyped name fails as it does where it is read."""
    try:
        os.stat(path)
    except OSError as error:
        raise DiracError(f"cannot read weights {path.resolve()}: {error.strerror or error}") from None


def check_output(path: Path, source: Path | None = None) -> None:
    """Refuse, before the work rather than after it, "-" on a terminal (where the bytes would
    be garbage), an output that cannot be written where it is (image.files.check_writable),
    and the input itself named as the output (it would be lost)."""
    from diraccodec.image.files import check_writable, names_a_terminal

    if not is_stream(path):
        if source is not None and not is_stream(source):
            check_not_an_input([path], [source])
        if names_a_terminal(path):
            raise DiracError(f"{path} is a terminal: redirect it to a file or a pipe")
        check_writable(path)
    elif sys.stdout is None:
        raise DiracError("standard output is closed: redirect it to a file or a pipe, or name the file with -o")
    elif sys.stdout.isatty():
        raise DiracError("standard output is a terminal: redirect it to a file or a pipe, or name the file with -o")


def check_not_an_input(outputs: Sequence[Path | None], inputs: Sequence[Path]) -> None:
    """Refuse, before the work, an output that names one of the command's inputs: writing it
    would destroy that input."""
    which = "the input" if len(inputs) == 1 else "one of the inputs"
    for output in outputs:
        if output is not None and any(_same_file(source, output) for source in inputs):
            raise DiracError(f"the output {output} is {which}: name another file")


TEXT_OUTPUTS = ("--json", "--markdown")  # the research commands' outputs a terminal may show


def check_outputs(outputs: dict[str, Path | None], inputs: Sequence[Path]) -> None:
    """Refuse, before the work: an output that names an input, two options that name one file
    (the second write would replace the first), an output that cannot be written where it is,
    and a picture named as a terminal (/dev/stdout, not redirected). `outputs` maps each
    option's name to its path, None where it was not given."""
    from diraccodec.image.files import check_writable, descriptor_of, names_a_terminal

    named = {option: Path(path) for option, path in outputs.items() if path is not None}
    check_not_an_input(list(named.values()), inputs)
    seen: dict[str, str] = {}
    for option, path in named.items():
        if option not in TEXT_OUTPUTS and names_a_terminal(path):
            raise DiracError(f"{option} {path} is a terminal: redirect it to a file or a pipe")
        check_writable(path)
        if descriptor_of(path) is not None:  # /dev/stdout twice: written in turn, not in place of each other
            continue
        if (where := os.path.realpath(path)) in seen:
            raise DiracError(f"{seen[where]} and {option} name the same file {path}: name two files")
        seen[where] = option


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def write_output(path: Path, data: bytes) -> None:
    """Write a file atomically, or to standard output for "-" (check_output has vetted both
    before the work; a write that fails all the same is an OutputWriteError)."""
    from diraccodec.image.files import write_atomic

    if not is_stream(path):
        write_atomic(path, data)
        return
    unwritten = memoryview(data)
    try:
        while unwritten:  # unbuffered (python -u), a write may take part of the bytes, as when the reader leaves
            written = sys.stdout.buffer.write(unwritten)
            if written is None:  # a non-blocking pipe that is full
                raise OutputWriteError("cannot write standard output: it is a full non-blocking pipe")
            unwritten = unwritten[written:]
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the reader left (`| head -c`): the bytes it took are not the whole file
        _quiet_stdout_at_exit()
        raise OutputWriteError("cannot write standard output: its reader closed it before the end") from None
    except OSError as error:  # a full disk behind the redirection, say
        raise OutputWriteError(f"cannot write standard output: {error.strerror or error}") from None


def _quiet_stdout_at_exit() -> None:
    """After a broken pipe, the flush at exit of what is still buffered would fail again (a
    second message): the process's own standard output goes to /dev/null, as Python's docs
    advise. A program running the CLI in-process with other streams keeps them."""
    if sys.stdout is not sys.__stdout__:
        return
    with contextlib.suppress(OSError, ValueError):  # no file descriptor, or already closed
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def standard_output_failure(raised: OSError | None = None) -> OSError | None:
    """Where writing the command's text to standard output failed (a full disk behind `> file`,
    /dev/full): `raised` where that write raised it (None where another write did); with no
    error raised, the one that flushing what is left gives; None where all went out. A reader
    that left (EPIPE) is click's to handle: a quiet status 1, as `| head` expects."""
    if sys.stdout is None or isinstance(raised, BrokenPipeError):
        return None
    if raised is not None:  # another fault's is its own, shown whole
        return raised if _raised_writing_standard_output(raised) else None
    try:
        sys.stdout.flush()  # buffered text still unwritten fails again (unbuffered, it is gone)
    except BrokenPipeError:
        return None
    except OSError as error:
        return error
    return None


def _raised_writing_standard_output(error: OSError) -> bool:
    """Whether `error` was raised where standard output was written: the innermost frame of
    its traceback holds a stream on its descriptor (click.echo's `file`), or a console that
    writes to one (rich's Console, whose `file` it is)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a test runner's stream, with no descriptor
        return False
    for value in frame.tb_frame.f_locals.values() if frame is not None else ():
        for stream in (value, getattr(value, "file", None)):
            with contextlib.suppress(Exception):
                if callable(getattr(stream, "write", None)) and stream.fileno() == descriptor:
                    return True
    return False


def report_unwritten_standard_output(failure: OSError, keep_status: bool = False) -> None:
    """One line and status 2 for text that could not be written, rather than a traceback, or
    Python's complaint at exit that it could not flush; with `keep_status` (the command ended
    with a failure status of its own) the line alone, and the caller's status stands."""
    _quiet_stdout_at_exit()  # the text still buffered would fail again at exit
    say(f"dirac: error: cannot write standard output: {failure.strerror or failure}")
    if not keep_status:
        sys.exit(EXIT_USER_ERROR)


def check_text_output() -> None:
    """Refuse, before the work, a closed standard output where text is the command's result
    (`dirac info >&-`, a report's tables): it would vanish, with status 0."""
    if sys.stdout is None:
        raise DiracError("standard output is closed: redirect it to a file or a pipe")


def stdout_console() -> Console:
    """Where tables go (stdout, at its width; in a file or a pipe wide enough not to fold a
    row), with file names printed as they are. The command has called check_text_output."""
    terminal = Console(highlight=False, markup=False)
    return terminal if terminal.is_terminal else Console(highlight=False, markup=False, width=200)


def report_error(error: DiracError, with_max_pixels: bool, about: str = "") -> None:
    """The error's one line on stderr (after `about`, such as a file's name), with the hint
    to raise the limit where the command has --max-pixels."""
    hint = f" {MAX_PIXELS_HINT}" if isinstance(error, LimitExceededError) and with_max_pixels else ""
    say(one_line(f"dirac: error: {about}{error}{hint}"))


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DiracError into one line on stderr and exit status 2, and running out of memory
    into one line and status 1 (not the input's fault: a smaller image, or fewer workers)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DiracError as error:
            report_error(error, with_max_pixels="max_pixels" in kwargs)
            sys.exit(EXIT_USER_ERROR)
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise  # a fault, shown whole
            say(one_line(f"dirac: error: {out_of_memory_message(error)}"))
            sys.exit(EXIT_SOME_FAILED)
        except KeyboardInterrupt as interruption:
            report_interruption(interruption)

    return wrapper


weights_option = click.option(
    "--weights", type=FileName(dir_okay=False, path_type=Path), default=None,
    help="Base weights file (default: $DIRAC_WEIGHTS if set, else the shipped weights).",
)
diffusion_weights_option = click.option(
    "--diffusion-weights", type=FileName(dir_okay=False, path_type=Path), default=None,
    help="Diffusion weights for steps above 0 (default: $DIRAC_DIFFUSION_WEIGHTS if set, else the shipped weights).",
)
no_restore_option = click.option(
    "--no-restore", is_flag=True,
    help="At 0 steps, skip the restoration filter: the base synthesis alone (faster, less faithful).",
)
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
    help="Refuse images (or files claiming images) larger than this, before allocating anything.",
)
device_option = click.option(
    "--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
    help="Where the networks run: auto takes CUDA where present, else the CPU.",
)
exact_option = click.option(
    "--exact", is_flag=True,
    help="Pixels independent of the thread count (float32 kernels without oneDNN): 3-8x slower on a CPU.",
)
steps_option = click.option(
    "--steps", type=click.IntRange(0, MAX_STEPS), default=None,
    help=f"Diffusion steps at decode, 0-{MAX_STEPS} (default: the file's recommendation, else 0). 0 gives the base "
         "reconstruction (highest fidelity); more add realistic detail, in full from 20.",
)
png_compress_option = click.option(
    "--png-compress", "png_compression", type=click.IntRange(0, 9), default=DEFAULT_PNG_COMPRESSION, show_default=True,
    help="zlib level of PNG outputs, 0 (none) to 9 (smallest): 1 writes several times faster than the default "
         "for a few percent more bytes.")
seed_option = click.option("--seed", type=int, default=None, help="Sampling seed (default 0; same seed, same pixels).")


def threads_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--threads N`: the CPU threads the command's networks use, restored when it ends (so an
    in-process call leaves no change behind); the command itself never sees the option."""

    @functools.wraps(command)
    def wrapper(*args: Any, threads: int | None, **kwargs: Any) -> Any:
        if threads is None:
            return command(*args, **kwargs)
        import torch

        from diraccodec.compute import thread_count_restored

        with thread_count_restored():
            torch.set_num_threads(threads)
            return command(*args, **kwargs)

    return click.option(
        "--threads", type=click.IntRange(1, 1024), default=None, metavar="N",
        help="CPU threads for the networks (default: one per core). Fewer leave cores to other work. Decoded "
             "pixels may differ with the number, except with --exact; so may encoded bytes at efforts 2-5.",
    )(wrapper)


def effort_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-e", "--effort", type=click.IntRange(min(EFFORT_PASSES), max(EFFORT_PASSES)), default=DEFAULT_EFFORT,
        show_default=True,
        help="Encoder effort, 1 (plain rounding, fastest) to 5. Efforts 2-5 search the latents (1, 2, 4, 8 passes); "
             "2 gives 3-4% fewer bits than 1 at the same PSNR for 4-8x its encode time (docs/user-guide.md).",
    )(function)


size_option = click.option(
    "--size", "size_text", default=None, metavar="SIZE",
    help="Target file size instead of -q, e.g. 30KB: the file is at or under it. B, KB (1,000 bytes), MB, GB, "
         "KiB (1,024), MiB, GiB; a bare number is bytes.",
)


class PositiveFinite(click.FloatRange):
    """A number above 0, refused by name where it is not finite (nan and inf pass a range): a
    batch checks its options before the files, so each file would fail alike."""

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


bpp_option = click.option("--bpp", type=PositiveFinite(), default=None,
                          help="Target bits per pixel instead of -q (at or under it).")
detail_map_option = click.option(
    "--detail-map/--no-detail-map", default=None,
    help="Send the map of where the image has fine detail, which steers the diffusion decoder (about 0.0025 bpp; "
         "default: at levels below 3, where the shipped decoder uses it).",
)

strip_option = click.option(
    "--strip", is_flag=True,
    help="Leave out the image's EXIF and XMP metadata (camera, date, place, rights). The ICC profile is always kept: "
         "it sets the colours.",
)

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int:
    """'30KB' -> 30000 bytes (KB is 1,000 bytes, KiB 1,024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise DiracError(f"--size takes a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB), got {text!r}")
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value):
        raise DiracError(f"--size is too large, got {text!r}")
    size = int(value)
    if size <= 0:
        raise DiracError(f"--size must be at least 1 byte, got {text!r}" + (" (whole bytes)" if value > 0 else ""))
    return size


def parse_list(text: str, kind: type, option: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        kind_name = "whole numbers" if kind is int else "numbers"
        raise DiracError(f"{option} must be {kind_name} separated by commas, got {text!r}") from None


def parse_references(text: str, known: Sequence[str]) -> list[str]:
    """--references: reference codec keys separated by commas, in any case, or "none"."""
    keys = [] if text.strip().lower() == "none" else [key.strip().lower() for key in text.split(",") if key.strip()]
    if unknown := [key for key in keys if key not in known]:
        raise DiracError(f"unknown reference codec {unknown[0]!r}; choose from {', '.join(known)}")
    return keys


def rate_target(quality: float | None, size_text: str | None, bpp: float | None) -> dict[str, Any]:
    """The API's rate arguments from -q, --size and --bpp: exactly one of them."""
    given = [name for name, value in (("-q", quality), ("--size", size_text), ("--bpp", bpp)) if value is not None]
    if len(given) != 1:
        raise DiracError("give exactly one of -q, --size or --bpp" if given else "give -q LEVEL, --size or --bpp")
    if size_text is not None:
        return {"size": parse_size(size_text)}
    return {"quality": quality} if quality is not None else {"bpp": bpp}


markdown_option = click.option("--markdown", type=FileName(dir_okay=False, path_type=Path), default=None,
                               help="Also write the table as Markdown here.")


def _png_file(_ctx: click.Context, parameter: click.Parameter, path: Path | None) -> Path | None:
    """Plots are PNG: another suffix would name PNG bytes wrongly."""
    if path is not None and path.suffix.lower() != ".png":
        raise click.BadParameter(f"{path}: plots are written as PNG; name a .png file", param=parameter)
    return path


plot_option = click.option("--plot", "plot_path", type=FileName(dir_okay=False, path_type=Path), default=None,
                           callback=_png_file, help="Also draw the rate-distortion curves (PNG) here.")
perception_plot_option = click.option(
    "--perception-plot", type=FileName(dir_okay=False, path_type=Path), default=None, callback=_png_file,
    help="Also draw the distortion-perception curves per level (PNG) here.")
