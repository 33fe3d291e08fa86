"""The `dirac` command as a user runs it: outputs, one-line errors with status 2, batch."""

from __future__ import annotations

import io
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, JpegImagePlugin

import diraccodec
from diraccodec.cli import main
from diraccodec.errors import DiracError
from tests.conftest import ROOT, SAMPLE, camera_jpeg, dirac, psnr, swapped_primaries_profile


@pytest.fixture
def small_png(tmp_path: Path, small_image: Image.Image) -> Path:
    path = tmp_path / "small.png"
    small_image.save(path)
    return path


@pytest.fixture
def small_drc(tmp_path: Path, small_png: Path) -> Path:
    path = tmp_path / "small.drc"
    result = CliRunner().invoke(main, ["encode", str(small_png), "-q", "3", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_encode_checks_its_file_against_the_pixel_limit_given_not_the_default(tmp_path: Path, small_png: Path,
                                                                             small_image: Image.Image, monkeypatch):
    from diraccodec import api

    monkeypatch.setattr(api.inspect, "__defaults__", (small_image.width * small_image.height - 1,))
    path = tmp_path / "small.drc"
    result = CliRunner().invoke(main, ["encode", str(small_png), "-q", "1", "--effort", "1", "-o", str(path),
                                       "--max-pixels", "1000000"])
    assert result.exit_code == 0, result.output
    assert api.inspect(path.read_bytes(), 10**6).header.width == small_image.width


def test_threads_sets_the_networks_thread_count_for_the_command_alone(tmp_path: Path, small_drc: Path, monkeypatch):
    import torch

    from diraccodec import api

    seen, real_decode, before = [], api.decode, torch.get_num_threads()
    asked = before + 2

    def decode(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(api, "decode", decode)
    for threads in (["--threads", str(asked)], []):
        result = CliRunner().invoke(main, ["decode", str(small_drc), "-o", str(tmp_path / "out.png"), *threads])
        assert result.exit_code == 0, result.output
    assert seen == [asked, before] and torch.get_num_threads() == before
    refused = CliRunner().invoke(main, ["encode", str(small_drc), "-q", "1", "-o", str(tmp_path / "x.drc"),
                                        "--threads", "0"])
    assert refused.exit_code == 2 and "--threads" in refused.output


def test_decode_and_batch_take_the_restoration_switch_and_diffusion_weights(tmp_path: Path, small_drc: Path,
                                                                           monkeypatch):
    from diraccodec.modelfiles import DIFFUSION_ENV, default_diffusion_path

    data, shipped = small_drc.read_bytes(), str(default_diffusion_path())
    expected = {name: np.asarray(diraccodec.decode(data, steps, restore=restore))
                for name, steps, restore in (("bare", 0, False), ("two steps", 2, True))}
    monkeypatch.setenv(DIFFUSION_ENV, str(tmp_path / "none here"))  # so only the option can find the weights
    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    encoded.mkdir()
    (encoded / "small.drc").write_bytes(data)
    for name, options in (("bare", ["--no-restore"]), ("two steps", ["--steps", "2", "--diffusion-weights", shipped])):
        one = CliRunner().invoke(main, ["decode", str(small_drc), "-o", str(tmp_path / "one.png"), *options])
        every = CliRunner().invoke(main, ["batch", str(encoded), str(decoded), "-j", "1", "--overwrite", *options])
        assert one.exit_code == 0 and every.exit_code == 0, one.output + every.output
        for path in (tmp_path / "one.png", decoded / "small.png"):
            with Image.open(path) as image:
                assert np.array_equal(np.asarray(image), expected[name]), (name, path)
    for command in (["decode", str(small_drc), "-o", str(tmp_path / "x.png")], ["batch", str(encoded), str(decoded)]):
        for steps in (["--steps", "2"], []):  # with none, the file's recommendation: unread at 0, still refused
            missing = CliRunner().invoke(main, [*command, *steps, "--diffusion-weights", str(tmp_path / "no")])
            assert missing.exit_code == 2, missing.output
            assert missing.output == f"dirac: error: cannot read weights {tmp_path / 'no'}: No such file or directory\n"
        image = tmp_path / "one.png"
        image_given = CliRunner().invoke(main, [*command, "--steps", "2", "--diffusion-weights", str(image)])
        assert image_given.output == f"dirac: error: {image} is not a weights file (safetensors)\n"
    # none installed ($DIRAC_DIFFUSION_WEIGHTS names no file): a batch that decodes with steps fails once, at once
    none_installed = CliRunner().invoke(main, ["batch", str(encoded), str(tmp_path / "later"), "--steps", "2"])
    assert none_installed.exit_code == 2, none_installed.output
    assert none_installed.stderr.startswith("dirac: error: diffusion decoding (steps > 0) is not available")
    assert not (tmp_path / "later").exists()


@pytest.mark.slow
def test_an_encoded_file_named_as_an_image_is_written_with_a_warning(tmp_path: Path, small_png: Path):
    """A viewer would call out.png broken: the name is the user's to keep, the warning says why."""
    for name, warned in (("out.png", True), ("out.drc", False), ("out.PNG.drc", False)):
        result = dirac("encode", small_png, "-q", "2", "-e", "1", "-o", tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert diraccodec.inspect((tmp_path / name).read_bytes()).header.quality == 2
        expected = f"dirac: warning: {tmp_path / name} is named as a PNG image, but holds a .drc file"
        assert (expected in result.stderr) == warned, result.stderr


def test_encode_decode_info(tmp_path: Path):
    # a name that reads as rich markup is printed as it is
    drc_path, png_path = tmp_path / "a[bold].drc", tmp_path / "a.png"
    encoded = dirac("encode", SAMPLE, "-q", "3", "-o", drc_path)
    assert encoded.returncode == 0 and encoded.stderr.startswith(f"{drc_path}: ")
    assert dirac("decode", drc_path, "-o", png_path).returncode == 0
    with Image.open(png_path) as image:
        assert image.size == (384, 256) and image.mode == "RGB"
    info = dirac("info", drc_path)
    assert info.returncode == 0
    bpp = 8 * drc_path.stat().st_size / (384 * 256)
    assert f"{bpp:.4f}" in info.stdout
    assert "384x256" in info.stdout and re.search(r"^ *level +3 *$", info.stdout, re.M)
    assert "sRGB (no profile stored)" in info.stdout
    assert "latent stream" in info.stdout and "hyper-latents" in info.stdout


def test_info_names_a_stored_profile(tmp_path: Path, small_image: Image.Image):
    source, drc_path = tmp_path / "wide.png", tmp_path / "wide.drc"
    small_image.save(source, icc_profile=swapped_primaries_profile())
    assert CliRunner().invoke(main, ["encode", str(source), "-q", "2", "-o", str(drc_path)]).exit_code == 0
    info = CliRunner().invoke(main, ["info", str(drc_path)])
    assert info.exit_code == 0 and f"({len(swapped_primaries_profile())} bytes)" in info.output
    assert "sRGB built-in" in info.output  # the profile's own description


def test_decode_with_steps_writes_the_apis_pixels(tmp_path: Path, small_image: Image.Image):
    import diraccodec

    drc_path, png_path = tmp_path / "a.drc", tmp_path / "a.png"
    drc_path.write_bytes(diraccodec.encode(small_image, 2, effort=1))
    result = CliRunner().invoke(main, ["decode", str(drc_path), "--steps", "2", "-o", str(png_path)])
    assert result.exit_code == 0, result.output  # through the progress bar's callback
    with Image.open(png_path) as image:
        assert image.tobytes() == diraccodec.decode(drc_path.read_bytes(), 2).tobytes()


def test_strip_leaves_exif_and_xmp_out_and_info_gives_their_sizes(tmp_path: Path, small_image: Image.Image):
    source = tmp_path / "photo.jpg"
    source.write_bytes(camera_jpeg(small_image))
    for flags, row in (([], r"metadata\s+EXIF \(\d+ bytes\), XMP"), (["--strip"], r"metadata\s+none")):
        drc_path = tmp_path / f"photo{len(flags)}.drc"
        result = CliRunner().invoke(main, ["encode", str(source), "-q", "1", "-e", "1", "-o", str(drc_path), *flags])
        assert result.exit_code == 0, result.output
        info = CliRunner().invoke(main, ["info", str(drc_path)])
        assert info.exit_code == 0 and re.search(row, info.output), info.output


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dirac: error:")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_error_paths_print_one_line_and_exit_2(tmp_path: Path, small_drc: Path, small_png: Path):
    data = small_drc.read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    no_diffusion = {"DIRAC_DIFFUSION_WEIGHTS": str(tmp_path / "absent.safetensors")}
    files = {
        "notdrc.drc": (small_png.read_bytes(), "not a .drc file"),
        "truncated.drc": (data[: len(data) // 2], "truncated"),
        "corrupt.drc": (data[:40] + bytes([data[40] ^ 1]) + data[41:], "checksum"),
        "version.drc": (data[:4] + b"\x09" + data[5:], "version 9"),
    }
    cases = []  # (arguments, environment, what the error names, an output that must not appear)
    for name, (content, fragment) in files.items():
        (tmp_path / name).write_bytes(content)
        cases.append((("decode", tmp_path / name, "-o", tmp_path / f"{name}.png"), None, fragment,
                      tmp_path / f"{name}.png"))
    cases += [
        (("decode", tmp_path / "missing.drc", "-o", tmp_path / "x.png"), None, "no such file", None),
        (("encode", broken, "-q", "3", "-o", tmp_path / "b.drc"), None, "cannot read image", tmp_path / "b.drc"),
        (("encode", small_png, "-q", "9", "-o", tmp_path / "q.drc"), None, "quality", tmp_path / "q.drc"),
        (("decode", small_drc, "--steps", "20", "-o", tmp_path / "s.png"), no_diffusion, "not available", None),
        (("decode", small_drc, "-o", tmp_path / "s.xyz"), None, "unknown image suffix", None),
    ]
    # each case is a new process that spends its time starting: two at a time on two cores
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: dirac(*case[0], env=case[1]), cases))
    for (_, _, fragment, output), result in zip(cases, results, strict=True):
        assert_one_line_error(result, fragment)
        assert output is None or not output.exists()


@pytest.mark.slow
def test_standard_input_and_output_stand_in_for_files(small_png: Path, small_drc: Path):
    image_data = small_png.read_bytes()
    runner = CliRunner()
    encoded = runner.invoke(main, ["encode", "-", "-q", "1", "-e", "1", "-o", "-"], input=image_data)
    assert encoded.exit_code == 0, encoded.output
    assert encoded.stdout_bytes == diraccodec.encode(image_data, 1, effort=1)
    assert encoded.stderr.startswith("standard output: ")
    decoded = runner.invoke(main, ["decode", "-", "-o", "-"], input=encoded.stdout_bytes)
    assert decoded.exit_code == 0, decoded.output
    with Image.open(io.BytesIO(decoded.stdout_bytes)) as image:
        assert image.format == "PNG" and image.tobytes() == diraccodec.decode(encoded.stdout_bytes).tobytes()
    info = runner.invoke(main, ["info", "-"], input=encoded.stdout_bytes)
    assert info.exit_code == 0 and "standard input" in info.stdout
    # binary bytes are not written to a terminal, nor read from one: refused before any work
    terminal, device = pty.openpty()
    try:
        for arguments in (("decode", small_drc, "-o", "-"), ("info", "-")):
            refused = subprocess.run([sys.executable, "-m", "diraccodec.cli", *map(str, arguments)], stdin=device,
                                     stdout=device, stderr=subprocess.PIPE, text=True, timeout=120)
            assert_one_line_error(refused, "is a terminal")
    finally:
        os.close(terminal)
        os.close(device)



def test_a_file_named_dash_is_read_and_written_as_dot_slash_dash(tmp_path: Path, small_png: Path, monkeypatch):
    """Only "-" as typed is standard input or output: "./-" is the file named - (a Path folds
    the two together; the file was ignored, and standard input encoded in its place)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(small_png, tmp_path / "-")
    runner = CliRunner()
    encoded = runner.invoke(main, ["encode", "./-", "-q", "1", "-e", "1", "-o", "out.drc"], input=b"")
    assert encoded.exit_code == 0, encoded.output
    assert (tmp_path / "out.drc").read_bytes() == diraccodec.encode(small_png.read_bytes(), 1, effort=1)
    (tmp_path / "-").unlink()
    written = runner.invoke(main, ["encode", str(small_png), "-q", "1", "-e", "1", "-o", "./-"])
    assert written.exit_code == 0 and written.stdout_bytes == b"", written.output
    assert (tmp_path / "-").read_bytes() == (tmp_path / "out.drc").read_bytes()
    info = runner.invoke(main, ["info", "./-"], input=b"")
    assert info.exit_code == 0 and "standard input" not in info.stdout, info.output


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_reader_that_leaves_before_the_end_of_standard_output_is_an_error(tmp_path: Path, sample_image,
                                                                            unbuffered: bool):
    """`dirac decode x.drc -o - | head -c 1000`: it ended with status 1 and no word, or unbuffered
    (python -u), dropped the rest of the image and said it wrote it (status 0). The image is
    768 KB, more than a pipe holds."""
    drc = tmp_path / "big.drc"
    drc.write_bytes(diraccodec.encode(sample_image.resize((512, 512)), 1, effort=1))
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    if unbuffered:
        environment["PYTHONUNBUFFERED"] = "1"
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "diraccodec.cli", "decode", str(drc), "-o", "-",
                                    "--png-compress", "0"], stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
                                   env=environment)
    assert process.stdout is not None
    process.stdout.read(1000)
    process.stdout.close()
    assert process.wait(timeout=120) == 2
    assert errors.read_text().endswith("dirac: error: cannot write standard output: its reader closed it before "
                                       "the end\n"), errors.read_text()


def test_an_output_that_is_a_folder_is_refused_before_the_work(tmp_path: Path, small_png: Path, small_drc: Path,
                                                               monkeypatch):
    from diraccodec import api

    def no_work(*arguments, **options):
        raise AssertionError("the work ran")

    monkeypatch.setattr(api, "encode", no_work)
    monkeypatch.setattr(api, "decode", no_work)
    commands = {tmp_path / "out": ["encode", str(small_png), "-q", "3"],
                tmp_path / "out.png": ["decode", str(small_drc)]}  # a folder with an image's suffix too
    for folder, arguments in commands.items():
        folder.mkdir()
        result = CliRunner().invoke(main, [*arguments, "-o", str(folder)])
        assert result.exit_code == 2, result.output
        assert f"dirac: error: cannot write {folder}: it is a folder; name a file in it" in result.stderr
        assert list(folder.iterdir()) == []


def test_an_output_that_cannot_be_written_where_it_is_fails_before_the_work(tmp_path: Path, small_png: Path,
                                                                            small_drc: Path, monkeypatch):
    """A file where a folder must be, for encode, decode and batch: one line before any model
    loads, and nothing left behind (the trial file goes again)."""
    from diraccodec import api

    def no_work(*arguments, **options):
        raise AssertionError("the work ran")

    for name in ("encode", "decode", "get_codec"):
        monkeypatch.setattr(api, name, no_work)
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file")
    before = sorted(tmp_path.rglob("*"))
    commands = {blocker / "out.drc": ["encode", str(small_png), "-q", "3", "-o"],
                blocker / "deeper" / "out.png": ["decode", str(small_drc), "-o"],
                blocker / "encoded": ["batch", str(small_png.parent)]}
    for output, arguments in commands.items():
        result = CliRunner().invoke(main, [*arguments, str(output)])
        assert result.exit_code == 2, result.output
        assert result.stderr == f"dirac: error: cannot write {output}: {blocker} is not a folder\n"
    assert sorted(tmp_path.rglob("*")) == before
    assert blocker.read_bytes() == b"a file"


def test_the_write_check_names_the_system_s_reason_and_makes_no_folders(tmp_path: Path, monkeypatch):
    from diraccodec.errors import OutputWriteError
    from diraccodec.image import files

    nested = tmp_path / "a" / "b" / "out.png"
    files.check_writable(nested)  # the write would make a/b: the check leaves that to it
    files.check_writable_folder(tmp_path / "c" / "d")
    monkeypatch.chdir(tmp_path)
    files.check_writable(Path("out.drc"))  # names with no folder, and the current folder itself
    files.check_writable_folder(Path("."))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")  # the write could not make a folder there
    with pytest.raises(OutputWriteError, match=f"^cannot write {tmp_path}/gone/x.drc: {tmp_path}/gone is not a"):
        files.check_writable(tmp_path / "gone" / "x.drc")

    def refused(path: Path, made: list[Path]):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "_created_beside", refused)
    with pytest.raises(OutputWriteError, match=f"^cannot write {nested}: Permission denied$"):
        files.check_writable(nested)


def test_batch_in_a_log_gives_a_line_per_file(tmp_path: Path, small_image: Image.Image):
    source, encoded = tmp_path / "photos", tmp_path / "encoded"
    source.mkdir()
    for name in ("a[1].png", "b.png"):  # a name rich would read as markup is printed as it is
        small_image.save(source / name)
    (source / "c.png").write_bytes(b"not an image")
    for status in ("converted", "skipped"):  # the second run finds the outputs there
        result = CliRunner().invoke(main, ["batch", str(source), str(encoded), "-j", "1", "-e", "1"])
        assert result.exit_code == 1, result.output
        lines = result.stderr.splitlines()
        assert lines[:3] == [f"[1/3] {status} {source / 'a[1].png'}", f"[2/3] {status} {source / 'b.png'}",
                             f"[3/3] failed {source / 'c.png'}: cannot read image: {source / 'c.png'} is not an "
                             f"image format Pillow knows"]
        assert not any(line.startswith("converting") for line in lines)  # no bar in a log
        rows = {cells[0]: cells[1:] for line in lines
                if len(cells := [cell.strip() for cell in line.strip("│").split("│")]) == 5}
        assert rows["failed"][1:] == ["-", "-", "-"], rows  # nothing read or written: no sizes (0.00 MB was shown)
        assert (rows["skipped"][1:] == ["-", "-", "-"]) if status == "skipped" else rows["converted"][3] != "-"


def test_png_compress_sets_the_zlib_level_of_png_outputs(tmp_path: Path, small_drc: Path):
    encoded = tmp_path / "encoded"
    encoded.mkdir()
    (encoded / "small.drc").write_bytes(small_drc.read_bytes())
    expected = np.asarray(diraccodec.decode(small_drc.read_bytes()))
    written = {}
    for level in ("0", "9"):
        one, every = tmp_path / f"{level}.png", tmp_path / f"batch-{level}"
        decoded = CliRunner().invoke(main, ["decode", str(small_drc), "-o", str(one), "--png-compress", level])
        batched = CliRunner().invoke(main, ["batch", str(encoded), str(every), "-j", "1", "--png-compress", level])
        assert decoded.exit_code == 0 and batched.exit_code == 0, decoded.output + batched.output
        assert (every / "small.png").read_bytes() == one.read_bytes()  # batch passes the level on
        with Image.open(one) as image:
            assert np.array_equal(np.asarray(image), expected)
        written[level] = one.stat().st_size
    assert written["0"] > expected.size > 2 * written["9"]  # level 0 stores the pixels as they are
    refused = CliRunner().invoke(main, ["decode", str(small_drc), "-o", str(tmp_path / "x.png"),
                                        "--png-compress", "10"])
    assert refused.exit_code == 2 and "--png-compress" in refused.stderr


def test_decode_writes_the_format_asked_for_to_standard_output(tmp_path: Path, small_drc: Path):
    expected = np.asarray(diraccodec.decode(small_drc.read_bytes()), dtype=np.int16)
    for suffix, image_format in ((".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP")):
        written = CliRunner().invoke(main, ["decode", str(small_drc), "-o", "-", "--format", suffix])
        assert written.exit_code == 0, written.output
        with Image.open(io.BytesIO(written.stdout_bytes)) as image:
            assert image.format == image_format
            assert np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - expected).max() <= (4 if suffix == ".jpg"
                                                                                                 else 0)
    same = CliRunner().invoke(main, ["decode", str(small_drc), "-o", str(tmp_path / "a.jpeg"), "--format", ".jpg"])
    assert same.exit_code == 0 and (tmp_path / "a.jpeg").read_bytes()[:2] == b"\xff\xd8"
    refused = CliRunner().invoke(main, ["decode", str(small_drc), "-o", str(tmp_path / "a.png"), "--format", ".jpg"])
    assert refused.exit_code == 2
    assert refused.stderr == "dirac: error: --format .jpg disagrees with the output's suffix .png\n"
    assert not (tmp_path / "a.png").exists()


def test_info_gives_its_fields_as_json(small_drc: Path):
    import json

    result = CliRunner().invoke(main, ["info", str(small_drc), "--json"])
    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout)
    header = diraccodec.inspect(small_drc.read_bytes()).header
    assert (fields["width"], fields["height"], fields["level"], fields["format_version"]) == \
        (header.width, header.height, header.quality, header.version)
    assert fields["bytes"] == small_drc.stat().st_size and fields["weights"] == fields["read_by"] == \
        header.weights_id.hex()
    assert fields["sections"] == {"LATS": len(header.sections[b"LATS"])} and fields["recommended_steps"] is None
    stream = fields["latent_stream"]
    assert 0 < stream["hyper_latents"] < stream["latents"] and stream["hyper_latents"] + stream["latents"] <= \
        fields["sections"]["LATS"] + 8
    assert fields["metadata"] == {"exif": 0, "xmp": 0} and fields["restoration"].startswith("0 steps go through")


def test_info_shows_a_section_tag_escaped(small_drc: Path, tmp_path: Path):
    """A tag is four bytes the file chose: one that is a terminal's escape sequence is shown, not acted on."""
    import json

    from diraccodec.container import drc

    parsed = drc.unpack(small_drc.read_bytes())
    parsed.sections[b"\x1b[2J"] = b"x"  # clear the screen; optional (not upper case), so the file stays valid
    parsed.sections[b"\t\\ta"], parsed.sections[b"\\t\ta"] = b"yy", b"zzz"  # two tags, shown apart
    (tmp_path / "odd.drc").write_bytes(drc.pack(parsed))
    for options in ([], ["--json"]):
        result = dirac("info", tmp_path / "odd.drc", *options)
        assert result.returncode == 0 and "\x1b" not in result.stdout, result.stderr
        if options:
            assert json.loads(result.stdout)["sections"] == {"LATS": len(parsed.sections[b"LATS"]), "\\x1b[2J": 1,
                                                             "\\t\\\\ta": 2, "\\\\t\\ta": 3}
        else:
            assert "\\x1b[2J (1 B), \\t\\\\ta (2 B), \\\\t\\ta (3 B)" in result.stdout


def test_info_of_several_files_shows_each_and_names_the_one_it_cannot_read(small_drc: Path, small_png: Path):
    import json

    other = small_drc.with_name("other.drc")
    other.write_bytes(diraccodec.encode(Image.open(small_png), 1, effort=1))
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(small_drc), str(small_png), str(other), "--json"])
    lines = result.stdout.splitlines()
    assert result.exit_code == 1 and len(lines) == 2, result.output
    assert [json.loads(line)["file"] for line in lines] == [str(small_drc), str(other)]
    assert [json.loads(line)["level"] for line in lines] == [3, 1]
    assert result.stderr == f"dirac: error: {small_png}: not a .drc file (a PNG image: encode it first)\n"
    tables = runner.invoke(main, ["info", str(small_png), str(small_drc), str(small_png), str(other)])
    assert tables.exit_code == 1 and tables.stdout.count("format version") == 2, tables.output
    assert tables.stdout.startswith("file ") and tables.stdout.count("\n\n") == 1  # one blank line between
    assert all(line == line.rstrip() for line in tables.stdout.splitlines())  # no padding after the values
    assert tables.stdout.index(str(small_drc)) < tables.stdout.index("\n\n") < tables.stdout.index(str(other))
    twice = runner.invoke(main, ["info", "-", "-"], input=small_drc.read_bytes())
    assert twice.exit_code == 2 and twice.stderr == "dirac: error: standard input (-) can be read once\n"


def test_decode_names_the_mode_it_wrote_and_webp_keeps_every_value(tmp_path: Path, small_image: Image.Image):
    grey, translucent = tmp_path / "grey.drc", small_image.convert("LA")
    alpha = np.repeat(np.linspace(0, 255, small_image.height).astype(np.uint8)[:, None], small_image.width, axis=1)
    translucent.putalpha(Image.fromarray(alpha))  # from 0 (WebP drops an alpha opaque everywhere)
    grey.write_bytes(diraccodec.encode(translucent, 3, effort=1))
    opaque = tmp_path / "opaque.drc"
    opaque.write_bytes(diraccodec.encode(small_image.convert("LA"), 3, effort=1))
    result = CliRunner().invoke(main, ["decode", str(opaque), "-o", str(tmp_path / "opaque.webp")])
    assert result.stderr.endswith(" RGB\n") and Image.open(tmp_path / "opaque.webp").mode == "RGB"  # alpha left out
    for suffix, mode in ((".png", "LA"), (".webp", "RGBA")):  # WebP holds no grey
        output = tmp_path / f"grey{suffix}"
        result = CliRunner().invoke(main, ["decode", str(grey), "-o", str(output)])
        assert result.exit_code == 0 and result.stderr.endswith(f" {mode}\n"), result.output
        assert Image.open(output).mode == mode
    png, webp = (np.asarray(Image.open(tmp_path / f"grey{suffix}").convert("RGBA")) for suffix in (".png", ".webp"))
    assert (png[..., 3] == 0).any() and np.array_equal(png, webp)  # lossless: the colours under alpha 0 too


@pytest.mark.parametrize(("arguments", "line"), [
    # click's own wording, which differs between its versions
    (["encode", "a.png", "--bogus"], f"{click.NoSuchOption('--bogus').format_message()} (see: dirac encode --help)"),
    (["decode", "a.drc", "-o", "a.png", "--steps", "101"],
     "Invalid value for '--steps': 101 is not in the range 0<=x<=100. (see: dirac decode --help)"),
    (["encode", "a.png", "-q", "3", "-o"], "Option '-o' requires an argument. (see: dirac encode --help)"),
    (["train", "base", "--batch-size"], "Option '--batch-size' requires an argument. (see: dirac train base --help)"),
])
def test_a_mistake_the_parser_finds_points_to_the_command_s_help(arguments, line):
    result = CliRunner().invoke(main, arguments, prog_name="dirac")
    assert result.exit_code == 2 and result.stderr == f"dirac: error: {line}\n", result.output


def test_info_fails_on_a_file_whose_stream_a_decode_calls_corrupt(small_drc: Path, tmp_path: Path):
    from diraccodec.container import drc

    header = diraccodec.inspect(small_drc.read_bytes()).header
    beyond = tmp_path / "level9.drc"
    beyond.write_bytes(drc.pack(drc.DrcFile(header.width, header.height, header.colour_mode, 9, header.weights_id,
                                            header.sections)))
    result = CliRunner().invoke(main, ["info", str(beyond)])
    assert result.exit_code == 2 and result.output == "dirac: error: corrupt .drc file (level 9 outside the " \
        "model's -1 to 8)\n", result.output


def test_an_output_named_by_an_open_descriptor_is_written_into_not_replaced(tmp_path: Path, small_png: Path):
    """/dev/stdout or /dev/fd/N behind a shell's `>> file`: the bytes go where the descriptor
    stands (appended), as with `-o -`; the file behind it was replaced, losing what it held."""
    expected = tmp_path / "expected.drc"
    assert dirac("encode", small_png, "-q", "3", "-e", "1", "-o", expected).returncode == 0
    archive = tmp_path / "archive.bin"
    archive.write_bytes(b"OLD DATA\n")
    command = [sys.executable, "-m", "diraccodec.cli", "encode", str(small_png), "-q", "3", "-e", "1", "-o"]
    with open(archive, "ab") as appended:
        done = subprocess.run([*command, "/dev/stdout"], stdout=appended, stderr=subprocess.PIPE, timeout=300)
        assert done.returncode == 0, done.stderr
        done = subprocess.run([*command, f"/dev/fd/{appended.fileno()}"], pass_fds=[appended.fileno()],
                              stderr=subprocess.PIPE, timeout=300)
        assert done.returncode == 0, done.stderr
    assert archive.read_bytes() == b"OLD DATA\n" + 2 * expected.read_bytes()
    with open(tmp_path / "out.png", "wb") as redirected:
        done = subprocess.run([sys.executable, "-m", "diraccodec.cli", "decode", str(expected), "-o", "/dev/stdout",
                               "--format", ".png"], stdout=redirected, stderr=subprocess.PIPE, timeout=300)
    assert done.returncode == 0, done.stderr  # it was "unknown image suffix", whatever --format said
    assert Image.open(tmp_path / "out.png").size == Image.open(small_png).size
    import pty

    from diraccodec.cli.common import check_outputs

    controller, terminal = pty.openpty()
    try:  # binary output to a terminal is garbage: refused; text (a report's Markdown) goes there
        done = subprocess.run([*command, f"/dev/fd/{terminal}"], pass_fds=[terminal], stderr=subprocess.PIPE,
                              timeout=300)
        assert done.returncode == 2 and f"/dev/fd/{terminal} is a terminal".encode() in done.stderr, done.stderr
        check_outputs({"--markdown": Path(f"/dev/fd/{terminal}")}, [])
        with pytest.raises(DiracError, match=r"^--plot /dev/fd/\d+ is a terminal: redirect it to a file or a pipe$"):
            check_outputs({"--plot": Path(f"/dev/fd/{terminal}")}, [])  # a picture, as compare's and export's
    finally:
        os.close(controller)
        os.close(terminal)
    closed = CliRunner().invoke(main, ["encode", str(small_png), "-q", "3", "-e", "1", "-o", "/dev/fd/250"])
    assert closed.exit_code == 2 and closed.stderr == "dirac: error: cannot write /dev/fd/250: descriptor 250 is " \
        "not open\n"  # not a file made in /dev/fd's place, nor one a later open would give that number


def test_unwritable_output_leaves_nothing(tmp_path: Path, small_png: Path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = locked / "out.drc"
    try:
        if os.geteuid() == 0:  # root ignores permission bits: the system's refusal is played in this process
            real_open = os.open

            def refused_in_locked(path, *args, **options):
                if Path(path).parent == locked:
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, *args, **options)

            monkeypatch.setattr(os, "open", refused_in_locked)
            result = CliRunner().invoke(main, ["encode", str(small_png), "-q", "3", "-o", str(target)])
            assert (result.exit_code, result.output) == (2, f"dirac: error: cannot write {target}: Permission denied\n")
        else:
            assert_one_line_error(dirac("encode", small_png, "-q", "3", "-o", target),
                                  f"cannot write {target}: Permission denied")
        assert list(locked.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "small.png"]
    finally:
        locked.chmod(0o700)


def test_an_output_below_a_file_names_that_file(tmp_path: Path, small_png: Path):
    assert_one_line_error(dirac("encode", small_png, "-q", "3", "-o", small_png / "out.drc"),
                          f"cannot write {small_png / 'out.drc'}: {small_png} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]


def test_wrong_weights_are_named(tmp_path: Path, small_drc: Path):
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.modelfiles import export_base_weights

    other = tmp_path / "other.safetensors"
    export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 8)), other, {"purpose": "test"})
    assert_one_line_error(dirac("decode", small_drc, "-o", tmp_path / "w.png", "--weights", other),
                          "file was made with weights")


