"""Shipped weights: loading (safetensors only, never pickle), identification and export.

A weights file holds the base codec's parameters, the integer entropy tables built from
them and JSON metadata. Its identifier, the first 8 bytes of the file's SHA-256, is
written into every .drc file so that a file is never decoded with other weights.

Weights load only from safetensors, and only when `manifest.json` beside them lists the
file's SHA-256: a truncated, modified or stray file is refused before it is parsed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load, save_file

from diraccodec.entropy.tables import (
    TableSet,
    build_factorized_tables,
    build_gaussian_tables,
    gaussian_scales,
    hyper_grid,
)
from diraccodec.errors import DiracError
from diraccodec.models.hyperprior import HyperpriorConfig, MultiRateHyperprior

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_BASE_WEIGHTS = WEIGHTS_DIR / "base.safetensors"
WEIGHTS_ENV = "DIRAC_WEIGHTS"
MANIFEST = "manifest.json"


@dataclass
class BaseWeights:
    model: MultiRateHyperprior
    hyper_tables: TableSet
    latent_tables: TableSet
    latent_scales: np.ndarray
    weights_id: bytes
    path: Path
    metadata: dict[str, str]


def default_weights_path() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV, DEFAULT_BASE_WEIGHTS))


@functools.lru_cache(maxsize=4)
def load_base_weights(path: Path | None = None) -> BaseWeights:
    path = Path(path or default_weights_path())
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DiracError(f"cannot read weights {path}: {error.strerror or error}") from None
    digest = hashlib.sha256(data).hexdigest()
    expected = read_manifest(path.parent).get(path.name, {}).get("sha256")
    if expected is None:
        raise DiracError(
            f"weights {path} are not listed in {path.parent / MANIFEST}; export them with 'dirac train export'"
        )
    if digest != expected:
        raise DiracError(f"weights {path} fail their hash check (modified or corrupt): sha256 {digest[:16]}..., "
                         f"expected {expected[:16]}...")
    try:
        tensors = load(data)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        fields = json.loads(metadata["config"])
        config = HyperpriorConfig(fields["channels"], fields["latent_channels"], tuple(fields["lambdas"]))
        model = MultiRateHyperprior(config)
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        hyper_tables = TableSet.from_tensors(tensors, "tables.hyper")
        latent_tables = TableSet.from_tensors(tensors, "tables.latent")
        scales = tensors["tables.latent.scales"].numpy()
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as error:
        raise DiracError(f"{path} is not a diraccodec weights file ({error})") from None
    model.eval().requires_grad_(False)
    return BaseWeights(
        model=model,
        hyper_tables=hyper_tables,
        latent_tables=latent_tables,
        latent_scales=scales,
        weights_id=bytes.fromhex(digest)[:8],
        path=path,
        metadata=metadata,
    )


def export_base_weights(model: MultiRateHyperprior, path: Path, info: dict[str, object]) -> None:
    """Write the inference weights with their entropy tables (built here, once)."""
    model = model.cpu().eval()
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
    metadata = {"config": json.dumps(asdict(model.config)), "info": json.dumps(info)}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    record_in_manifest(path)


def read_manifest(folder: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        raise DiracError(f"cannot read {folder / MANIFEST}: {error}") from None


def record_in_manifest(path: Path) -> None:
    """List the weights file with its SHA-256 and size in the manifest beside it."""
    manifest = read_manifest(path.parent)
    data = path.read_bytes()
    manifest[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    temporary = path.parent / f".{MANIFEST}.part"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path.parent / MANIFEST)
