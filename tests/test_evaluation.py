"""The evaluation command end to end on a tiny folder, so it cannot rot."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

import diraccodec
from diraccodec.api import get_codec
from diraccodec.cli import main
from diraccodec.errors import DiracError
from diraccodec.evaluation.codecs import AVIF_OPTIONS, decode_with_pillow, encode_with_pillow
from diraccodec.evaluation.pictures import avif_at_most


@pytest.mark.slow
def test_eval_command_on_two_small_images(tmp_path: Path, sample_image: Image.Image):
    folder = tmp_path / "images"
    folder.mkdir()
    sample_image.crop((0, 0, 96, 64)).save(folder / "a.png")
    sample_image.crop((200, 100, 264, 196)).save(folder / "b.png")
    report_path, table, figure = tmp_path / "eval.json", tmp_path / "results.md", tmp_path / "rd.png"
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--levels", "2,6", "--json", str(report_path),
                                       "--markdown", str(table), "--plot", str(figure)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    ours = [p for p in report["points"] if p["codec"] == "diraccodec"]
    assert [p["setting"] for p in ours] == [2, 6]
    assert ours[0]["bpp"] < ours[1]["bpp"]
    assert {p["codec"] for p in report["points"]} == {"diraccodec", "JPEG", "WebP", "AVIF", "JPEG XL"}
    for point in report["points"]:
        assert point["images"] == 2 and point["bpp"] > 0 and 0 < point["ms_ssim"] <= 1 and point["lpips"] >= 0
    assert set(report["bd_rate_psnr_percent"]["diraccodec"]) == {"JPEG", "WebP", "AVIF", "JPEG XL"}
    assert report["complete"] is True
    # the weights measured, by the ids .drc files carry
    assert report["models"]["base"] == get_codec().weights.weights_id.hex()
    assert report["models"]["diffusion"] and report["models"]["restoration"]
    assert "BD-rate" in table.read_text() and figure.stat().st_size > 10_000


def test_perception_axis_decodes_each_file_at_every_step_count(tmp_path: Path, sample_image: Image.Image,
                                                                random_diffusion_weights: Path, monkeypatch):
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(random_diffusion_weights))
    folder = tmp_path / "images"
    folder.mkdir()
    sample_image.crop((0, 0, 128, 96)).save(folder / "a.png")
    sample_image.crop((200, 100, 296, 196)).save(folder / "b.png")
    report_path, figure = tmp_path / "eval.json", tmp_path / "dp.png"
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--levels", "1,5", "--steps", "0,3",
                                       "--references", "avif", "--json", str(report_path),
                                       "--perception-plot", str(figure)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    by_curve: dict[str, list[dict]] = {}
    for point in report["points"]:
        by_curve.setdefault(point["codec"], []).append(point)
    assert set(by_curve) == {"diraccodec", "diraccodec (3 steps)", "AVIF"}
    base, enhanced = by_curve["diraccodec"], by_curve["diraccodec (3 steps)"]
    # one file per level, decoded twice: the same bits, other pixels
    assert [p["bpp"] for p in base] == [p["bpp"] for p in enhanced]
    assert all(p["steps"] == 3 and p["seconds_per_step_per_mp"] > 0 for p in enhanced)
    assert all(p["steps"] == 0 and p["seconds_per_step_per_mp"] is None for p in base)
    assert all(b["psnr"] != e["psnr"] for b, e in zip(base, enhanced, strict=True))
    assert all(p["fd_alexnet"] >= 0 for p in report["points"])
    # the encode is timed apart, once per file: the same for every decoding of it
    assert all(0 < p["encode_seconds_per_mp"] < p["seconds_per_mp"] for p in report["points"])
    assert [p["encode_seconds_per_mp"] for p in base] == [p["encode_seconds_per_mp"] for p in enhanced]
    assert set(report["bd_rate_lpips_percent"]) == {"diraccodec", "diraccodec (3 steps)"}
    assert "FD-AlexNet" in report["fd_alexnet"] or "AlexNet" in report["fd_alexnet"]
    assert figure.stat().st_size > 10_000


def test_partial_report_is_written_after_every_setting(tmp_path: Path, sample_image: Image.Image, monkeypatch):
    from diraccodec.evaluation import report as report_module
    from diraccodec.evaluation import run
    from diraccodec.evaluation.codecs import reference_codecs

    jpeg = reference_codecs(["jpeg"])
    seen: list[int] = []
    log = io.StringIO()  # not a terminal (whatever FORCE_COLOR says): no live bar, a line per setting
    run.evaluate([sample_image.crop((0, 0, 64, 64))], jpeg, Console(file=log, width=200, force_terminal=False),
                 on_point=lambda p: seen.append(len(p)))
    settings = jpeg[0].settings
    assert seen == list(range(1, len(settings) + 1))
    lines = log.getvalue().splitlines()  # then rich's one picture of the finished bar
    assert lines[:len(settings)] == [f"[{index}/{len(settings)}] JPEG quality {setting:g}"
                                     for index, setting in enumerate(settings, 1)]
    # a run that stops before its final report leaves every finished setting in its JSON
    data, report = tmp_path / "photos", tmp_path / "r.json"
    data.mkdir()
    sample_image.crop((0, 0, 64, 64)).save(data / "a.png")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_report", stopped)
    CliRunner().invoke(main, ["eval", "--data", str(data), "--levels", "2", "--references", "jpeg",
                              "--json", str(report)])
    saved = json.loads(report.read_text())
    assert saved["complete"] is False
    assert len(saved["points"]) == len(jpeg[0].settings) + 1  # every JPEG quality, and our level 2


def test_unknown_reference_codec_is_one_line_error(tmp_path: Path, sample_image: Image.Image):
    folder = tmp_path / "images"
    folder.mkdir()
    sample_image.crop((0, 0, 64, 64)).save(folder / "a.png")
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--references", "bmp"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["dirac: error: unknown reference codec 'bmp'; "
                                                  "choose from jpeg, webp, avif, jxl"]


def test_a_reference_this_pillow_cannot_write_is_one_line_before_any_work(tmp_path: Path, sample_image: Image.Image,
                                                                         monkeypatch):
    """Pillow writes AVIF from 11.3, and WebP or AVIF only where built with their library."""
    import PIL

    folder = tmp_path / "images"
    folder.mkdir()
    sample_image.crop((0, 0, 64, 64)).save(folder / "a.png")
    Image.init()
    monkeypatch.delitem(Image.SAVE, "AVIF", raising=False)  # as an older Pillow has it
    monkeypatch.setattr(diraccodec.api, "encode", lambda *_, **__: pytest.fail("the work began"))
    expected = (f"dirac: error: the avif reference needs a Pillow that writes AVIF, which Pillow {PIL.__version__} "
                f"here does not (Pillow's own wheels write it from 11.3)")
    for arguments in (["eval", "--data", str(folder), "--references", "jpeg,avif"],
                      ["bench", str(folder / "a.png"), "--references", "avif"],
                      ["compare", str(folder / "a.png"), "-q", "2", "-o", str(tmp_path / "c.png")]):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 2 and result.output.strip().splitlines() == [expected], arguments


def image_folder(tmp_path: Path, image: Image.Image, box: tuple[int, int, int, int]) -> Path:
    """A folder holding one crop of `image`, as a.png."""
    folder = tmp_path / "images"
    folder.mkdir()
    image.crop(box).save(folder / "a.png")
    return folder


def test_reference_settings_replace_a_references_qualities(tmp_path: Path, sample_image: Image.Image):
    folder = image_folder(tmp_path, sample_image, (0, 0, 64, 64))
    report_path = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--levels", "0,3", "--references", "avif",
                                       "--reference-settings", "AVIF=0,30", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    points = json.loads(report_path.read_text())["points"]
    assert [p["setting"] for p in points if p["codec"] == "AVIF"] == [0, 30]
    assert [p["setting"] for p in points if p["codec"] == "diraccodec"] == [0, 3]
    for bad, message in ((["--references", "avif", "--reference-settings", "webp=10"], "not among the references"),
                         (["--reference-settings", "avif=60,30"], "ascending"),
                         (["--reference-settings", "avif=0,101"], "from 0 to 100"),
                         (["--reference-settings", "avif=10.2,10.7"], "whole numbers"),  # the codecs take no others
                         (["--levels", "3,9"], "between -1 and 8")):  # refused before the references run
        result = CliRunner().invoke(main, ["eval", "--data", str(folder), *bad])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and message in result.output


def test_compare_picture_puts_four_panels_side_by_side(tmp_path: Path, sample_image: Image.Image,
                                                      diffusion_weights: Path, monkeypatch):
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(diffusion_weights))
    source, output = tmp_path / "a.png", tmp_path / "crops.png"
    sample_image.crop((100, 50, 260, 178)).save(source)
    result = CliRunner().invoke(main, ["compare", str(source), "-q", "2", "--steps", "2", "--box", "16,8,64",
                                       "--zoom", "2", "-o", str(output)])
    assert result.exit_code == 0, result.output
    with Image.open(output) as picture:
        assert picture.width == 4 * 128 + 3 * 8 and picture.height == 128 + 44
        # the first panel is the original crop, enlarged by nearest neighbour
        original = sample_image.crop((116, 58, 180, 122)).resize((128, 128), Image.Resampling.NEAREST)
        assert picture.crop((0, 44, 128, 172)).tobytes() == original.tobytes()
        # the second: AVIF's largest file within the .drc file's size, decoded
        data = diraccodec.encode(source, 2)
        avif = decode_with_pillow(avif_at_most(Image.open(source).convert("RGB"), len(data))[0])
        avif = avif.crop((16, 8, 80, 72)).resize((128, 128), Image.Resampling.NEAREST)
        assert picture.crop((136, 44, 264, 172)).tobytes() == avif.tobytes()
        # the third and fourth: the same crop of the file decoded at 0 and at 2 steps (the command's defaults)
        for panel, steps in ((2, 0), (3, 2)):
            decoded = diraccodec.decode(data, steps, 0).crop((16, 8, 80, 72))
            decoded = decoded.resize((128, 128), Image.Resampling.NEAREST)
            assert picture.crop((panel * 136, 44, panel * 136 + 128, 172)).tobytes() == decoded.tobytes(), steps
    bad = CliRunner().invoke(main, ["compare", str(source), "-q", "2", "--box", "150,0,64", "-o", str(output)])
    assert bad.exit_code == 2 and "does not fit" in bad.output


def test_avif_at_most_picks_the_best_quality_within_the_size(sample_image: Image.Image):
    image = sample_image.crop((0, 0, 128, 128))
    data, quality = avif_at_most(image, 1500)
    assert len(data) <= 1500 and data == encode_with_pillow(image, "AVIF", quality, **AVIF_OPTIONS)
    assert quality < 100 and len(encode_with_pillow(image, "AVIF", quality + 1, **AVIF_OPTIONS)) > 1500


def test_report_rebuilds_tables_and_plots_from_a_run_stopped_part_way(tmp_path: Path, sample_image: Image.Image):
    folder = image_folder(tmp_path, sample_image, (0, 0, 96, 64))
    report_path = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--levels", "2,5,7", "--references", "jpeg",
                                       "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads(report_path.read_text())
    saved["complete"] = False
    saved["points"] = saved["points"][:-1]  # as if stopped before level 7
    report_path.write_text(json.dumps(saved))
    table, figure = tmp_path / "t.md", tmp_path / "rd.png"
    result = CliRunner().invoke(main, ["report", str(report_path), "--markdown", str(table), "--plot", str(figure)])
    assert result.exit_code == 0, result.output
    printed = result.stdout  # the table and BD-rates on the screen too, as eval prints them
    assert "MS-SSIM" in printed and "BD-rate of diraccodec vs JPEG:" in printed, printed
    text = table.read_text()
    assert "stopped part-way" in text and "| diraccodec | 5 |" in text and "| diraccodec | 7 |" not in text
    rebuilt = json.loads(report_path.read_text())
    assert rebuilt["complete"] is False and len(rebuilt["points"]) == 9 + 2
    assert "JPEG" in rebuilt["bd_rate_psnr_percent"]["diraccodec"]
    assert figure.stat().st_size > 10_000
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = CliRunner().invoke(main, ["report", str(bad)])
    assert result.exit_code == 2 and result.output.startswith("dirac: error:")


def test_report_pools_a_later_run_over_an_earlier_one_and_leaves_both(tmp_path: Path):
    from diraccodec.evaluation.report import report_of, write_json
    from diraccodec.evaluation.run import Point

    def point(codec: str, level: float, lpips: float, steps: int | None = None) -> Point:
        return Point(codec, level, bpp=0.1 * level, psnr=25.0 + level, ms_ssim=0.9, lpips=lpips, fd_alexnet=1.0,
                     seconds_per_mp=2.0, images=24, steps=steps)

    earlier, later, pooled = tmp_path / "earlier.json", tmp_path / "later.json", tmp_path / "pooled.json"
    write_json(report_of([point("AVIF", 20, 0.5), point("diraccodec", 1, 0.4), point("diraccodec", 2, 0.3),
                          point("diraccodec (20 steps)", 1, 0.28, 20), point("diraccodec (20 steps)", 2, 0.2, 20)],
                         "kodak", True, command="dirac eval --levels 1,2", models={"base": "aa"},
                         machine="x86_64, CPU A (AVX512)", decoding={"seed": 0, "exact": False}), earlier)
    write_json(report_of([point("diraccodec (20 steps)", 1, 0.25, 20), point("diraccodec (50 steps)", 1, 0.24, 50)],
                         "kodak", True, command="dirac eval --levels 1", models={"base": "bb"},
                         machine="x86_64, CPU B (AVX2)", decoding={"seed": 7, "exact": True}), later)
    inputs = earlier.read_bytes(), later.read_bytes()
    missing = CliRunner().invoke(main, ["report", str(earlier), "--updated-by", str(later)])
    assert missing.exit_code == 2 and missing.output.startswith("dirac: error: --updated-by needs --json")
    table, figure = tmp_path / "pooled.md", tmp_path / "dp.png"
    result = CliRunner().invoke(main, ["report", str(earlier), "--updated-by", str(later), "--json", str(pooled),
                                       "--markdown", str(table), "--perception-plot", str(figure)])
    assert result.exit_code == 0, result.output
    assert 'the runs measured with different weights ({"base": "aa"} then {"base": "bb"})' in result.output
    # another seed, mode or machine under the same names is said too (the reference codecs' libraries are
    # in the machine's text): the pooled curves mix them
    said = " ".join(result.output.split())
    assert 'different decoder settings ({"exact": false, "seed": 0} then {"exact": true, "seed": 7})' in said
    assert 'different machines ("x86_64, CPU A (AVX512)" then "x86_64, CPU B (AVX2)")' in said
    assert (earlier.read_bytes(), later.read_bytes()) == inputs
    report = json.loads(pooled.read_text())
    lpips = {(p["codec"], p["setting"]): p["lpips"] for p in report["points"]}
    assert lpips == {("AVIF", 20): 0.5, ("diraccodec", 1): 0.4, ("diraccodec", 2): 0.3,
                     ("diraccodec (20 steps)", 1): 0.25, ("diraccodec (20 steps)", 2): 0.2,
                     ("diraccodec (50 steps)", 1): 0.24}
    pooling = f"dirac report {earlier} --updated-by {later} --json {pooled}"
    assert report["command"] == f"dirac eval --levels 1,2 && dirac eval --levels 1 && {pooling}"
    assert report["complete"] is True and report["data"] == "kodak"
    assert report["models"] == {"base": "bb"} and report["decoding"] == {"seed": 7, "exact": True}  # the latest
    assert report["machine"] == "x86_64, CPU A (AVX512) and x86_64, CPU B (AVX2)"  # where they ran, not here
    assert "| diraccodec (20 steps) | 1 | 20 |" in table.read_text() and figure.stat().st_size > 10_000


def test_held_out_evaluates_only_the_photos_training_never_sees(tmp_path: Path, sample_image: Image.Image):
    from diraccodec.evaluation.run import load_images
    from diraccodec.training.data import is_held_out, training_images

    folder = tmp_path / "train"
    (folder / "nested").mkdir(parents=True)
    names = {"nested/photo8.png": (0, 0), "photo23.png": (40, 20), "photo1.png": (80, 40), "nested/photo2.png": (0, 60)}
    for name, (left, top) in names.items():
        sample_image.crop((left, top, left + 64, top + 48)).save(folder / name)
    held = [name for name in names if is_held_out(folder / name)]
    assert sorted(held) == ["nested/photo8.png", "photo23.png"]  # the two whose names hash into the split
    assert not set(training_images([folder])) & {folder / name for name in held}
    loaded = load_images(folder, held_out=True)
    expected = [sample_image.crop((left, top, left + 64, top + 48)) for left, top in (names[n] for n in held)]
    assert [image.tobytes() for image in loaded] == [image.tobytes() for image in expected]

    report_path = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--held-out", "--levels", "3",
                                       "--references", "jpeg", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["data"] == "train (held out)"
    assert {point["images"] for point in report["points"]} == {2}

    (folder / "nested" / "photo8.png").unlink()
    (folder / "photo23.png").unlink()
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--held-out", "--references", "none"])
    assert result.exit_code == 2 and "dirac: error: no held-out images in" in result.output
    assert "Traceback" not in result.output


def test_evaluated_images_are_pixels_without_their_profile(tmp_path: Path, sample_image: Image.Image):
    """A profile would cost diraccodec and AVIF its bytes, and JPEG, WebP and JPEG XL nothing."""
    from PIL import ImageCms

    from diraccodec.evaluation.run import load_images

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    crop = sample_image.crop((0, 0, 96, 64))
    crop.save(tmp_path / "with-profile.png", icc_profile=profile)
    [loaded] = load_images(tmp_path)
    assert Image.open(tmp_path / "with-profile.png").info["icc_profile"] == profile
    assert "icc_profile" not in loaded.info and loaded.tobytes() == crop.tobytes()
    carrying = crop.copy()
    carrying.info["icc_profile"] = profile  # what the file's own profile would cost a codec that keeps it
    assert len(encode_with_pillow(loaded, "PNG", 90)) < len(encode_with_pillow(carrying, "PNG", 90))


def test_images_are_read_as_the_codec_reads_them_and_bad_ones_are_one_line_errors(tmp_path: Path):
    from diraccodec.evaluation.metrics import MAX_PSNR, psnr
    from diraccodec.evaluation.run import load_images

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")  # 16-bit grey: scaled by 1/257, not clipped to white
    (loaded,) = load_images(tmp_path)
    assert loaded.mode == "RGB" and np.asarray(loaded)[0, ::21, 0].tolist() == [0, 85, 170, 255]
    assert psnr(loaded, loaded) == MAX_PSNR  # identical: a finite figure that means and fits can take
    Image.new("RGB", (30, 64)).save(tmp_path / "narrow.png")
    with pytest.raises(DiracError, match=r"narrow.png is 30x64: the metrics need at least 31 pixels a side"):
        load_images(tmp_path)
    (tmp_path / "narrow.png").write_bytes(b"not an image")
    with pytest.raises(DiracError, match="cannot read image"):
        load_images(tmp_path)


def test_runs_of_different_data_do_not_pool(tmp_path: Path):
    from diraccodec.evaluation.report import report_of, write_json
    from diraccodec.evaluation.run import Point

    point = Point("AVIF", 20, bpp=0.5, psnr=30.0, ms_ssim=0.9, lpips=0.3, fd_alexnet=1.0, seconds_per_mp=1.0, images=2)
    for name, data in (("a.json", "kodak"), ("b.json", "train (held out)")):
        write_json(report_of([point], data, True, command="dirac eval", machine="here"), tmp_path / name)
    result = CliRunner().invoke(main, ["report", str(tmp_path / "a.json"), "--updated-by", str(tmp_path / "b.json"),
                                       "--json", str(tmp_path / "pooled.json")])
    assert result.exit_code == 2 and "measured different data (kodak and train (held out))" in result.output
    # one folder's name, other images: fewer of them (--images N), or other pixels (another folder of that name)
    other_count = dataclasses.replace(point, images=1)
    write_json(report_of([other_count], "kodak", True, command="dirac eval --images 1", machine="here"),
               tmp_path / "c.json")
    for name, data_id in (("d.json", "0123456789abcdef"), ("e.json", "fedcba9876543210")):
        write_json(report_of([point], "kodak", True, command="dirac eval", machine="here", data_id=data_id),
                   tmp_path / name)
    for first, later, differ in (("a.json", "c.json", "other images of kodak: 1 image and 2 images"),
                                 ("d.json", "e.json", "other images of kodak: other pixels")):
        result = CliRunner().invoke(main, ["report", str(tmp_path / first), "--updated-by", str(tmp_path / later),
                                           "--json", str(tmp_path / "pooled.json")])
        assert result.exit_code == 2 and f"measured different data ({differ})" in result.output, result.output
    pooled = CliRunner().invoke(main, ["report", str(tmp_path / "a.json"), "--updated-by", str(tmp_path / "d.json"),
                                       "--json", str(tmp_path / "pooled.json")])  # an older report has no data id
    assert pooled.exit_code == 0, pooled.output
    for output in ("--json", "--markdown"):  # the inputs are left as they are (plots must be .png)
        result = CliRunner().invoke(main, ["report", str(tmp_path / "a.json"), "--updated-by",
                                           str(tmp_path / "d.json"), "--json", str(tmp_path / "pooled.json"),
                                           output, str(tmp_path / "d.json")])
        assert result.exit_code == 2 and f"the output {tmp_path / 'd.json'} is one of the inputs" in result.output
    for text in ("[1, 2]", "\x89PNG"):
        (tmp_path / "bad.json").write_text(text)
        result = CliRunner().invoke(main, ["report", str(tmp_path / "bad.json")])
        assert result.exit_code == 2 and result.output.startswith(f"dirac: error: {tmp_path / 'bad.json'} is not an "
                                                                  f"evaluation report ("), result.output
        assert "__init__" not in result.output and "indices" not in result.output


def test_eval_and_compare_refuse_an_output_that_is_one_of_their_images(tmp_path: Path, small_image: Image.Image):
    data = tmp_path / "data"
    data.mkdir()
    small_image.resize((64, 64)).save(data / "a.png")
    before = (data / "a.png").read_bytes()
    result = CliRunner().invoke(main, ["eval", "--data", str(data), "--levels", "1", "--references", "none",
                                       "--json", str(data / "a.png")])
    assert result.exit_code == 2 and f"the output {data / 'a.png'} is the input" in result.output, result.output
    result = CliRunner().invoke(main, ["compare", str(data / "a.png"), "-q", "1", "-o", str(data / "a.png")])
    assert result.exit_code == 2 and f"the output {data / 'a.png'} is the input" in result.output, result.output
    assert (data / "a.png").read_bytes() == before


def test_bench_keys_images_that_share_a_name_by_their_paths():
    from diraccodec.bench import image_keys

    assert image_keys([Path("a/x.png"), Path("b/x.png"), Path("b/y.png")]) == ["a/x.png", "b/x.png", "y.png"]


def test_eval_in_a_log_measures_each_level_once_and_prints_whole_rows(tmp_path: Path, small_image: Image.Image):
    """In a log: a line per setting and no bar's last frame; the table is not folded to 80
    columns; a level given twice is measured once; a plot must be named .png (PNG bytes went
    under any name)."""
    data = tmp_path / "data"
    data.mkdir()
    small_image.resize((64, 64)).save(data / "a.png")
    arguments = ["eval", "--data", str(data), "--levels", "1,1", "--references", "none", "-e", "1",
                 "--json", str(tmp_path / "e.json")]
    refused = CliRunner().invoke(main, [*arguments, "--plot", str(tmp_path / "rd.svg")])
    assert refused.exit_code == 2 and "plots are written as PNG" in refused.output
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == "[1/1] diraccodec effort 1 level 1"  # one setting, no bar after it
    header = next(line for line in result.stdout.splitlines() if "codec" in line and "setting" in line)
    assert all(column in header for column in ("MS-SSIM", "FD-AlexNet", "enc s/MP")), header
    assert len(json.loads((tmp_path / "e.json").read_text())["points"]) == 1


def test_outputs_that_would_replace_an_input_or_each_other_are_refused_before_the_work(tmp_path: Path,
                                                                                      sample_image: Image.Image):
    folder = tmp_path / "images"
    folder.mkdir()
    sample_image.crop((0, 0, 64, 64)).save(folder / "a.png")
    (tmp_path / "a-file").write_text("kept")
    runner = CliRunner()
    for arguments, message in (
            (["eval", "--data", str(folder), "--json", str(tmp_path / "r"), "--markdown", str(tmp_path / "r")],
             f"--json and --markdown name the same file {tmp_path / 'r'}"),
            (["eval", "--data", str(folder), "--json", str(tmp_path / "r.json"), "--plot",
              str(tmp_path / "a-file" / "p.png")], "a-file is not a folder"),  # a traceback after the whole run
            (["bench", str(folder / "a.png"), "--references", "none", "--json", str(folder / "a.png")],
             "is the input"),
            (["compare", str(tmp_path / "small.png"), "-q", "2", "-o", str(tmp_path / "c.png")],
             "the comparison's LPIPS needs at least 31 pixels a side")):
        sample_image.crop((0, 0, 20, 20)).save(tmp_path / "small.png")
        result = runner.invoke(main, arguments)
        assert result.exit_code == 2 and message in result.output, result.output
        assert (folder / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_report_with_null_figures_prints_and_one_of_another_shape_is_refused(tmp_path: Path):
    import json

    point = {"codec": "diraccodec", "setting": 2, "bpp": 0.3, "psnr": None, "ms_ssim": 0.9, "lpips": 0.2,
             "fd_alexnet": None, "seconds_per_mp": None, "images": 1}
    report = {"command": "dirac eval", "data": "x", "machine": "m", "fd_alexnet": "none", "points": [point]}
    (tmp_path / "nulls.json").write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nulls.json"), "--markdown", str(tmp_path / "n.md")])
    assert result.exit_code == 0, result.output  # a run stopped before its figures: a TypeError
    assert "| diraccodec | 2 |  | 0.3000 |  | 0.9000 | 0.2000 |" in (tmp_path / "n.md").read_text()
    report["points"] = [{**point, "bpp": "0.3"}]
    (tmp_path / "text.json").write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["report", str(tmp_path / "text.json"), "--markdown", str(tmp_path / "t.md")])
    assert result.exit_code == 2 and "is not an evaluation report (JSON without its fields)" in result.output


def test_evaluate_scores_file_sizes_means_over_every_image_and_per_step_times(small_image: Image.Image):
    """A user's bpp, scores and per-step times are 8 bits a byte, means over every image, and per step."""
    from PIL import ImageFilter

    from diraccodec.evaluation import metrics
    from diraccodec.evaluation.codecs import CodecUnderTest, Decoding
    from diraccodec.evaluation.run import evaluate

    images = [small_image.crop((0, 0, 64, 48)), small_image.crop((32, 32, 96, 80))]  # 3072 pixels each
    decoded = [images[0].point(lambda v: v // 32 * 32), images[1].filter(ImageFilter.GaussianBlur(2))]
    files = [bytes(100), bytes(50)]
    timings = [(0.5, 0.1, 0.05), (0.7, 0.2, 0.1)]  # seconds, shared (encode and synthesis), encode

    def round_trip(image: Image.Image, setting: float) -> tuple[bytes, list[Decoding]]:
        index = next(i for i, known in enumerate(images) if known is image)
        seconds, shared, encode = timings[index]
        return files[index], [Decoding(decoded[index], seconds, 4, shared, encode)]

    [point] = evaluate(images, [CodecUnderTest("stub", (3,), round_trip)], Console(file=io.StringIO()))
    megapixels = 2 * 3072 / 1e6
    assert point.codec == "stub (4 steps)" and point.steps == 4 and point.images == 2
    assert point.bpp == pytest.approx(8 * 150 / 6144)
    for name in ("psnr", "ms_ssim", "lpips"):
        scores = [getattr(metrics, name)(image, out) for image, out in zip(images, decoded, strict=True)]
        assert scores[0] != pytest.approx(scores[1])  # the mean differs from either image's score
        assert getattr(point, name) == pytest.approx(sum(scores) / 2), name
    assert point.seconds_per_mp == pytest.approx(1.2 / megapixels)
    assert point.encode_seconds_per_mp == pytest.approx(0.15 / megapixels)
    assert point.seconds_per_step_per_mp == pytest.approx((1.2 - 0.3) / 4 / megapixels)


def test_our_codec_times_the_encode_apart_from_the_shared_encode_and_synthesis(small_image: Image.Image):
    """The "enc s/MP" column is the encode alone, less than the encode and synthesis every decoding shares."""
    from diraccodec.evaluation.codecs import diraccodec_codec

    codec = diraccodec_codec([1], steps=(0,), effort=1)
    data, [decoding] = codec.round_trip(small_image.crop((0, 0, 64, 48)), 1)
    assert data and decoding.steps == 0 and decoding.image.size == (64, 48)
    assert 0 < decoding.encode_seconds < decoding.shared_seconds < decoding.seconds


def test_our_codec_scores_decodes_pixels_whatever_the_callers_autocast_or_default_dtype(small_image: Image.Image):
    """The evaluation runs the decoder's stages itself: inside the API's model_calls, a caller's
    bfloat16 autocast or float64 default changes no pixel (it moved them by 1, or failed)."""
    import torch

    from diraccodec.evaluation.codecs import diraccodec_codec

    image = small_image.crop((0, 0, 64, 48))
    codec = diraccodec_codec([2], steps=(0, 1), effort=1)
    data, _ = codec.round_trip(image, 2)
    expected = [np.asarray(diraccodec.decode(data, steps)) for steps in (0, 1)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = codec.round_trip(image, 2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        under_float64 = codec.round_trip(image, 2)
    finally:
        torch.set_default_dtype(previous)
    for file, decodings in (under_autocast, under_float64):
        assert file == data
        for decoding, pixels in zip(decodings, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(decoding.image), pixels)


def test_jpeg_reference_optimises_its_huffman_tables(small_image: Image.Image):
    """JPEG as people ship it: unoptimised Huffman tables would waste bytes and flatter our BD-rate."""
    from diraccodec.evaluation.codecs import reference_codecs

    [jpeg] = reference_codecs(["jpeg"], {"jpeg": [75]})
    data, [decoding] = jpeg.round_trip(small_image, 75)
    assert jpeg.name == "JPEG" and decoding.image.size == small_image.size
    assert data == encode_with_pillow(small_image, "JPEG", 75, optimize=True)
    assert len(data) < len(encode_with_pillow(small_image, "JPEG", 75))


def test_report_prints_each_bd_rate_under_its_own_metric(tmp_path: Path):
    """The LPIPS BD-rate printed is the LPIPS one, not the PSNR one repeated."""
    from diraccodec.evaluation.report import format_percent, report_of, write_json
    from diraccodec.evaluation.run import Point

    def point(codec: str, setting: float, bpp: float, psnr: float, lpips: float) -> Point:
        return Point(codec, setting, bpp=bpp, psnr=psnr, ms_ssim=0.9, lpips=lpips, fd_alexnet=1.0,
                     seconds_per_mp=1.0, images=1)

    points = [point("JPEG", q, bpp, psnr, lpips) for q, bpp, psnr, lpips in
              ((10, 0.2, 26.0, 0.40), (30, 0.4, 29.0, 0.30), (60, 0.8, 32.0, 0.20), (90, 1.6, 35.0, 0.10))]
    points += [point("diraccodec", level, bpp, psnr, lpips) for level, bpp, psnr, lpips in
               ((1, 0.1, 26.0, 0.35), (2, 0.2, 29.0, 0.28), (3, 0.4, 32.0, 0.21), (4, 0.8, 35.0, 0.14))]
    path = tmp_path / "eval.json"
    write_json(report_of(points, "kodak", True, command="dirac eval", machine="here"), path)
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    by_psnr = format_percent(report["bd_rate_psnr_percent"]["diraccodec"]["JPEG"])
    by_lpips = format_percent(report["bd_rate_lpips_percent"]["diraccodec"]["JPEG"])
    assert by_psnr != by_lpips
    assert f"BD-rate of diraccodec vs JPEG: {by_psnr} (PSNR), {by_lpips} (LPIPS)" in result.stdout, result.stdout


def test_reference_settings_refuse_a_quality_given_twice(tmp_path: Path, sample_image: Image.Image, monkeypatch):
    """A quality given twice would be measured twice, two points on one spot of the curve."""
    folder = image_folder(tmp_path, sample_image, (0, 0, 64, 64))
    monkeypatch.setattr(diraccodec.api, "encode", lambda *_, **__: pytest.fail("the work began"))
    result = CliRunner().invoke(main, ["eval", "--data", str(folder), "--references", "jpeg",
                                       "--reference-settings", "jpeg=30,30,60", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == ["dirac: error: --reference-settings 'jpeg=30,30,60': give whole "
                                                  "qualities from 0 to 100 in ascending order"]


def test_compare_crops_a_centred_square_without_a_box(tmp_path: Path, sample_image: Image.Image, monkeypatch):
    """Without --box the panels show the middle of the picture, at most 256 pixels a side."""
    from diraccodec.evaluation import pictures

    boxes = []

    def picture(image: Image.Image, level: float, steps: int, box: tuple[int, int, int], *rest) -> Image.Image:
        boxes.append(box)
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(pictures, "comparison_picture", picture)
    for size, expected in (((300, 280), (22, 12, 256)), ((120, 64), (28, 0, 64))):
        source = tmp_path / f"{size[0]}.png"
        sample_image.crop((0, 0, *size)).save(source)
        result = CliRunner().invoke(main, ["compare", str(source), "-q", "2", "-o", str(tmp_path / "c.png")])
        assert result.exit_code == 0, result.output
        assert boxes[-1] == expected, size