def test_decode_writes_greyscale_and_alpha(tmp_path: Path, small_image: Image.Image):
    rgba = small_image.convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size).rotate(30)  # varies along both axes
    rgba.putalpha(alpha)
    grey = small_image.convert("L")
    runner = CliRunner()
    for name, original in (("rgba", rgba), ("grey", grey)):
        source, encoded, decoded = tmp_path / f"{name}.png", tmp_path / f"{name}.drc", tmp_path / f"{name}-out.png"
        original.save(source)
        assert runner.invoke(main, ["encode", str(source), "-q", "4", "-o", str(encoded)]).exit_code == 0
        assert runner.invoke(main, ["decode", str(encoded), "-o", str(decoded)]).exit_code == 0
        with Image.open(decoded) as image:
            assert image.mode == original.mode and image.size == original.size
            if name == "rgba":  # alpha travels exactly
                assert np.array_equal(np.asarray(image.getchannel("A")), np.asarray(alpha))
            else:
                assert psnr(np.asarray(image), np.asarray(grey)) > 25


@pytest.mark.slow
def test_batch_both_directions_skips_existing_and_reports_failures(tmp_path: Path, small_image: Image.Image):
    source, encoded, decoded = tmp_path / "photos", tmp_path / "encoded", tmp_path / "decoded"
    (source / "nested").mkdir(parents=True)
    small_image.save(source / "one.png")
    small_image.rotate(90, expand=True).save(source / "nested" / "two.jpg", quality=90)
    # its path holds "[/bad]", which rich would read as a closing tag, and is longer than a line
    bad = source / "odd[" / ("a folder name long enough that the failure line is wider than 80 columns" + "]")
    bad.mkdir(parents=True)
    (bad / "bad.png").write_bytes(b"not an image")
    (source / "notes.txt").write_text("ignored")

    first = dirac("batch", source, encoded, "-q", "2", "-j", "2")
    assert first.returncode == 1  # bad.png failed ...
    assert (encoded / "one.drc").exists() and (encoded / "nested" / "two.drc").exists()  # ... the rest did not
    assert not list(encoded.rglob("bad.drc"))
    assert f"failed: {bad / 'bad.png'}: cannot read image" in first.stderr.splitlines()[-2]  # one whole line

    shutil.rmtree(source / "odd[")
    stamp = (encoded / "one.drc").stat().st_mtime_ns
    second = dirac("batch", source, encoded, "-q", "2")
    assert second.returncode == 0 and "skipped" in second.stderr
    assert (encoded / "one.drc").stat().st_mtime_ns == stamp

    third = dirac("batch", source, encoded, "-q", "2", "--overwrite")
    assert third.returncode == 0 and (encoded / "one.drc").stat().st_mtime_ns != stamp

    back = dirac("batch", encoded, decoded)
    assert back.returncode == 0
    with Image.open(decoded / "nested" / "two.png") as image:
        assert image.size == (small_image.height, small_image.width)


