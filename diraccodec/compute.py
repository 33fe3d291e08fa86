"""Pixels that do not depend on the thread count.

Two kinds of kernel sum in an order that follows the thread count: oneDNN's convolutions
(it picks its blocking by threads) and MKL's sgemm, which the plain im2col convolutions
call (on AVX-512 machines it splits its sums by threads). The reproducible paths turn
oneDNN off, and MKL gives the same sums with any thread count in its strict conditional
numerical reproducibility (CNR) mode. MKL reads that mode once, at its first call, so
`request_strict_mkl` (run when diraccodec is imported) asks for it through MKL_CBWR; where
that came too late (MKL already used in this process) or MKL_CBWR chose otherwise, the
reproducible paths run in one thread, and a warning says the last bit may then differ from
other processes'.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import warnings
from collections.abc import Iterator

import torch

STRICT_MKL = "AUTO,STRICT"  # the fastest code branch for this CPU, summed alike on any thread count
_MKL_CBWR_ALL = -1  # mkl_cbwr_get's query for the whole setting
_MKL_CBWR_STRICT = 0x10000


def request_strict_mkl() -> None:
    """Ask for MKL's strict CNR mode before MKL's first call (importing torch makes none)."""
    os.environ.setdefault("MKL_CBWR", STRICT_MKL)


@functools.cache
def mkl_is_strict() -> bool | None:
    """Whether MKL runs in strict CNR mode; None where torch does not use MKL or cannot say."""
    if not torch.backends.mkl.is_available():
        return None
    try:  # MKL is linked into torch's CPU library, which exports its service functions
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get_mode = library.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get_mode.argtypes, get_mode.restype = [ctypes.c_int], ctypes.c_int
    mode = get_mode(_MKL_CBWR_ALL)
    return mode >= 0 and bool(mode & _MKL_CBWR_STRICT)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def thread_invariant() -> Iterator[None]:
    """Convolutions whose sums, and so pixels, are the same with any number of threads."""
    mkl_loose = mkl_is_strict() is False
    if mkl_loose:
        _warn_not_strict()  # before any state changes: under -W error it raises
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with single_thread() if mkl_loose else contextlib.nullcontext():
            yield
    finally:
        torch.backends.mkldnn.enabled = previous


@functools.cache
def _warn_not_strict() -> None:
    warnings.warn(
        f"MKL is not in strict reproducible mode (it was used before diraccodec was imported, or "
        f"MKL_CBWR={os.environ.get('MKL_CBWR')!r}); decoding runs in one thread, and decoded pixels may "
        f"differ in the last bit from other processes'. Import diraccodec first, or set MKL_CBWR={STRICT_MKL}",
        RuntimeWarning,
        stacklevel=4,
    )
