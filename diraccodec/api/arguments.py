"""The checks of the API's arguments, made before any work: a bad one is an InvalidOptionError
that names it and says what is wanted, so that a caller's mistake costs no analysis transform
and reads as one line on the command line."""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from diraccodec.codec.base_codec import LOWEST_LEVEL
from diraccodec.compute import Compute
from diraccodec.container import drc
from diraccodec.errors import (
    InvalidOptionError,
    counted,
)
from diraccodec.options import AUTO, EFFORT_PASSES, MAX_STEPS, Progress

MAX_PATH_LENGTH = 4096  # Linux's PATH_MAX: a longer string is no file's name


def compute_for(device: str | torch.device | None = AUTO, exact: bool = False) -> Compute:
    """Where and how the networks run, from the user's `device` ("auto", "cpu", "cuda") and
    exact mode; a device name torch does not know, or CUDA where there is none, is an
    InvalidOptionError."""
    try:
        return Compute.of(device, exact)
    except ValueError as error:
        raise InvalidOptionError(str(error)) from None


def _shown(value: object) -> str:
    """A value as an error names it: its repr, cut short (an integer of thousands of digits has
    none: Python refuses to print it)."""
    try:
        text = str(value) if isinstance(value, numbers.Real) else repr(value)  # Decimal('2.5'), not 2.5
    except ValueError:
        return "a number too long to print"
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: object) -> bool:
    """An integer of any kind (a numpy one too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: object) -> bool:
    """A real number of any kind (a numpy one too), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: float) -> float:
    """A real number as a float; an integer too large for one is infinite (out of every range)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_quality(quality: float, num_levels: int) -> float:
    """The level a file at `quality` carries: checked, then rounded to the format's 1/256 steps."""
    if not _real(quality):
        raise InvalidOptionError(f"quality must be a number, got {_shown(quality)}")
    if math.isnan(_as_float(quality)) or not LOWEST_LEVEL <= quality <= num_levels:
        raise InvalidOptionError(f"quality must be between {LOWEST_LEVEL:g} and {num_levels}, got {_shown(quality)}")
    return drc.quantize_level(float(quality)) / drc.LEVEL_DENOMINATOR


def check_effort(effort: int) -> int:
    """The encoder effort, 1 to 5, as an int: checked before any work, so a bad one costs no
    analysis transform. The checks below do the same for their arguments."""
    if not _whole(effort):
        raise InvalidOptionError(f"effort must be a whole number, got {_shown(effort)}")
    if effort not in EFFORT_PASSES:
        raise InvalidOptionError(f"effort must be between {min(EFFORT_PASSES)} and {max(EFFORT_PASSES)}, "
                                 f"got {_shown(effort)}")
    return int(effort)


def check_steps(steps: int | None) -> int | None:
    """The diffusion step count, 0 to MAX_STEPS, or None (encode: none recommended; decode: the
    file's recommendation)."""
    if steps is None:
        return None
    if not _whole(steps):
        raise InvalidOptionError(f"steps must be a whole number, got {_shown(steps)}")
    if not 0 <= steps <= MAX_STEPS:
        raise InvalidOptionError(f"steps must be between 0 and {MAX_STEPS}, got {_shown(steps)}")
    return int(steps)


def check_seed(seed: int | None) -> int | None:
    """A whole-number seed, or None for the default; any size (the sampler takes it modulo 2^64)."""
    if seed is not None and not _whole(seed):
        raise InvalidOptionError(f"seed must be a whole number, got {_shown(seed)}")
    return None if seed is None else int(seed)


def check_max_pixels(max_pixels: int) -> int:
    """The pixel limit, at least 1: images and files over it are refused before anything is allocated."""
    if not _whole(max_pixels) or max_pixels < 1:
        raise InvalidOptionError(f"max_pixels must be a whole number of at least 1, got {_shown(max_pixels)}")
    return int(max_pixels)


def check_flag(name: str, value: bool | None, none_allowed: bool = False) -> bool | None:
    """True or False (numpy's too; or None where that means a default): a truthy string is not
    taken for True."""
    if not isinstance(value, bool | np.bool_) and not (none_allowed and value is None):
        raise InvalidOptionError(f"{name} must be True or False{' or None' if none_allowed else ''}, "
                                 f"got {_shown(value)}")
    return None if value is None else bool(value)


def check_progress(progress: Progress | None) -> Progress | None:
    """A callback of (done, total), or None: checked before any work, not at the first tile."""
    if progress is not None and not callable(progress):
        raise InvalidOptionError(f"progress must be a function of (done, total) or None, got {_shown(progress)}")
    return progress