def test_batch_decodes_to_jpeg_and_names_the_files_that_have_alpha(tmp_path: Path, small_image: Image.Image):
    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    encoded.mkdir()
    data = diraccodec.encode(small_image, 2, effort=1)
    (encoded / "plain.drc").write_bytes(data)
    (encoded / "clear.drc").write_bytes(diraccodec.encode(small_image.convert("LA"), 2, effort=1))
    result = dirac("batch", encoded, decoded, "--format", ".jpg", "-j", "1")
    assert result.returncode == 1  # the file with alpha failed, the other did not
    assert f"failed: {encoded / 'clear.drc'}: JPEG cannot hold an alpha channel" in result.stderr
    assert not (decoded / "clear.jpg").exists()
    with Image.open(decoded / "plain.jpg") as image:
        assert image.format == "JPEG" and image.size == small_image.size
        assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4, chroma at full resolution
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    expected = np.asarray(diraccodec.decode(data), dtype=np.int16)
    assert np.abs(pixels - expected).mean() < 1.5  # quality 100, and another process's pixels


def test_batch_without_inputs_is_an_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(dirac("batch", tmp_path / "empty", tmp_path / "out"), "no images")


def test_the_readme_s_two_commands_have_what_they_need():
    import json

    from diraccodec.modelfiles import MANIFEST, WEIGHTS_DIR

    first_lines = (ROOT / "README.md").read_text().splitlines()[:6]
    commands = [line.split("#")[0].strip() for line in first_lines if line.startswith("make ")]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command
    assert SAMPLE.exists() and shutil.which("git") is not None
    shipped = json.loads((WEIGHTS_DIR / MANIFEST).read_text())
    assert {"base.safetensors", "restoration.safetensors", "diffusion.safetensors"} <= set(shipped)
    assert all((WEIGHTS_DIR / name).stat().st_size == entry["bytes"] for name, entry in shipped.items())


