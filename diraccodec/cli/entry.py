"""The `dirac` process: what runs before and after the commands.

The console script imports this module, which imports nothing heavy, and `run` then loads the
commands (click, rich and the package's modules): Ctrl-C while they load is one line and
status 130, as it is during a command. Only the interpreter's start and `import diraccodec`
(about 50 ms, no NumPy) come before.
"""

from __future__ import annotations

import codecs
import io
import signal
import sys
from typing import Any

SHOWN_AS_BYTES_OR_ESCAPED = "diraccodec.shown"
# What Ctrl-C before any command runs gives: the line and status of one during a command (cli.common)
INTERRUPTED_LINE = "dirac: interrupted"
EXIT_INTERRUPTED = 128 + signal.SIGINT


def _shown(error: UnicodeError) -> tuple[bytes, int]:
    """What standard output prints of what its encoding cannot: a file name's undecodable bytes
    (lone surrogates, as os.fsdecode gives them) as those bytes, so that the name names the
    file; any other character escaped (\\u9e1a on a cp1252 console), never a traceback."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    shown = [bytes([ord(character) - 0xDC00]) if 0xDC80 <= ord(character) <= 0xDCFF
             else character.encode("ascii", "backslashreplace")
             for character in error.object[error.start:error.end]]
    return b"".join(shown), error.end


codecs.register_error(SHOWN_AS_BYTES_OR_ESCAPED, _shown)


def interruption_in(error: BaseException) -> BaseException | None:
    """The Ctrl-C behind `error`: itself, or the one Python 3.11 wraps in a RuntimeError where it
    lands in a class's `__set_name__` (a dataclass being made as a module loads); None otherwise."""
    if isinstance(error, KeyboardInterrupt):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__cause__, KeyboardInterrupt):
        return error.__cause__
    return None


def run() -> Any:
    """The `dirac` command's entry point (and `python -m diraccodec`'s), for a process that
    ends with it: the group, then Ctrl-C ignored while the process ends (in-process callers
    use `diraccodec.cli.main`). The work is done and reported by then: an interruption in the
    interpreter's teardown (torch's exit handlers, a pool's workers) would only print a
    traceback, or give a finished batch the status of an interrupted one."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors=SHOWN_AS_BYTES_OR_ESCAPED)
    try:
        from diraccodec.cli.group import main

        return main(prog_name="dirac")
    except (KeyboardInterrupt, RuntimeError) as error:  # while the commands load (the group reports a command's)
        if interruption_in(error) is None:
            raise
        from diraccodec.console import plain_console

        plain_console().print(INTERRUPTED_LINE)  # lost alone where standard error is full or closed
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
