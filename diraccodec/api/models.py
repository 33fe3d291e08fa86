"""The installed models each file needs (the base codec of its weights, the restoration filter,
the diffusion decoder), found, checked against one another, loaded once and kept for the next
call; and `model_calls`, inside which every call runs them."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from diraccodec.api.arguments import weights_id_bytes
from diraccodec.codec.base_codec import LOWEST_LEVEL, BaseCodec, BaseWeights
from diraccodec.compute import Compute, float32_default, one_thread_in_forked_children, without_callers_autocast
from diraccodec.container import drc
from diraccodec.diffusion.decoder import DiffusionDecoder
from diraccodec.errors import (
    CorruptFileError,
    DiracError,
    InvalidOptionError,
    WrongWeightsError,
)
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    DiffusionWeights,
    default_diffusion_path,
    default_weights_path,
    installed_restoration_path,
    load_base_weights,
    load_diffusion_weights,
    load_restoration_weights,
    released_base_weights,
    shipped_base_weights_id,
)
from diraccodec.restoration.filter import Restorer

_LOCK = threading.RLock()  # torch's thread count and kernel flags are process-wide


@contextlib.contextmanager
def model_calls() -> Iterator[None]:
    """One call's model work at a time, with torch's default dtype float32 whatever the
    caller's (its thread count, kernel flags and default dtype are process-wide), and without
    the caller's autocast or inference mode (the encoder's search takes gradients); from the
    first call on, a forked child gets one torch thread (compute.one_thread_in_forked_children).
    Every API function that runs the models runs them inside it; code that runs the stages
    itself (evaluation, bench) does so too. It nests: the API's functions may be called inside it."""
    with _LOCK, float32_default(), without_callers_autocast(), torch.inference_mode(False):
        one_thread_in_forked_children()
        yield


@functools.lru_cache(maxsize=8)
def _cached_codec(weights: Path, compute: Compute) -> BaseCodec:
    return BaseCodec(load_base_weights(weights), compute)


def get_codec(weights: str | Path | None = None, compute: Compute | None = None) -> BaseCodec:
    """The base codec of `weights` (the installed ones where None) on `compute`, kept for the
    next call (the last 8 weights and devices): loading and preparing the models takes longer
    than a small image's work."""
    return _cached_codec(Path(weights or default_weights_path()).resolve(), compute or Compute())


class _InstalledFilter(NamedTuple):
    restorer: Restorer
    base_weights_id: bytes  # the base whose reconstructions it corrects
    weights_id: bytes  # its own, which a diffusion decoder trained on its output names


@functools.lru_cache(maxsize=8)
def _cached_restorer(weights: Path, compute: Compute) -> _InstalledFilter:
    loaded = load_restoration_weights(weights)
    assert loaded is not None  # an explicit path either loads or raises
    return _InstalledFilter(Restorer(loaded.model, compute), loaded.base_weights_id, loaded.weights_id)


def _installed_restorer(compute: Compute) -> _InstalledFilter | None:
    path = installed_restoration_path()
    return _cached_restorer(path.resolve(), compute) if path is not None else None


def get_restorer(codec: BaseCodec) -> Restorer | None:
    """The restoration filter for `codec`'s reconstructions, or None where none is installed
    for these base weights (0 steps then give the base synthesis alone)."""
    installed = _installed_restorer(codec.compute)
    if installed is None or installed.base_weights_id != codec.weights.weights_id:
        return None
    return installed.restorer


@functools.lru_cache(maxsize=8)
def _cached_diffusion(weights: Path, compute: Compute, restorer: Restorer | None) -> DiffusionDecoder:
    loaded = load_diffusion_weights(weights)
    return DiffusionDecoder(loaded.model, loaded.settings, loaded.finishing, compute, restorer)


def get_diffusion(codec: BaseCodec, weights: str | Path | None = None) -> DiffusionDecoder:
    """The diffusion decoder trained on `codec`'s reconstructions (and on the installed
    restoration filter's output, where it was trained on that); a clear error if there is none."""
    loaded = diffusion_weights_for(codec, weights)
    return _cached_diffusion(loaded.path, codec.compute, restorer_for(loaded, codec.compute))


def diffusion_weights_for(codec: BaseCodec, weights: str | Path | None = None) -> DiffusionWeights:
    """The diffusion weights file for `codec`'s files (`weights`, else $DIRAC_DIFFUSION_WEIGHTS or
    the shipped file), checked but not made into a decoder; a clear error if there is none."""
    # read on every call, so $DIRAC_DIFFUSION_WEIGHTS may change; the decoder is cached by the resolved file
    path = Path(weights) if weights else default_diffusion_path()
    if not weights and not path.exists():
        raise InvalidOptionError(
            f"diffusion decoding (steps > 0) is not available: no diffusion weights at {path}; use 0 steps"
        )
    loaded = load_diffusion_weights(path.resolve())
    if loaded.base_weights_id != codec.weights.weights_id:
        raise WrongWeightsError(
            f"the diffusion weights were trained on base weights {loaded.base_weights_id.hex()}, not on the loaded "
            f"{codec.weights.weights_id.hex()}; use 0 steps, or diffusion weights trained on them "
            f"($DIRAC_DIFFUSION_WEIGHTS, which every command reads)"
        )
    return loaded