def test_batch_decodes_with_diffusion_steps(tmp_path: Path, small_image: Image.Image):
    import numpy as np

    import diraccodec

    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    encoded.mkdir()
    data = diraccodec.encode(small_image, 2)
    (encoded / "one.drc").write_bytes(data)
    result = dirac("batch", encoded, decoded, "--steps", "2", "--seed", "3", "-j", "1")
    assert result.returncode == 0, result.stderr
    with Image.open(decoded / "one.png") as image:
        batch_pixels = np.asarray(image.convert("RGB"))
    expected = np.asarray(diraccodec.decode(data, steps=2, seed=3), dtype=np.int16)
    # another process (one thread per worker): the same within the format's tolerance
    difference = np.abs(batch_pixels.astype(np.int16) - expected)
    assert difference.max() <= 8 and difference.mean() <= 0.5
    # and the seed was heard: another seed's noise lands further off than the tolerance
    other_seed = np.asarray(diraccodec.decode(data, steps=2, seed=4), dtype=np.int16)
    assert np.abs(batch_pixels.astype(np.int16) - other_seed).mean() > 0.5
    assert not np.array_equal(batch_pixels, np.asarray(diraccodec.decode(data, steps=0)))


def test_a_file_of_an_earlier_release_names_it(tmp_path: Path, small_drc: Path, monkeypatch):
    from diraccodec import __version__, api, modelfiles
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.container import drc

    def release_number(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split(".")[:3])

    shipped_id = drc.unpack(small_drc.read_bytes()).weights_id.hex()
    assert modelfiles.shipped_base_weights_id() == shipped_id
    # the shipped base weights are listed with the release that first shipped them: this one or an earlier
    assert release_number(modelfiles.released_base_weights()[shipped_id]) <= release_number(__version__)
    other = tmp_path / "other.safetensors"
    modelfiles.export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 8)), other, {"purpose": "test"})
    arguments = ["decode", str(small_drc), "-o", str(tmp_path / "w.png"), "--weights", str(other)]
    result = CliRunner().invoke(main, arguments)  # the shipped weights made it
    assert result.exit_code == 2 and result.output.count("\n") == 1
    shipped = modelfiles.DEFAULT_BASE_WEIGHTS
    assert result.output.endswith(f"; decode it with the weights this package ships ({shipped})\n")
    monkeypatch.setattr(api.models, "shipped_base_weights_id", lambda: None)  # as a later release, which ships others
    monkeypatch.setattr(api.models, "released_base_weights", lambda: {shipped_id: "0.0.9"})
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "decode it with diraccodec 0.0.9" in result.output
    assert "pip install 'diraccodec==0.0.9'" in result.output


