"""diraccodec: a learned image codec whose decoder ends in a diffusion model."""

from diraccodec.api import decode, encode, inspect
from diraccodec.errors import DiracError

__all__ = ["DiracError", "decode", "encode", "inspect"]
__version__ = "0.1.0"
