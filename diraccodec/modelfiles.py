"""The model files: where the shipped weights are, loading (safetensors only, never pickle),
identification and export.

A weights file holds the base codec's parameters, the integer entropy tables built from
them and JSON metadata. Its identifier, the first 8 bytes of the file's SHA-256, is
written into every .drc file so that a file is never decoded with other weights.

Weights load only from safetensors, and only when `manifest.json` beside them lists the
file's SHA-256: a truncated, modified or stray file is refused before it is parsed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import load, save

from diraccodec.codec.base_codec import BaseWeights, check_fixed_point
from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
from diraccodec.diffusion.finishing import FinishingSettings
from diraccodec.diffusion.sampler import SamplerSettings
from diraccodec.entropy.tables import (
    TableSet,
    build_factorized_tables,
    build_gaussian_tables,
    gaussian_scales,
    hyper_grid,
)
from diraccodec.errors import DiracError, file_fault
from diraccodec.image.files import write_atomic
from diraccodec.restoration.filter import RestorationFilter
from diraccodec.restoration.unet import ResidualUNet, ResidualUNetConfig


def shipped_weights_folder() -> Path:
    """The installed package's weights (package data of a wheel: diraccodec/weights/), else the
    checkout's weights/ beside the package (a source tree or an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "weights"
    return installed if (installed / MANIFEST).exists() else package.parent / "weights"


MANIFEST = "manifest.json"
RELEASES = "releases.json"  # the base weights id each release ships -> that release's version
WEIGHTS_DIR = shipped_weights_folder()
DEFAULT_BASE_WEIGHTS = WEIGHTS_DIR / "base.safetensors"
WEIGHTS_ENV = "DIRAC_WEIGHTS"
DEFAULT_DIFFUSION_WEIGHTS = WEIGHTS_DIR / "diffusion.safetensors"
DIFFUSION_ENV = "DIRAC_DIFFUSION_WEIGHTS"
DEFAULT_RESTORATION_WEIGHTS = WEIGHTS_DIR / "restoration.safetensors"
RESTORATION_ENV = "DIRAC_RESTORATION_WEIGHTS"
LEVEL_TABLES = "tables.hyper_levels"  # optional: the hyper-latents' tables per whole level
# Metadata of weights with level tables: the id of the same model with its shared tables alone,
# whose files these weights still decode (BaseWeights.coding_for)
SHARED_TABLES_ID = "shared_tables_weights_id"
Model = TypeVar("Model", bound=torch.nn.Module)


def _named_in_environment(variable: str, default: Path) -> Path:
    """The file a variable names, or `default` where it is unset or empty (as a shell clears one)."""
    return Path(os.environ.get(variable) or default)


def default_weights_path() -> Path:
    return _named_in_environment(WEIGHTS_ENV, DEFAULT_BASE_WEIGHTS)


@functools.cache
def released_base_weights() -> dict[str, str]:
    """Base weights ids (hex) -> the diraccodec release that ships them, from weights/releases.json.

    A release that ships new base weights adds its own and keeps the earlier ones, so that a
    file made with any released weights can name the release that decodes it."""
    try:
        return dict(json.loads((WEIGHTS_DIR / RELEASES).read_text())["base"])
    except (OSError, KeyError, TypeError, ValueError):  # JSONDecodeError is a ValueError
        return {}


def listed_id(path: Path) -> str | None:
    """The id (16 hex digits, as in .drc headers) that the manifest beside `path` lists for it;
    None where it lists none."""
    digest = read_manifest(path.parent).get(path.name, {}).get("sha256")
    return str(digest)[:16] if digest else None


def shipped_base_weights_id() -> str | None:
    """The id of the base weights this package ships, from their manifest."""
    try:
        return listed_id(DEFAULT_BASE_WEIGHTS)
    except DiracError:  # a damaged manifest: named where the weights are loaded, not here
        return None


