"""Shared fixtures: real images (the shipped sample and Kodak crops) and the shipped weights."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist (`make test` runs `-n auto`) each worker, and every process a test
# starts, runs torch in one thread: two workers of one thread each keep both cores busy through
# the tests' serial parts (process starts, imports, file I/O), where one process of two threads
# leaves one idle.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The files that take longest under `make test` (seconds summed over their tests with
# --durations=0: 277, 187, 153, 115, 100; every other file under 45). They start first, so that
# the two workers end together (xdist hands out whole files in collection order, and
# `--no-loadscope-reorder` keeps this one); the rest follow in name order.
LONGEST_FILES = ("test_robustness.py", "test_batch_ray.py", "test_api.py", "test_codec.py", "test_cli.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: a file's tests keep their order
    # tests marked cuda (`python -m pytest -m cuda` runs them alone on a GPU machine) skip without
    # it, but for those marked cuda(required=False), whose CPU half runs everywhere
    needs_cuda = [item for item in items if item.get_closest_marker("cuda")
                  and item.get_closest_marker("cuda").kwargs.get("required", True)]
    if needs_cuda and not __import__("torch").cuda.is_available():
        for item in needs_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "parrots.png"
KODAK = ROOT.parent / "shared" / "data" / "kodak"


@pytest.fixture(scope="package")
def sample_image() -> Image.Image:
    with Image.open(SAMPLE) as image:
        return image.convert("RGB")


@pytest.fixture(scope="package")
def small_image(sample_image: Image.Image) -> Image.Image:
    """A 96x80 crop: big enough to be a real photo, small enough to code in milliseconds."""
    return sample_image.crop((150, 60, 246, 140))


@functools.cache  # littleCMS stamps the time of making into the header: make it once
def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_primaries_profile() -> bytes:
    """An RGB profile that is not sRGB: littleCMS's sRGB with its red and blue colorants swapped
    (a file must keep it, as it would Adobe RGB's)."""
    import struct

    profile = bytearray(srgb_profile())
    count = struct.unpack(">I", profile[128:132])[0]
    tags = {bytes(profile[132 + 12 * i : 136 + 12 * i]): struct.unpack(">II", profile[136 + 12 * i : 144 + 12 * i])
            for i in range(count)}
    (red, red_size), (blue, blue_size) = tags[b"rXYZ"], tags[b"bXYZ"]
    assert red_size == blue_size
    profile[red : red + red_size], profile[blue : blue + blue_size] = (profile[blue : blue + blue_size],
                                                                      profile[red : red + red_size])
    return bytes(profile)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / max(np.mean((x - y) ** 2), 1e-12)))


@pytest.fixture(scope="package")
def diffusion_weights(tmp_path_factory, sample_image: Image.Image) -> Path:
    """A tiny U-Net trained for a few steps on the shipped base: real weights, real format."""
    from diraccodec.training.diffusion import DiffusionTrainingOptions, export_diffusion_checkpoint, train_diffusion

    folder = tmp_path_factory.mktemp("diffusion")
    photos = folder / "photos"
    photos.mkdir()
    sample_image.save(photos / "a.png")
    options = DiffusionTrainingOptions(
        data=(photos,), checkpoint=folder / "ck.safetensors", steps=3, batch_size=2, patch_size=64,
        widths=(8, 16, 16), log_every=1, checkpoint_minutes=1e9, threads=1,
    )
    train_diffusion(options)
    export_diffusion_checkpoint(options.checkpoint, folder / "diffusion.safetensors")
    return folder / "diffusion.safetensors"


def random_unet():
    """A small U-Net with random, non-zero layers, so sampling really changes pixels."""
    import torch

    from diraccodec.restoration.unet import ResidualUNet, ResidualUNetConfig

    torch.manual_seed(3)
    model = ResidualUNet(ResidualUNetConfig(widths=(8, 16, 16))).eval()
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.1)
    return model


@pytest.fixture(scope="package")
def random_diffusion_weights(tmp_path_factory) -> Path:
    """Diffusion weights for the shipped base that visibly change the image (untrained, random)."""
    from diraccodec.diffusion.sampler import SamplerSettings
    from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, export_diffusion_weights, load_base_weights

    path = tmp_path_factory.mktemp("random-diffusion") / "diffusion.safetensors"
    base_id = load_base_weights(DEFAULT_BASE_WEIGHTS.resolve()).weights_id
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, path, {"purpose": "test"})
    return path
