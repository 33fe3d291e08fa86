"""Training photos on disk: which ones train, which are held out, and packed shards of them.

A fixed share of the photos (HELD_OUT_SHARE) is held out for evaluation and never trained on.
Membership is decided by a hash of each photo's name alone, so adding, moving or re-encoding
photos never moves one across the split; every training path lists its photos through
`training_images`.

The photos are JPEG: cropping them at full size teaches the codec their 8x8 blocking. A
random downscale by 1.5x-2x before the crop removes it (diraccodec.training.crops).

A shard is such a folder downscaled once, ahead of time, and re-encoded small enough to
travel to a GPU machine (whose working tree is limited to 64 MiB). Its `shard.json` records
the downscale already applied, so the sampler only applies what remains; it holds training
photos only, under their own names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from diraccodec.errors import DiracError
from diraccodec.image.files import write_atomic
from diraccodec.image.planes import PILLOW_READ_ERRORS, images_in

SHARD_MANIFEST = "shard.json"
DOWNSCALE_RANGE = (1.5, 2.0)
HELD_OUT_SHARE = 0.05


def list_images(folders: Iterable[Path]) -> list[Path]:
    """Every photo under the folders, held out or not, in a stable order."""
    paths: list[Path] = []
    for folder in folders:
        paths.extend(images_in(Path(folder), recursive=True))
    return paths


def is_held_out(path: Path) -> bool:
    """Whether a photo is in the held-out split: a hash of its name without the suffix, so the
    choice survives re-encoding (a shard's JPEG keeps its source's name) and added photos."""
    digest = hashlib.sha256(Path(path).stem.encode()).digest()
    return int.from_bytes(digest[:8], "big") < HELD_OUT_SHARE * 2**64


def training_images(folders: Iterable[Path]) -> list[Path]:
    """The photos training may use: every one not held out."""
    folders = tuple(folders)
    for folder in folders:
        manifest = _shard_manifest(folder)
        if manifest is not None and manifest.get("held_out") != "excluded":
            raise DiracError(f"{folder} was packed before the held-out split existed and may hold held-out photos: "
                             "pack it again with `dirac train pack`")
    return [path for path in list_images(folders) if not is_held_out(path)]


def held_out_images(folders: Iterable[Path]) -> list[Path]:
    """The photos no training sees, for evaluation (about HELD_OUT_SHARE of each folder)."""
    return [path for path in list_images(folders) if is_held_out(path)]


def _shard_manifest(folder: Path) -> dict[str, Any] | None:
    """A shard's manifest (None for an ordinary folder); one that is not `pack`'s is an error."""
    path = Path(folder) / SHARD_MANIFEST
    try:
        manifest = json.loads(path.read_text())
        prescale = float(manifest["prescale"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DiracError(f"{path} is not a shard's manifest ({error!r}): pack the shard again with "
                         f"`dirac train pack`") from None
    if not prescale >= 1:
        raise DiracError(f"{path} gives a downscale of {prescale:g}, below 1: pack the shard again")
    return dict(manifest)


@contextlib.contextmanager
def _named_if_unreadable(path: Path) -> Iterator[None]:
    """Pillow's errors on a photo it cannot read (damaged, cut short, not an image) as a
    DiracError that names it: one bad file among thousands is a line, not a traceback."""
    try:
        yield
    except PILLOW_READ_ERRORS as error:  # UnidentifiedImageError is an OSError
        raise DiracError(f"cannot read the training photo {path}: {error}; remove it or replace it") from None


def photo_size(path: Path) -> tuple[int, int]:
    """A training photo's size, from its header."""
    with _named_if_unreadable(path), Image.open(path) as image:
        return image.size


def read_photo(path: Path) -> Image.Image:
    """A training photo's pixels, as RGB."""
    with _named_if_unreadable(path), Image.open(path) as image:
        return image.convert("RGB")


def shard_prescale(folder: Path) -> float:
    """The downscale a packed shard already applied (1 for an ordinary folder)."""
    manifest = _shard_manifest(folder)
    return 1.0 if manifest is None else float(manifest["prescale"])