def read_verified(path: Path) -> tuple[bytes, str]:
    """The file's bytes and SHA-256, after checking the hash against the manifest beside it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DiracError(f"cannot read weights {path}: {error.strerror or error}") from None
    if not _is_safetensors(data):  # an image, say: not weights left out of the manifest
        raise DiracError(f"{path} is not a weights file (safetensors)")
    digest = hashlib.sha256(data).hexdigest()
    expected = read_manifest(path.parent).get(path.name, {}).get("sha256")
    if expected is None:
        raise DiracError(
            f"weights {path} are not listed in {path.parent / MANIFEST}; export them with 'dirac train export'"
        )
    if digest != expected:
        raise DiracError(f"weights {path} fail their hash check (modified or corrupt): sha256 {digest[:16]}..., "
                         f"expected {expected[:16]}...")
    return data, digest


def _is_safetensors(data: bytes) -> bool:
    """Whether `data` opens as safetensors do: a little-endian header length, then its JSON."""
    return len(data) > 8 and 8 + int.from_bytes(data[:8], "little") <= len(data) and data[8:9] == b"{"


def _parse(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata, the metadata in the order the file lists it: written back in that
    order, the same tensors and metadata give the same bytes, so the same id."""
    tensors = load(data)
    header_size = int.from_bytes(data[:8], "little")
    return tensors, dict(json.loads(data[8 : 8 + header_size]).get("__metadata__") or {})


