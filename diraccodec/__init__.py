"""diraccodec: a learned image codec whose decoder ends in a diffusion model.

Importing the package is quick: it registers the Pillow plugin and asks for MKL's reproducible
mode, and torch loads with the first call of encode, decode or inspect (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diraccodec.options import request_strict_mkl

request_strict_mkl()  # before torch first calls MKL: decoded pixels then do not depend on the thread count

from diraccodec import plugin  # noqa: E402 (after the request)
from diraccodec.errors import DiracError, DiracWarning  # noqa: E402

if TYPE_CHECKING:
    from diraccodec.api import decode, encode, inspect

plugin.register()  # Image.open and Image.save then know .drc files

__all__ = ["DiracError", "DiracWarning", "decode", "encode", "inspect"]
__version__ = "0.3.0.dev0"

_API_FUNCTIONS = frozenset({"decode", "encode", "inspect"})


def __getattr__(name: str) -> Any:
    """The API's functions and the package's modules (`diraccodec.api.stream_bytes`), imported
    with torch on first use."""
    if name in _API_FUNCTIONS:
        from diraccodec import api

        return getattr(api, name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":  # the module exists, but something it imports does not
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API_FUNCTIONS})