def pack_shard(
    folders: Iterable[Path], output: Path, prescale: float = 2.0, quality: int = 80, min_side: int = 128
) -> tuple[int, int]:
    """Downscale every training photo by `prescale` and store it as 4:4:4 JPEG; returns (images, bytes).

    The downscale removes the source's JPEG blocking before the re-encoding at high quality.
    Held-out photos and those whose short side would fall under `min_side` are left out. Each
    keeps its name (in a subfolder per source folder), so the held-out split reads the same.
    The shard is made beside `output` (a symbolic link's target) and moved into it once whole:
    an earlier shard there is replaced (none of its photos kept), a failed pack leaves it as it
    was, and a folder holding anything a pack does not write is refused.
    """
    folders = tuple(folders)  # read twice: for the photos and for the manifest
    output = Path(output).resolve()
    _check_shard_place(output, folders)
    packing, replaced = (output.with_name(f".{output.name}.{os.getpid()}.{what}") for what in ("packing", "replaced"))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (packing, replaced):  # of a run of this process id that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        packing.mkdir()
    except OSError as error:
        raise DiracError(f"cannot pack beside {output}: {error.strerror or error}") from None
    try:
        count, total = _pack_photos(folders, packing, prescale, quality, min_side)
        manifest = {"prescale": prescale, "quality": quality, "images": count, "held_out": "excluded",
                    "sources": [str(f) for f in folders]}
        write_atomic(packing / SHARD_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        try:
            _swap_into(output, packing, replaced)
        except OSError as error:
            raise DiracError(f"cannot put the shard into {output}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(packing, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
    return count, total


def _swap_into(output: Path, packing: Path, replaced: Path) -> None:
    """Move the packed shard into `output`, an earlier one's entries aside first; on a failure
    midway every entry goes back. The folder itself stays (its mode, a link to it, a shell
    inside it), and the manifests move first out and last in: a folder with one holds a whole
    shard."""
    output.mkdir(exist_ok=True)
    replaced.mkdir()
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in sorted(output.iterdir(), key=lambda entry: entry.name != SHARD_MANIFEST):
            entry.rename(replaced / entry.name)
            moved_out.append(entry.name)
        for entry in sorted(packing.iterdir(), key=lambda entry: entry.name == SHARD_MANIFEST):
            entry.rename(output / entry.name)
            moved_in.append(entry.name)
    except BaseException:
        for name in reversed(moved_in):
            (output / name).rename(packing / name)
        for name in reversed(moved_out):
            (replaced / name).rename(output / name)
        raise


_PACKED_FOLDER = re.compile(r"\d{2}-.+")  # a source folder's photos, by its position


def _check_shard_place(output: Path, folders: tuple[Path, ...]) -> None:
    """A new folder, an empty one, or an earlier shard holding only what a pack writes (its
    manifest and its folders of JPEG photos), which is replaced; nothing a pack reads."""
    if output.exists() and not output.is_dir():
        raise DiracError(f"{output} is a file: name a folder for the shard")
    if os.path.ismount(output):  # "/" too: the shard, made beside it on another file system, cannot move in
        raise DiracError(f"{output} is a mount point: pack into a folder inside it")
    if any(Path(folder).resolve().is_relative_to(output) for folder in folders):
        raise DiracError(f"{output} holds photos this pack reads: pack into another folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    packed = (output / SHARD_MANIFEST).is_file() and all(
        entry.name == SHARD_MANIFEST or (entry.is_dir() and _PACKED_FOLDER.fullmatch(entry.name) and all(
            path.is_dir() or path.suffix == ".jpg" for path in entry.rglob("*")))
        for entry in output.iterdir())
    if not packed:
        raise DiracError(f"{output} holds files a pack does not write: pack into a new folder (or an earlier shard, "
                         f"which is replaced)")


def _pack_photos(folders: tuple[Path, ...], output: Path, prescale: float, quality: int,
                 min_side: int) -> tuple[int, int]:
    count = total = 0
    written: set[Path] = set()
    for position, folder in enumerate(folders):
        for path in training_images([folder]):
            target = output / f"{position:02d}-{Path(folder).name}" / path.relative_to(folder).with_suffix(".jpg")
            if target in written:  # the same name with two suffixes: one photo is enough
                continue
            image = read_photo(path)
            size = (round(image.width / prescale), round(image.height / prescale))
            if min(size) < min_side:
                continue
            small = image.resize(size, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            small.save(buffer, "JPEG", quality=quality, subsampling=0)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(buffer.getvalue())
            written.add(target)
            count, total = count + 1, total + buffer.tell()
    if count == 0:  # a shard of nothing would only fail later, on the GPU machine
        raise DiracError(f"no training photo in {', '.join(map(str, folders))} is at least {min_side} pixels a "
                         f"side after the {prescale:g}x downscale: nothing to pack")
    return count, total
