"""How user-facing warnings look: one line on stderr, like the errors."""

from __future__ import annotations

import sys
import warnings


def show_warnings_on_one_line() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"dirac: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