@functools.lru_cache(maxsize=4)
def load_base_weights(path: Path | None = None) -> BaseWeights:
    """The base codec's weights at `path` (the installed ones where None), hash-checked
    against the manifest beside them, with their entropy tables; the last 4 loaded are kept."""
    path = Path(path or default_weights_path())
    data, digest = read_verified(path)
    try:
        tensors, metadata = _parse(data)
        fields = json.loads(metadata["config"])
        model = _loaded_model(lambda: MultiRateHyperprior(HyperpriorConfig.from_fields(fields)), tensors)
        hyper_tables = TableSet.from_tensors(tensors, "tables.hyper")
        latent_tables = TableSet.from_tensors(tensors, "tables.latent")
        level_tables = None
        if f"{LEVEL_TABLES}.frequencies" in tensors:
            level_tables = TableSet.from_tensors(tensors, LEVEL_TABLES)
            check_level_tables(level_tables, hyper_tables, model.config.num_levels)
        scales = tensors["tables.latent.scales"].numpy()
        check_fixed_point(model)  # the format's arithmetic must hold for these weights
        shared_tables_id = bytes.fromhex(metadata[SHARED_TABLES_ID]) if SHARED_TABLES_ID in metadata else None
    except (KeyError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as error:
        raise DiracError(f"{path} is not a diraccodec base weights file ({file_fault(error)})") from None
    model.eval().requires_grad_(False)
    return BaseWeights(
        model=model,
        hyper_tables=hyper_tables,
        latent_tables=latent_tables,
        latent_scales=scales,
        weights_id=bytes.fromhex(digest)[:8],
        path=path,
        metadata=metadata,
        hyper_level_tables=level_tables,
        shared_tables_id=shared_tables_id,
    )


def _loaded_model(build: Callable[[], Model], tensors: dict[str, torch.Tensor]) -> Model:
    """The model `build` makes, in float32 whatever torch's default dtype, with the file's
    `model.` tensors. Its initial weights, replaced at once, are drawn with torch's global
    generator put back after: a seeded caller draws the same whether or not it loaded one."""
    with torch.random.fork_rng(devices=[]):
        model = build().float()
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    return model


def check_level_tables(tables: TableSet, shared: TableSet, num_levels: int) -> None:
    """Per-level hyper tables must code each level's channels over the shared tables' values."""
    levels = num_levels + 1  # levels 0 .. num_levels
    if tables.count != levels * shared.count or not (
            np.array_equal(tables.offsets, np.tile(shared.offsets, levels))
            and np.array_equal(tables.lengths, np.tile(shared.lengths, levels))):
        raise ValueError(f"per-level hyper tables need {levels} x {shared.count} rows over the shared tables' values")


def write_with_level_tables(source: Path, destination: Path, tables: TableSet, info: dict[str, object]) -> None:
    """A copy of base weights whose hyper-latents are coded with `tables`, one set per whole
    level (diraccodec.training.entropy.fit_level_tables), listed in the manifest beside it. The
    model is the same, so it reconstructs the same images; it has another weights id."""
    weights = load_base_weights(Path(source).resolve())
    check_level_tables(tables, weights.hyper_tables, weights.model.config.num_levels)
    data, _ = read_verified(weights.path)
    tensors, metadata = _parse(data)
    tensors.update(tables.as_tensors(LEVEL_TABLES))
    recorded = json.loads(metadata.get("info", "{}"))
    metadata = {**metadata, "info": json.dumps({**recorded, "hyper_level_tables": info})}
    shared = weights.weights_id if weights.hyper_level_tables is None else weights.shared_tables_id
    if shared is not None:  # the files of the weights without level tables still decode
        metadata[SHARED_TABLES_ID] = shared.hex()
    _save_listed(tensors, metadata, Path(destination))
    load_base_weights.cache_clear()  # the file at `destination` may have been read before


def write_shared_tables_copy(source: Path, destination: Path) -> bytes:
    """The weights that `source`'s level tables were added to (write_with_level_tables): the
    same model coding every level with its shared tables, byte for byte, so with the id that
    files of that earlier release carry. Returns the id, checked against the one `source` names."""
    weights = load_base_weights(Path(source).resolve())
    if weights.shared_tables_id is None:
        raise DiracError(f"{weights.path.name} names no weights with shared tables alone")
    data, _ = read_verified(weights.path)
    tensors, metadata = _parse(data)
    tensors = {name: tensor for name, tensor in tensors.items() if not name.startswith(f"{LEVEL_TABLES}.")}
    recorded = json.loads(metadata["info"])
    recorded.pop("hyper_level_tables", None)
    metadata = {key: json.dumps(recorded) if key == "info" else value
                for key, value in metadata.items() if key != SHARED_TABLES_ID}
    _save_listed(tensors, metadata, Path(destination))
    load_base_weights.cache_clear()
    written = load_base_weights(Path(destination).resolve()).weights_id
    if written != weights.shared_tables_id:
        raise DiracError(f"the copy of {weights.path.name} without level tables is {written.hex()}, "
                         f"not the {weights.shared_tables_id.hex()} it names")
    return written


@dataclass
class DiffusionWeights:
    model: ResidualUNet
    settings: SamplerSettings
    finishing: FinishingSettings
    base_weights_id: bytes  # the base codec whose reconstructions it was trained on
    path: Path
    metadata: dict[str, str]
    # The restoration filter whose output it enhances (None: the base synthesis itself)
    restoration_weights_id: bytes | None = None


def default_diffusion_path() -> Path:
    return _named_in_environment(DIFFUSION_ENV, DEFAULT_DIFFUSION_WEIGHTS)


def _unet(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> ResidualUNet:
    config = ResidualUNetConfig.from_fields(json.loads(metadata["config"]))
    return _loaded_model(lambda: ResidualUNet(config), tensors).eval().requires_grad_(False)


def _unet_file(path: Path, kind: str) -> tuple[ResidualUNet, bytes, dict[str, str], bytes]:
    """A U-Net weights file (diffusion decoder or restoration filter), its base's id and its own."""
    data, digest = read_verified(path)
    try:
        tensors, metadata = _parse(data)
        return _unet(tensors, metadata), bytes.fromhex(metadata["base_weights_id"]), metadata, bytes.fromhex(digest)[:8]
    except (KeyError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as error:
        raise DiracError(f"{path} is not a diraccodec {kind} weights file ({file_fault(error)})") from None


def load_unet_weights(path: Path) -> ResidualUNet:
    """The U-Net of a diffusion decoder's or a restoration filter's weights file (the two share
    the architecture), for a training run to start from."""
    return _unet_file(Path(path).resolve(), "diffusion or restoration")[0]


def _export_unet(model: ResidualUNet, base_weights_id: bytes, path: Path, info: dict[str, object],
                 **extra: str) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "config": json.dumps(asdict(model.config)),
        "base_weights_id": base_weights_id.hex(),
        "info": json.dumps(info),
        **extra,
    }
    _save_listed(tensors, metadata, path)


@functools.lru_cache(maxsize=4)
def load_diffusion_weights(path: Path) -> DiffusionWeights:
    """The diffusion decoder's weights in the file at `path` (api.diffusion_weights_for finds the installed one)."""
    path = Path(path)
    model, base_id, metadata, _ = _unet_file(path, "diffusion")
    try:
        settings, finishing = split_settings(json.loads(metadata["sampler"]))
        restoration_id = bytes.fromhex(metadata["restoration_weights_id"]) if "restoration_weights_id" in metadata \
            else None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise DiracError(f"{path} is not a diraccodec diffusion weights file ({file_fault(error)})") from None
    return DiffusionWeights(model, settings, finishing, base_id, path, metadata, restoration_id)


def split_settings(fields: dict[str, object]) -> tuple[SamplerSettings, FinishingSettings]:
    """A weights file's "sampler" record (one JSON object) as the sampler's and the finishing's settings."""
    if not isinstance(fields, dict):
        raise ValueError("the sampler record is not a JSON object")
    unknown = set(fields) - SamplerSettings.field_names() - FinishingSettings.field_names()
    if unknown:
        raise ValueError(f"unknown sampler settings {sorted(unknown)}")
    runtime = {"tile", "margin"}  # chosen by the decoder for its device, not by the model
    sampler = SamplerSettings(**{k: v for k, v in fields.items() if k in SamplerSettings.field_names() - runtime})
    return sampler, FinishingSettings(**{k: v for k, v in fields.items() if k in FinishingSettings.field_names()})


def export_diffusion_weights(
    model: ResidualUNet, settings: SamplerSettings, base_weights_id: bytes, path: Path, info: dict[str, object],
    restoration_weights_id: bytes | None = None, finishing: FinishingSettings = FinishingSettings(),
) -> None:
    """restoration_weights_id: the filter whose output the model was trained to enhance."""
    extra = {"restoration_weights_id": restoration_weights_id.hex()} if restoration_weights_id else {}
    record = json.dumps({**asdict(settings), **asdict(finishing)})
    _export_unet(model, base_weights_id, path, info, sampler=record, **extra)


def replace_diffusion_settings(path: Path, output: Path, settings: SamplerSettings | None = None,
                               finishing: FinishingSettings | None = None) -> None:
    """Write the diffusion weights at `path` to `output` with other sampler or finishing settings
    (the model, its ids and training record unchanged): the settings are chosen after training."""
    loaded = load_diffusion_weights(path)
    export_diffusion_weights(loaded.model, settings or loaded.settings, loaded.base_weights_id, output,
                             json.loads(loaded.metadata["info"]), loaded.restoration_weights_id,
                             finishing or loaded.finishing)
    load_diffusion_weights.cache_clear()  # the file at `output` may have been one of these


@dataclass
class RestorationWeights:
    model: RestorationFilter
    base_weights_id: bytes  # the base codec whose reconstructions it corrects
    path: Path
    metadata: dict[str, str]
    weights_id: bytes  # its own (the file's SHA-256, first 8 bytes), named by a diffusion decoder on it


def default_restoration_path() -> Path:
    return _named_in_environment(RESTORATION_ENV, DEFAULT_RESTORATION_WEIGHTS)


NO_RESTORATION = "none"  # $DIRAC_RESTORATION_WEIGHTS for 0 steps without the filter (the base synthesis)


def installed_restoration_path() -> Path | None:
    """The restoration weights a decode uses (read on every call: $DIRAC_RESTORATION_WEIGHTS
    may change): the file that variable names, which must exist (a misspelt name would quietly
    give unrestored pixels; `none` asks for no filter), else the shipped file, or None where it
    is not installed."""
    named = os.environ.get(RESTORATION_ENV)
    if named == NO_RESTORATION:
        return None
    if named:
        if not Path(named).exists():
            raise DiracError(f"no restoration weights at {named} (${RESTORATION_ENV})")
        return Path(named)
    return DEFAULT_RESTORATION_WEIGHTS if DEFAULT_RESTORATION_WEIGHTS.exists() else None


def load_restoration_weights(path: Path | None = None) -> RestorationWeights | None:
    """The restoration filter's weights, or None when the default file is not installed."""
    if path is None:
        path = installed_restoration_path()
        if path is None:
            return None
    return _load_restoration_file(Path(path).resolve())


@functools.lru_cache(maxsize=4)
def _load_restoration_file(path: Path) -> RestorationWeights:
    unet, base_id, metadata, weights_id = _unet_file(path, "restoration")
    if metadata.get("kind") != "restoration":  # a diffusion decoder's file has the same layers and ids
        what = "a diffusion decoder's weights" if "sampler" in metadata else "its kind is not restoration"
        raise DiracError(f"{path} is not a diraccodec restoration weights file ({what})")
    return RestorationWeights(RestorationFilter(unet).eval(), base_id, path, metadata, weights_id)


def export_restoration_weights(
    model: RestorationFilter, base_weights_id: bytes, path: Path, info: dict[str, object]
) -> None:
    _export_unet(model.unet, base_weights_id, path, info, kind="restoration")


def retie_unets(source_base: Path, new_base: Path, restoration: Path, diffusion: Path,
                folder: Path) -> tuple[Path, Path]:
    """Copies of a restoration filter and a diffusion decoder made for `source_base`, naming
    `new_base` instead, in `folder`: for base weights that reconstruct exactly as their source
    (the same model, other tables), whose pixels the U-Nets were trained on."""
    old, new = load_base_weights(Path(source_base).resolve()), load_base_weights(Path(new_base).resolve())
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    if old_state.keys() != new_state.keys() or not all(torch.equal(old_state[k], new_state[k]) for k in old_state):
        raise DiracError(f"{new.path.name} does not reconstruct as {old.path.name}: its U-Nets need training")
    filter_weights = load_restoration_weights(restoration)
    decoder = load_diffusion_weights(Path(diffusion).resolve())
    assert filter_weights is not None  # an explicit path loads or raises
    for name, tied_to in (("restoration", filter_weights.base_weights_id), ("diffusion", decoder.base_weights_id)):
        if tied_to != old.weights_id:
            raise DiracError(f"the {name} weights name base {tied_to.hex()}, not {old.weights_id.hex()}")
    if decoder.restoration_weights_id not in (None, filter_weights.weights_id):
        raise DiracError("the diffusion decoder enhances another restoration filter")
    retied = {"retied_from_base": old.weights_id.hex()}
    restoration_out, diffusion_out = Path(folder) / "restoration.safetensors", Path(folder) / "diffusion.safetensors"
    export_restoration_weights(filter_weights.model, new.weights_id, restoration_out,
                               {**json.loads(filter_weights.metadata["info"]), **retied})
    _load_restoration_file.cache_clear()  # the file at restoration_out may have been read before
    new_filter = load_restoration_weights(restoration_out)
    assert new_filter is not None
    export_diffusion_weights(decoder.model, decoder.settings, new.weights_id, diffusion_out,
                             {**json.loads(decoder.metadata["info"]), **retied},
                             new_filter.weights_id if decoder.restoration_weights_id else None, decoder.finishing)
    load_diffusion_weights.cache_clear()
    return restoration_out, diffusion_out


def export_base_weights(model: MultiRateHyperprior, path: Path, info: dict[str, object]) -> None:
    """Write the inference weights with their entropy tables (built here, once)."""
    model = model.cpu().eval()
    try:
        check_fixed_point(model)  # as load_base_weights will ask
    except ValueError as error:
        raise DiracError(f"cannot export these base weights: {error}") from None
    with torch.no_grad():
        prior64 = copy.deepcopy(model.hyper_prior).double()
        grid = hyper_grid()
        cumulative = prior64.cumulative(grid.expand(model.config.channels, -1))
    hyper_tables = build_factorized_tables(cumulative, grid)
    scales = gaussian_scales()
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update(hyper_tables.as_tensors("tables.hyper"))
    tensors.update(build_gaussian_tables(scales).as_tensors("tables.latent"))
    tensors["tables.latent.scales"] = torch.from_numpy(scales)
    metadata = {"config": json.dumps(model.config.as_fields()), "info": json.dumps(info)}
    _save_listed(tensors, metadata, path)


def serialized(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes with the metadata in `metadata`'s order. safetensors writes it in
    a hash map's order, which changes from one process to the next; the weights id is the
    file's hash, so the same tensors and metadata must always give the same bytes."""
    data = save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if metadata:  # none: safetensors writes no metadata field at all
        header["__metadata__"] = dict(metadata)
    ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(ordered) > size:  # the same fields in another order: never longer
        raise DiracError("safetensors wrote a header that cannot be put in order")
    return data[:8] + ordered.ljust(size) + data[8 + size :]


def _save_listed(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write atomically, then list the file with its hash in the manifest beside it."""
    write_atomic(path, serialized(tensors, metadata))
    record_in_manifest(path)


def write_half_precision_copy(source: Path, destination: Path) -> None:
    """A copy of a weights file with the model's parameters in float16, about half the size, to
    carry a training run's start where the bytes that travel are few. The shared entropy
    tables and the metadata are kept, not the tables per level or the id of weights whose
    files it would read; the copy records the original's id and is listed in the manifest
    beside it. It is a start for training, not for coding: its parameters are rounded, its
    tables are the original's."""
    data, digest = read_verified(Path(source))
    tensors, metadata = _parse(data)
    halved = {name: tensor.half() if name.startswith("model.") and tensor.is_floating_point() else tensor
              for name, tensor in tensors.items() if not name.startswith(f"{LEVEL_TABLES}.")}
    metadata = {key: value for key, value in metadata.items() if key != SHARED_TABLES_ID}
    _save_listed(halved, {**metadata, "half_precision_copy_of": digest[:16]}, Path(destination))


def read_manifest(folder: Path) -> dict[str, dict[str, object]]:
    """The manifest of the weights files in `folder`: each file's name and its record (its
    SHA-256 and size); empty where there is none. One that is not such an object is an error,
    not a traceback where its records are read."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DiracError(f"cannot read {path}: {error}") from None
    if not isinstance(manifest, dict) or not all(
            isinstance(record, dict) and isinstance(record.get("sha256"), str) for record in manifest.values()):
        raise DiracError(f"cannot read {path}: not an object of file names and their records with a sha256 each")
    return manifest


def models_in_use(base: str | Path | None = None) -> dict[str, str | None]:
    """The ids (16 hex digits, as in .drc headers) of the base, restoration and diffusion weights
    that decoding would load, from their manifests; None where a file is absent or unlisted, or
    made for other base weights (which decoding then leaves out)."""
    paths = {"base": Path(base or default_weights_path()), "restoration": default_restoration_path(),
             "diffusion": default_diffusion_path()}
    ids: dict[str, str | None] = {}
    for name, path in paths.items():
        ids[name] = listed_id(path.resolve().parent / path.name) if path.exists() else None
    # a filter or a diffusion decoder made for other base weights is not used: not named either
    for name, loader in (("restoration", load_restoration_weights), ("diffusion", load_diffusion_weights)):
        if ids[name] is not None:
            try:
                tied_to = loader(paths[name].resolve()).base_weights_id.hex()
            except DiracError:
                tied_to = None
            ids[name] = ids[name] if tied_to == ids["base"] else None
    return ids


def record_in_manifest(path: Path) -> None:
    """List the weights file with its SHA-256 and size in the manifest beside it. Processes
    that list files in one folder at once take turns, so that none loses another's entry."""
    data = path.read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with _taking_turns(path.parent):
        manifest = read_manifest(path.parent)
        manifest[path.name] = entry
        write_atomic(path.parent / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def _taking_turns(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder itself (flock; where there is none, no lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock
