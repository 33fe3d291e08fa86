"""diraccodec: a learned image codec whose decoder ends in a diffusion model."""

from diraccodec.compute import request_strict_mkl

request_strict_mkl()  # before torch first calls MKL: decoded pixels then do not depend on the thread count

from diraccodec import plugin  # noqa: E402 (after the request)
from diraccodec.api import decode, encode, inspect  # noqa: E402
from diraccodec.errors import DiracError  # noqa: E402

plugin.register()  # Image.open and Image.save then know .drc files

__all__ = ["DiracError", "decode", "encode", "inspect"]
__version__ = "0.2.0"
