"""An evaluation report written as one CompressAI-style JSON file per curve."""

from __future__ import annotations

import json
from pathlib import Path

from diraccodec.evaluation.curves import write_curves

COMMAND = "dirac eval --levels 1,2 --steps 0,20 --references jpeg --json r.json"


def point(codec: str, setting: float, bpp: float, psnr: float, lpips: float, steps: int | None = None,
          fd: float | None = 1.5, per_step: float | None = None, encode: float | None = None) -> dict:
    return {"codec": codec, "setting": setting, "bpp": bpp, "psnr": psnr, "ms_ssim": psnr / 40, "lpips": lpips,
            "fd_alexnet": fd, "seconds_per_mp": 2.0 * setting, "images": 24, "steps": steps,
            "seconds_per_step_per_mp": per_step, "encode_seconds_per_mp": encode}


REPORT = {
    "command": COMMAND,
    "data": "kodak",
    "machine": "x86_64",
    "complete": True,
    "points": [
        point("JPEG", 30, 0.61, 30.5, 0.14),
        point("JPEG", 5, 0.14, 23.9, 0.47, fd=None),  # listed after the higher rate: sorted on writing
        point("diraccodec", 1, 0.096, 26.3, 0.39, steps=0, encode=3.0),
        point("diraccodec", 2, 0.166, 28.0, 0.29, steps=0, encode=2.5),
        point("diraccodec (20 steps)", 2, 0.166, 27.2, 0.19, steps=20, per_step=1.34, encode=2.5),
        point("diraccodec (20 steps)", 1, 0.096, 25.5, 0.26, steps=20, per_step=1.38, encode=3.0),
    ],
}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_each_curve_is_one_file_sorted_by_rate(tmp_path: Path) -> None:
    written = write_curves(REPORT, tmp_path / "kodak", "kodak")

    assert [p.name for p in written] == ["jpeg.json", "diraccodec.json", "diraccodec-20-steps.json"]
    assert sorted(p.name for p in (tmp_path / "kodak").iterdir()) == sorted(p.name for p in written)

    assert read(written[0]) == {
        "name": "JPEG",
        "description": "JPEG through Pillow: 4:2:0 chroma subsampling, optimised Huffman tables; settings (-q) 5, 30. "
                       f"Data: kodak, 24 images; machine: x86_64. Measured by: {COMMAND}",
        "results": {
            "quality": [5, 30],
            "bpp": [0.14, 0.61],
            "psnr-rgb": [23.9, 30.5],
            "ms-ssim-rgb": [23.9 / 40, 30.5 / 40],
            "lpips-alex": [0.47, 0.14],
            "fd-alexnet": [None, 1.5],  # not measured: null, not NaN
            "seconds-per-mp": [10.0, 60.0],
        },
    }
    assert read(written[1]) == {
        "name": "diraccodec",
        "description": "diraccodec at 0 diffusion steps: the base synthesis through the restoration filter; "
                       f"settings (-q) 1, 2. Data: kodak, 24 images; machine: x86_64. Measured by: {COMMAND}",
        "results": {
            "quality": [1, 2],
            "bpp": [0.096, 0.166],
            "psnr-rgb": [26.3, 28.0],
            "ms-ssim-rgb": [26.3 / 40, 28.0 / 40],
            "lpips-alex": [0.39, 0.29],
            "fd-alexnet": [1.5, 1.5],
            "seconds-per-mp": [2.0, 4.0],
            "encode-seconds-per-mp": [3.0, 2.5],
        },
    }
    assert read(written[2]) == {
        "name": "diraccodec (20 steps)",
        "description": "diraccodec decoded with 20 diffusion steps; settings (-q) 1, 2. Data: kodak, 24 images; "
                       f"machine: x86_64. Measured by: {COMMAND}",
        "results": {
            "quality": [1, 2],
            "bpp": [0.096, 0.166],
            "psnr-rgb": [25.5, 27.2],
            "ms-ssim-rgb": [25.5 / 40, 27.2 / 40],
            "lpips-alex": [0.26, 0.19],
            "fd-alexnet": [1.5, 1.5],
            "seconds-per-mp": [2.0, 4.0],
            "encode-seconds-per-mp": [3.0, 2.5],
            "seconds-per-step-per-mp": [1.38, 1.34],
        },
    }


def test_writing_again_replaces_the_files(tmp_path: Path) -> None:
    first = write_curves(REPORT, tmp_path, "kodak")
    measured_again = [dict(fields, psnr=31.5) if (fields["codec"], fields["setting"]) == ("JPEG", 30) else fields
                      for fields in REPORT["points"]]
    again = write_curves({**REPORT, "points": measured_again}, tmp_path, "kodak")
    assert first == again
    assert len(list(tmp_path.iterdir())) == 3
    assert read(tmp_path / "jpeg.json")["results"]["psnr-rgb"] == [23.9, 31.5]