def programs_own(_number: int, _frame: object) -> None:
    pass


@pytest.mark.parametrize("callers", [signal.SIG_DFL, signal.SIG_IGN, programs_own])
def test_the_cli_run_in_a_program_leaves_its_sigterm_handling_as_it_was(callers, small_image, tmp_path, monkeypatch):
    """The CLI turns SIGTERM into an interruption while a command runs (cleanup, status 143),
    where nobody else handles it; a program running it in-process keeps its own afterwards,
    and one that ignores or handles SIGTERM keeps doing so during the command."""
    import diraccodec.batch

    small_image.save(tmp_path / "a.png")
    seen, original = [], diraccodec.batch.run_batch

    def watching(*arguments, **options):
        seen.append(signal.getsignal(signal.SIGTERM))
        return original(*arguments, **options)

    monkeypatch.setattr(diraccodec.batch, "run_batch", watching)
    previous = signal.signal(signal.SIGTERM, callers)
    try:
        result = CliRunner().invoke(main, ["batch", str(tmp_path), str(tmp_path / "out"), "-q", "1", "-j", "1"])
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 0, result.output
    assert after is callers and len(seen) == 1
    if callers is signal.SIG_DFL:
        assert callable(seen[0])  # the CLI's, while it ran
    else:
        assert seen[0] is callers