def check_weights_path(name: str, path: str | Path | None) -> str | Path | None:
    """A weights path or None: another type would otherwise fail deep in the loading, unnamed."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise InvalidOptionError(f"{name} must be a path or None, got {_shown(path)}")
    return path


class DecodeOptions(NamedTuple):
    """`decode`'s options as checked: Python's numbers and flags, the device resolved."""

    steps: int | None
    seed: int | None
    compute: Compute
    max_pixels: int
    restore: bool
    progress: Progress | None


def check_decode_options(steps: int | None = None, seed: int | None = None, *,
                         weights: str | Path | None = None, diffusion_weights: str | Path | None = None,
                         device: str | torch.device | None = AUTO, exact: bool = False,
                         max_pixels: int = drc.DEFAULT_MAX_PIXELS, restore: bool = True,
                         progress: Progress | None = None) -> DecodeOptions:
    """The checks `decode` makes of its options before it reads a file, also for callers that
    keep options for later decodes (the Pillow plugin's defaults): a bad one fails where it is
    set. The weights paths are checked for their kind only: they are read where they are used."""
    check_weights_path("weights", weights)
    check_weights_path("diffusion_weights", diffusion_weights)
    return DecodeOptions(check_steps(steps), check_seed(seed),
                         compute_for(device, check_flag("exact", exact)), check_max_pixels(max_pixels),
                         bool(check_flag("restore", restore)), check_progress(progress))


def weights_id_bytes(weights_id: bytes | str) -> bytes:
    """A base weights id as the format stores it (8 bytes) from those bytes or their hex (the
    Pillow plugin's `info["weights_id"]`, `dirac info`'s)."""
    given = weights_id
    if isinstance(weights_id, str):
        with contextlib.suppress(ValueError):  # not hex: refused below as any other value
            weights_id = bytes.fromhex(weights_id)
    if not isinstance(weights_id, bytes | bytearray) or len(weights_id) != 8:
        raise InvalidOptionError(f"a weights id is 8 bytes or 16 hex digits, got {_shown(given)}")
    return bytes(weights_id)


def _bytes_of(data: object) -> bytes | None:
    """The bytes of a bytes-like object (bytes, bytearray, memoryview, arrays); None for others."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).tobytes()
    except TypeError:
        return None
    except ValueError as error:  # a memoryview released, an mmap closed
        raise InvalidOptionError(f"cannot read the {type(data).__name__}: {error}") from None


def file_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """A .drc file's bytes from any bytes-like object; a path or another object is refused by name."""
    if isinstance(data, str | os.PathLike):
        if len(text := str(data)) > MAX_PATH_LENGTH:  # text, not a path (a response's body): not echoed
            raise InvalidOptionError(f"a .drc file must be given as bytes, got {type(data).__name__} of "
                                     f"{counted(len(text), 'character')}")
        raise InvalidOptionError(f"give the .drc file's bytes, not a path: Path({text!r}).read_bytes()")
    if (found := _bytes_of(data)) is None:
        raise InvalidOptionError(f"a .drc file must be given as bytes, got {type(data).__name__}")
    return found


def image_file_bytes(image: object, max_pixels: int = drc.DEFAULT_MAX_PIXELS) -> bytes:
    """An encoded image's bytes from any bytes-like object, a binary file object (read no
    further than an image file of `max_pixels` can hold), or a flat uint8 array
    (cv2.imencode's); anything else is refused by name."""
    if isinstance(image, io.TextIOBase):
        raise InvalidOptionError("an image file object must be open in binary mode ('rb'), not text")
    if callable(getattr(image, "read", None)):  # io.BytesIO, an open file
        from diraccodec.image.files import read_image_file

        try:
            if getattr(image, "seekable", lambda: False)():
                image.seek(0)  # read whole, as Image.open reads one: a buffer just written is at its end
            data = read_image_file(image, max_pixels, "the image file object")  # type: ignore[arg-type]
        except (ValueError, OSError) as error:  # closed, or open for writing alone
            reason = "it is not open for reading" if isinstance(error, io.UnsupportedOperation) else error
            raise InvalidOptionError(f"cannot read the image file object: {reason}") from None
        except TypeError:  # pieces of text, which cannot be joined as bytes, or no read(size)
            raise InvalidOptionError("an image file object must give bytes from read(size)") from None
        if not isinstance(data, bytes | bytearray):
            raise InvalidOptionError(f"an image file object must give bytes, gave {type(data).__name__}")
        return bytes(data)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 1 or (image.ndim == 2 and image.shape[1] == 1)):  # cv2.imencode gives (N, 1)
        return image.tobytes()
    if isinstance(image, np.ndarray) and image.ndim == 1:  # (N, 1) may be pixels too: the hint below
        raise InvalidOptionError(f"an image file's bytes in an array must be uint8, got {image.dtype}")
    pixels = isinstance(image, np.ndarray | torch.Tensor)  # bytes-like, but pixels rather than a file
    if not pixels and (found := _bytes_of(image)) is not None:
        return found
    kind = type(image).__qualname__ if type(image).__module__ == "builtins" else \
        f"{type(image).__module__}.{type(image).__qualname__}"
    raise InvalidOptionError(f"image must be a PIL image, a path or an image file's bytes, got {kind}"
                             f"{': make a PIL image of its pixels first (PIL.Image.fromarray)' if pixels else ''}")


def check_size(size: int) -> int:
    """A target file size: a positive whole number of bytes."""
    if not _whole(size) or size <= 0:
        raise InvalidOptionError(f"size must be a positive number of bytes, got {_shown(size)}")
    return int(size)


def bpp_to_bytes(bpp: float | None, pixels: int) -> int:
    """The file size a target of `bpp` bits per pixel allows for `pixels` pixels (rounded down:
    the file is at or under the target); refused where it is not a positive finite number of
    bits or comes to less than one byte."""
    if not _real(bpp) or not bpp > 0 or math.isinf(_as_float(bpp)):
        raise InvalidOptionError(f"bpp must be a positive number, got {_shown(bpp)}")
    bpp = float(bpp)
    if not math.isfinite(bpp * pixels):
        raise InvalidOptionError(f"{bpp} bpp is too many bits for an image of {counted(pixels, 'pixel')}")
    target = math.floor(bpp * pixels / 8)
    if target < 1:
        raise InvalidOptionError(f"{bpp} bpp is less than one byte for an image of {counted(pixels, 'pixel')}")
    return target
