"""What a caller chooses (device, encoder effort, diffusion steps, context model, a progress
callback), with its range and default, and the MKL mode requested for the process.

This module imports nothing heavy, so the command line builds its options from it and
`import diraccodec` stays quick: torch loads with the first encode or decode, not before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

AUTO = "auto"  # the device: CUDA where present, else the CPU
DEVICE_CHOICES = (AUTO, "cpu", "cuda")

# Encoder effort -> passes of the search for cheaper latent symbols (0: plain rounding).
EFFORT_PASSES = {1: 0, 2: 1, 3: 2, 4: 4, 5: 8}
DEFAULT_EFFORT = 2  # one search pass: 3-4% fewer bits than plain rounding at the same PSNR (docs/user-guide.md)

# The project's training photos, beside a checkout (the training commands' default --data)
TRAINING_PHOTOS = Path("../shared/data/train")

# The rate level where none is given (batch and the Pillow plugin; `dirac encode` asks for one).
DEFAULT_QUALITY = 3.0

# zlib's level for PNG outputs, libpng's and Pillow's default; lower levels write faster for
# more bytes (docs/user-guide.md)
DEFAULT_PNG_COMPRESSION = 6
MAX_STEPS = 100  # diffusion steps at decode; 20 give the full detail

# Told of long work as it goes: (parts done, parts in all), the search's tiles or the decoder's steps.
Progress = Callable[[int, int], None]

CONTEXTS = ("none", "checkerboard")  # how a base codec predicts its latents' mean and scale

STRICT_MKL = "AUTO,STRICT"  # the fastest code branch for this CPU, summed alike on any thread count


def request_strict_mkl() -> None:
    """Ask for MKL's strict reproducible mode before MKL's first call (see diraccodec.compute);
    a value the user set in MKL_CBWR is kept."""
    os.environ.setdefault("MKL_CBWR", STRICT_MKL)