def test_format_takes_a_suffix_with_or_without_its_dot_in_any_case(tmp_path: Path, small_drc: Path):
    runner = CliRunner()
    decoded = runner.invoke(main, ["decode", str(small_drc), "-o", "-", "--format", "jpg"])
    assert decoded.exit_code == 0, decoded.output
    with Image.open(io.BytesIO(decoded.stdout_bytes)) as image:
        assert image.format == "JPEG"
    source = tmp_path / "encoded"
    source.mkdir()
    shutil.copy(small_drc, source / "small.drc")
    batched = runner.invoke(main, ["batch", str(source), str(tmp_path / "out"), "-j", "1", "--format", "JPEG"])
    assert batched.exit_code == 0, batched.output
    with Image.open(tmp_path / "out" / "small.jpeg") as image:
        assert image.format == "JPEG"
    refused = runner.invoke(main, ["decode", str(small_drc), "-o", "-", "--format", "gif"])
    assert refused.exit_code == 2 and "--format" in refused.stderr


def test_a_name_the_output_encoding_lacks_is_escaped_not_a_traceback(small_drc: Path, tmp_path: Path):
    """A console whose code page has no such characters (cp1252 on Windows): `info` still prints."""
    named = tmp_path / "鸚鵡.drc"
    shutil.copy(small_drc, named)
    done = subprocess.run([sys.executable, "-m", "diraccodec.cli", "info", str(named)], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "cp1252"}, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert f"{tmp_path}/\\u9e1a\\u9d61.drc".encode() in done.stdout
    # a name that is no UTF-8 under a UTF-8 locale: printed as its own bytes, which name the file
    undecodable = os.fsdecode(bytes(tmp_path) + b"/\xff.drc")
    shutil.copy(small_drc, undecodable)
    for encoding in ({"PYTHONUTF8": "1"}, {"PYTHONIOENCODING": "utf-8:strict"}, {"PYTHONIOENCODING": "cp1252"}):
        done = subprocess.run([sys.executable, "-m", "diraccodec.cli", "info", undecodable], capture_output=True,
                              env={**os.environ, **encoding}, timeout=120)
        assert done.returncode == 0 and bytes(tmp_path) + b"/\xff.drc" in done.stdout, (encoding, done.stderr)


