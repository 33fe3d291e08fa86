"""Shared fixtures and helpers: real images (the shipped sample and crops of it), the shipped
weights, a camera's JPEG, small photos to train on, the command run as a user runs it."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from diraccodec.codec.base_codec import BaseCodec
    from diraccodec.transforms.search import SearchProblem

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
DATA = ROOT / "tests" / "data"  # small files the tests read: .drc files of earlier format versions


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
    profile = bytearray(srgb_profile())
    count = struct.unpack(">I", profile[128:132])[0]
    tags = {bytes(profile[132 + 12 * i : 136 + 12 * i]): struct.unpack(">II", profile[136 + 12 * i : 144 + 12 * i])
            for i in range(count)}
    (red, red_size), (blue, blue_size) = tags[b"rXYZ"], tags[b"bXYZ"]
    assert red_size == blue_size
    profile[red : red + red_size], profile[blue : blue + blue_size] = (profile[blue : blue + blue_size],
                                                                      profile[red : red + red_size])
    return bytes(profile)


D50 = (0.9642, 1.0, 0.8249)  # the profile connection space's white


def xyz_tag(values: tuple[float, float, float]) -> bytes:
    """An ICC XYZType: three s15Fixed16Numbers."""
    return b"XYZ " + bytes(4) + b"".join(struct.pack(">i", round(value * 65536)) for value in values)


def display_profile(colour_space: bytes, description: str, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A version 2 ICC display profile of `colour_space` (b"RGB ", b"GRAY"): header, tag table,
    then the description, the white point and `tags`."""
    text = description.encode() + b"\0"
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
            (b"wtpt", xyz_tag(D50)), *tags]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    size = 128 + 4 + len(table) + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + colour_space + b"XYZ "
              + bytes(12) + b"acsp" + bytes(28) + xyz_tag(D50)[8:] + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def grey_profile(gamma: float) -> bytes:
    """A profile of grey pixels with a plain gamma curve (a display's kind)."""
    return display_profile(b"GRAY", f"grey, gamma {gamma}",
                           [(b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2))])


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


def captured_search(codec: BaseCodec, rgb: np.ndarray, level: float,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[SearchProblem, np.ndarray]:
    """The SearchProblem of the codec's search of `rgb` at `level`, and the rounded symbols it
    starts from, as the encoder makes them (the search itself is not run)."""
    from diraccodec.codec import base_codec
    from diraccodec.transforms.search import SearchSettings

    seen: list[tuple] = []

    def record(problem, symbols: np.ndarray, passes: int, progress=None) -> np.ndarray:
        seen.append((problem, symbols.copy()))
        return symbols

    with monkeypatch.context() as patch:
        patch.setattr(base_codec, "search_symbols", record)
        codec.analyse(rgb, level, SearchSettings(passes=1))
    (captured,) = seen
    return captured


def saved_as(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    """What Image.save writes, in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def load_script(name: str) -> ModuleType:
    """scripts/`name`.py as a module: the scripts are commands, not a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dirac(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a new process, as a user would; env: variables to add."""
    command = [sys.executable, "-m", "diraccodec.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env} if env else None)


def make_photos(folder: Path, names: list[str], size: tuple[int, int] = (112, 96)) -> Path:
    """Smooth random photos: enough structure for a codec to learn from in a few steps."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(len(names))
    for name in names:
        coarse = generator.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(folder / f"{name}.png")
    return folder


# A camera's JPEG: EXIF with a thumbnail, and XMP
MAKE, ORIENTATION, DATE_ORIGINAL = 0x010F, 0x0112, 0x9003
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
       b'tiff:Orientation="6" dc:format="image/jpeg"/></rdf:RDF></x:xmpmeta>')


def exif_with_thumbnail(orientation: int) -> bytes:
    """A camera's kind of EXIF, written out by hand (Pillow writes no thumbnail): IFD0 with the
    make, the orientation and the Exif IFD (the time taken), then IFD1 pointing at a JPEG thumbnail."""
    thumbnail = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(thumbnail, "JPEG")
    entries0 = [(MAKE, 2, 4, b"Cam\x00"), (ORIENTATION, 3, 1, struct.pack("<HH", orientation, 0))]
    ifd0 = 8
    exif_ifd = ifd0 + 2 + 12 * (len(entries0) + 1) + 4
    date = b"2026:01:02 03:04:05\x00"
    date_at = exif_ifd + 2 + 12 + 4
    ifd1 = date_at + len(date)
    thumbnail_at = ifd1 + 2 + 2 * 12 + 4
    entries0.append((0x8769, 4, 1, struct.pack("<I", exif_ifd)))
    out = b"II*\x00" + struct.pack("<I", ifd0)
    out += struct.pack("<H", len(entries0)) + b"".join(struct.pack("<HHI", tag, kind, count) + value
                                                       for tag, kind, count, value in entries0)
    out += struct.pack("<I", ifd1)
    out += struct.pack("<H", 1) + struct.pack("<HHII", DATE_ORIGINAL, 2, len(date), date_at) + struct.pack("<I", 0)
    out += date
    out += struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumbnail_at)
    out += struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail.getvalue())) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + out + thumbnail.getvalue()


def camera_jpeg(image: Image.Image, orientation: int = 6) -> bytes:
    return saved_as(image, "JPEG", quality=95, exif=exif_with_thumbnail(orientation), xmp=XMP)


def parsed(exif: bytes) -> Image.Exif:
    tags = Image.Exif()
    tags.load(exif)
    return tags
