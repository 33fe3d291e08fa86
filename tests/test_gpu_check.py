"""The GPU check script runs end to end (on the CPU here: the device under test is a parameter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_check_runs_and_reports(tmp_path, small_image):
    data = tmp_path / "images"
    data.mkdir()
    small_image.save(data / "a.png")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--data", str(data), "--device", "cpu",
                             "--images", "1", "--cross-images", "1", "--large-megapixels", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert set(report["speed"]) == {"encode", "decode 0 steps", "decode 20 steps"}
    assert all(value > 0 for value in report["speed"].values())
    assert report["conformant"] and report["cross device"][0]["symbols identical"]
    assert (out / "gpu-check.md").read_text().startswith("Command: `python scripts/gpu_check.py")