def test_encode_without_a_rate_is_a_one_line_usage_error(tmp_path: Path, small_png: Path):
    """None of -q, --size or --bpp is a mistake to name, not a file made at a rate the user never chose."""
    output = tmp_path / "y.drc"
    result = CliRunner().invoke(main, ["encode", str(small_png), "-e", "1", "-o", str(output)])
    assert result.exit_code == 2, result.output
    assert result.output == "dirac: error: give -q LEVEL, --size or --bpp\n"
    assert not output.exists()


def test_decode_follows_the_seed_it_is_given(tmp_path: Path, small_drc: Path):
    """The seed picks the diffusion noise: the same seed gives the same pixels, another seed others."""
    pixels = {}
    for name, seed in (("first", "5"), ("again", "5"), ("other", "6")):
        output = tmp_path / f"{name}.png"
        result = CliRunner().invoke(main, ["decode", str(small_drc), "--steps", "2", "--seed", seed, "-o", str(output)])
        assert result.exit_code == 0, result.output
        with Image.open(output) as image:
            pixels[name] = np.asarray(image)
    assert np.array_equal(pixels["first"], pixels["again"])
    assert not np.array_equal(pixels["first"], pixels["other"])
    assert np.array_equal(pixels["first"], np.asarray(diraccodec.decode(small_drc.read_bytes(), 2, seed=5)))


