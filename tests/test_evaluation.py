"""The evaluation command end to end on a tiny folder, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from diraccodec.cli import main


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
    assert set(report["bd_rate_psnr_percent"]) == {"JPEG", "WebP", "AVIF", "JPEG XL"}
    assert "BD-rate" in table.read_text() and figure.stat().st_size > 10_000