def restorer_for(diffusion: DiffusionWeights, compute: Compute | None = None) -> Restorer | None:
    """The installed filter whose output `diffusion` was trained to enhance (None where it
    enhances the base synthesis itself); WrongWeightsError where that filter is not installed."""
    if diffusion.restoration_weights_id is None:
        return None
    installed = _installed_restorer(compute or Compute())
    if installed is None or installed.weights_id != diffusion.restoration_weights_id:
        raise WrongWeightsError(
            f"the diffusion weights enhance the output of restoration weights "
            f"{diffusion.restoration_weights_id.hex()}, which are not installed; use 0 steps or matching weights"
        )
    return installed.restorer


@dataclass(frozen=True)
class Support:
    """Whether an installed model serves the files of some base weights: the weights file that
    does, or why none does (a sentence)."""

    weights: Path | None
    why_not: str = ""
    full_steps: int = 0  # of diffusion weights: the step count from which the finishing applies in full


def serving_weights_id(file_weights_id: bytes | str) -> bytes:
    """The base weights id whose restoration and diffusion models serve files of
    `file_weights_id`: the installed base weights' own where they read that earlier release's
    files as the same model (BaseWeights.coding_for), else the file's."""
    file_weights_id = weights_id_bytes(file_weights_id)
    try:
        installed = load_base_weights(default_weights_path().resolve())
    except DiracError:
        return file_weights_id
    if file_weights_id != installed.weights_id and installed.coding_for(file_weights_id) is not None:
        return installed.weights_id
    return file_weights_id


def diffusion_support(weights_id: bytes | str) -> Support:
    """Whether the installed diffusion weights can enhance files of base weights `weights_id`
    (decoding with steps above 0), with the restoration filter they were trained on."""
    weights_id = weights_id_bytes(weights_id)
    path = default_diffusion_path()  # read on every call: $DIRAC_DIFFUSION_WEIGHTS may change
    if not path.exists():
        return Support(None, f"not available: no diffusion weights at {path} (0 steps only)")
    try:
        diffusion = load_diffusion_weights(path.resolve())
    except DiracError as error:
        return Support(None, f"unavailable ({error})")
    if diffusion.base_weights_id != weights_id:
        return Support(None, f"not available: {diffusion.path.name} was trained on other base weights")
    try:
        restorer_for(diffusion)  # the filter it was trained on, where it needs one
    except WrongWeightsError:
        return Support(None, f"not available: {diffusion.path.name} enhances the output of restoration weights "
                             f"{diffusion.restoration_weights_id.hex()}, which are not installed")
    except DiracError as error:
        return Support(None, f"unavailable ({error})")
    return Support(diffusion.path, full_steps=diffusion.finishing.full_steps)


def restoration_support(weights_id: bytes | str) -> Support:
    """Whether 0 steps go through the installed restoration filter for files of `weights_id`."""
    weights_id = weights_id_bytes(weights_id)
    try:
        restoration = load_restoration_weights()
    except DiracError as error:
        return Support(None, f"unavailable ({error})")
    if restoration is None or restoration.base_weights_id != weights_id:
        return Support(None, "none: 0 steps give the base synthesis alone")
    return Support(restoration.path)


def codec_for_file(header: drc.DrcFile, weights: str | Path | None, compute: Compute) -> BaseCodec:
    """The base codec of `weights` as it reads the file: the weights that made it, or the same
    model with level tables added since (BaseWeights.coding_for). A level outside the codec's
    range makes the file corrupt: no encoder writes one."""
    codec = get_codec(weights, compute)
    reader = codec.for_file(header.weights_id)
    if reader is None:
        raise WrongWeightsError(_wrong_weights_message(header.weights_id, codec.weights))
    if not LOWEST_LEVEL <= header.quality <= codec.num_levels:
        raise CorruptFileError(f"corrupt .drc file (level {header.quality:g} outside the model's "
                               f"{LOWEST_LEVEL:g} to {codec.num_levels})")
    return reader


def _wrong_weights_message(file_weights: bytes, loaded: BaseWeights) -> str:
    """One line that names the weights a file needs, and where they are: the weights this package
    ships, or the release that ships them."""
    message = (f"file was made with weights {file_weights.hex()}, but the loaded weights are "
               f"{loaded.weights_id.hex()} ({loaded.path.name})")
    if file_weights.hex() == shipped_base_weights_id():
        return f"{message}; decode it with the weights this package ships ({DEFAULT_BASE_WEIGHTS})"
    release = released_base_weights().get(file_weights.hex())
    if release is not None:
        return f"{message}; decode it with diraccodec {release}, which ships them (pip install 'diraccodec=={release}')"
    return f"{message}; decode it with the weights that made it"