def test_encode_stores_the_recommended_steps_it_is_given(tmp_path: Path, small_png: Path):
    """Decoders that are not told how many steps take the file's recommendation: --steps must reach the file."""
    output = tmp_path / "steps.drc"
    result = CliRunner().invoke(main, ["encode", str(small_png), "-q", "1", "-e", "1", "--steps", "3",
                                       "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert diraccodec.inspect(output.read_bytes()).recommended_steps == 3
    info = CliRunner().invoke(main, ["info", str(output)])
    assert info.exit_code == 0 and re.search(r"^recommended steps +3$", info.output, re.M), info.output


def test_plot_takes_a_png_suffix_in_any_case(tmp_path: Path):
    """rd.PNG names a PNG file as well as rd.png does: only another suffix is refused."""
    base = ["eval", "--data", str(tmp_path), "--levels", ""]  # an error of its own once the options are read
    accepted = CliRunner().invoke(main, [*base, "--plot", str(tmp_path / "rd.PNG")])
    assert accepted.exit_code == 2 and "--levels needs at least one level" in accepted.output, accepted.output
    refused = CliRunner().invoke(main, [*base, "--plot", str(tmp_path / "rd.jpg")])
    assert refused.exit_code == 2 and "plots are written as PNG" in refused.output, refused.output


def test_eval_steps_out_of_range_are_named_as_steps(tmp_path: Path):
    """A bad --steps is named alone, not with --levels."""
    for steps in ("", "101", "0,-1"):
        result = CliRunner().invoke(main, ["eval", "--data", str(tmp_path), "--steps", steps])
        assert result.exit_code == 2 and result.output == "dirac: error: --steps takes one or more step counts " \
            f"between 0 and 100, got {steps!r}\n", result.output


def test_references_are_read_in_any_case():
    """--references NONE and AVIF,Jxl are what the user meant: the keys are matched without case."""
    from diraccodec.cli.common import parse_references

    known = ["jpeg", "webp", "avif", "jxl"]
    assert parse_references("NONE", known) == []
    assert parse_references("None", known) == []
    assert parse_references("AVIF, Jxl", known) == ["avif", "jxl"]
    with pytest.raises(DiracError, match="unknown reference codec 'gif'"):
        parse_references("GIF", known)


def test_format_takes_a_dotted_suffix_in_upper_case(small_drc: Path):
    """--format .JPEG is the .jpeg suffix as a user may type it: it writes JPEG."""
    decoded = CliRunner().invoke(main, ["decode", str(small_drc), "-o", "-", "--format", ".JPEG"])
    assert decoded.exit_code == 0, decoded.output
    with Image.open(io.BytesIO(decoded.stdout_bytes)) as image:
        assert image.format == "JPEG"


def test_decoding_alpha_to_jpeg_fails_before_the_decode(tmp_path: Path, small_image: Image.Image, monkeypatch):
    """JPEG cannot hold the alpha the file has: said at once, not after a decode that may take minutes."""
    from diraccodec import api

    source = tmp_path / "clear.drc"
    source.write_bytes(diraccodec.encode(small_image.convert("RGBA"), 1, effort=1))
    calls = []
    monkeypatch.setattr(api, "decode", lambda *arguments, **options: calls.append(arguments))
    output = tmp_path / "out.jpg"
    result = CliRunner().invoke(main, ["decode", str(source), "-o", str(output)])
    assert result.exit_code == 2, result.output
    assert result.output == "dirac: error: JPEG cannot hold an alpha channel: write .png instead\n"
    assert calls == [] and not output.exists()


def test_an_image_wider_than_webp_holds_fails_before_the_decode(tmp_path: Path, sample_image: Image.Image,
                                                                monkeypatch):
    """libwebp holds sides of at most 16383 pixels (Pillow raises a ValueError past them): the
    file's header says so before any decode, in one line, and a batch fails that file alone."""
    from diraccodec import api
    from diraccodec.batch import BatchSettings, Job, run_job

    source = tmp_path / "wide.drc"
    source.write_bytes(diraccodec.encode(sample_image.resize((16384, 1)), 1, effort=1))
    calls = []
    monkeypatch.setattr(api, "decode", lambda *arguments, **options: calls.append(arguments))
    output = tmp_path / "wide.webp"
    expected = "WEBP holds images of at most 16383 pixels a side, not 16384x1: write .png instead"
    result = CliRunner().invoke(main, ["decode", str(source), "-o", str(output)])
    assert (result.exit_code, result.output) == (2, f"dirac: error: {expected}\n")
    failed = run_job(Job(source, output), BatchSettings())
    assert (failed.status, failed.message) == ("failed", expected)
    assert calls == [] and not output.exists()


def test_batch_with_a_level_out_of_range_fails_once_before_any_file(tmp_path: Path, small_image: Image.Image,
                                                                   monkeypatch):
    """A bad -q is the batch's mistake, not each file's: one line, status 2, and no file converted or written."""
    import diraccodec.batch

    source, destination = tmp_path / "photos", tmp_path / "out"
    source.mkdir()
    small_image.save(source / "one.png")
    small_image.save(source / "two.png")
    runs = []
    real_run_batch = diraccodec.batch.run_batch
    monkeypatch.setattr(diraccodec.batch, "run_batch", lambda *a, **k: runs.append(a) or real_run_batch(*a, **k))
    result = CliRunner().invoke(main, ["batch", str(source), str(destination), "-q", "9", "-j", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("dirac: error: quality must be between")
    for bpp in ("nan", "inf"):  # past a range's check, they failed each file alike
        result = CliRunner().invoke(main, ["batch", str(source), str(destination), "--bpp", bpp, "-j", "1"])
        assert (result.exit_code, result.output.count("\n")) == (2, 1), result.output
        assert f"Invalid value for '--bpp': '{bpp}' is not a finite number." in result.output
    assert runs == [] and not destination.exists()


def test_batch_summary_bpp_counts_the_encoded_files_alone(tmp_path: Path, small_image: Image.Image,
                                                          sample_image: Image.Image):
    """bpp is the encoded files' rate: the images a .drc beside them decodes to are no part of it."""
    source, destination = tmp_path / "mixed", tmp_path / "out"
    source.mkdir()
    small_image.save(source / "photo.png")
    (source / "earlier.drc").write_bytes(diraccodec.encode(sample_image.crop((0, 0, 64, 64)), 1, effort=1))
    result = CliRunner().invoke(main, ["batch", str(source), str(destination), "-q", "2", "-e", "1", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert (destination / "earlier.png").exists()
    bpp = 8 * (destination / "photo.drc").stat().st_size / (small_image.width * small_image.height)
    [row] = [line for line in result.output.splitlines() if "converted" in line and "│" in line]
    assert row.split("│")[-2].strip() == f"{bpp:.4f}", result.output


def test_dirac_alone_shows_its_commands_with_the_status_of_a_usage_error():
    """A script that calls `dirac` with no command made a mistake: help, but not status 0."""
    done = dirac()
    assert done.returncode == 2 and "Commands:" in done.stdout and "encode" in done.stdout


def test_a_usage_error_quoting_a_line_break_stays_one_line(small_drc: Path, tmp_path: Path):
    """click quotes some values as they are: a name holding a line break must not split the error."""
    done = dirac("decode", small_drc, "-o", f"{tmp_path}/x\n/")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("dirac: error: Invalid value for '-o'") and "x\\n/ names a folder" in line
    assert line.endswith("(see: dirac decode --help)")


def test_a_click_error_outside_usage_is_one_line_with_its_status(monkeypatch):
    """Errors click raises beyond usage (a file it opens, say) keep their status and one line."""
    runner = CliRunner()

    @click.command()
    def failing() -> None:
        error = click.ClickException("cannot open\nphoto.png")
        error.exit_code = 3
        raise error

    monkeypatch.setitem(main.commands, "failing", failing)
    result = runner.invoke(main, ["failing"])
    assert result.exit_code == 3 and result.output == "dirac: error: cannot open\\nphoto.png\n"


# Text that a library printed for standard output and that is still buffered as the command ends
BUFFERED_THEN_INFO = """
import sys
from diraccodec.cli import main
print("text of a library, buffered")
main(["info", *sys.argv[1:]], prog_name="dirac")
"""


def test_a_command_s_own_failure_keeps_its_status_where_its_text_cannot_be_written_either(tmp_path: Path,
                                                                                          small_drc: Path):
    """Standard output on a full disk: a command that failed for itself (two unreadable files,
    status 1) keeps its status, which a script tells from a mistake on the command line (2), and
    the text that could not go out still gets its line; after a success that text is status 2."""
    broken = tmp_path / "broken.drc"
    broken.write_bytes(b"not a drc file")
    full = "dirac: error: cannot write standard output: No space left on device\n"
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    for files, status in (([broken, broken], 1), ([small_drc], 2)):
        with open("/dev/full", "w") as stdout:
            done = subprocess.run([sys.executable, "-c", BUFFERED_THEN_INFO, *map(str, files)], stdout=stdout,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT, env=buffered, timeout=120)
        assert done.returncode == status and done.stderr.endswith(full), done.stderr
        assert "Traceback" not in done.stderr and (f"{broken}: " in done.stderr) == (status == 1)


def test_an_encoded_file_that_does_not_read_back_is_never_written(tmp_path: Path, small_image: Image.Image,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """The encoder's file is read back before it replaces anything: one no decoder reads (a
    fault of the encoder's) fails the file, and the output, or a batch's, stays as it was."""
    from diraccodec import api
    from diraccodec.batch import BatchSettings, Job, run_job

    good = api.encode(small_image, 2, effort=1)
    monkeypatch.setattr(api, "encode", lambda *arguments, **options: good[:-1] + bytes([good[-1] ^ 1]))
    small_image.save(tmp_path / "photo.png")
    output = tmp_path / "photo.drc"
    output.write_bytes(b"before")
    result = CliRunner().invoke(main, ["encode", str(tmp_path / "photo.png"), "-q", "2", "-o", str(output)])
    assert result.exit_code == 2 and "checksum mismatch" in result.output, result.output
    assert output.read_bytes() == b"before"
    failed = run_job(Job(tmp_path / "photo.png", tmp_path / "out" / "photo.drc"), BatchSettings(quality=2))
    assert failed.status == "failed" and "checksum mismatch" in failed.message
    assert not (tmp_path / "out").exists()
