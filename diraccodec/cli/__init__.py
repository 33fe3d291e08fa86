"""The `dirac` command line, thin over the API: user commands first, research and training after.

Every command reports a user's mistake (bad file, bad option, unwritable output) as one
line on stderr with exit status 2, never a traceback. The group `main` loads on first use
(PEP 562), so that the process's entry (cli.entry) imports nothing heavy before it guards Ctrl-C.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diraccodec.cli.group import main

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from diraccodec.cli.group import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
