"""Training runs, resumes exactly and exports weights the codec can use (tiny settings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diraccodec.training.base import BaseTrainingOptions, export_checkpoint, train_base
from diraccodec.training.checkpoint import optimizer_path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, sample_image: Image.Image) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    sample_image.save(folder / "a.jpg", quality=95)
    sample_image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(folder / "b.png")
    return folder


def options(folder: Path, checkpoint: Path, steps: int) -> BaseTrainingOptions:
    return BaseTrainingOptions(
        data=(folder,), checkpoint=checkpoint, steps=steps, batch_size=2, patch_size=64,
        channels=8, latent_channels=12, log_every=1, checkpoint_minutes=1e9, threads=1,
    )


def test_resumed_training_equals_uninterrupted_training(photo_folder: Path, tmp_path: Path):
    straight = tmp_path / "straight.safetensors"
    resumed = tmp_path / "resumed.safetensors"
    train_base(options(photo_folder, straight, 4))
    train_base(options(photo_folder, resumed, 2))
    assert optimizer_path(resumed).exists()
    state = train_base(options(photo_folder, resumed, 4))
    assert state.step == 4
    a, b = load_file(str(straight)), load_file(str(resumed))
    model_keys = [k for k in a if k.startswith("model.")]
    assert model_keys
    for key in model_keys:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_training_lowers_the_loss_and_exports_usable_weights(photo_folder: Path, tmp_path: Path, capsys):
    from diraccodec import api

    checkpoint = tmp_path / "ck.safetensors"
    train_base(options(photo_folder, checkpoint, 12))
    losses = [float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().err.splitlines()
              if line.startswith("step ")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    weights = tmp_path / "w.safetensors"
    export_checkpoint(checkpoint, weights)
    image = Image.open(photo_folder / "b.png").convert("RGB").crop((0, 0, 70, 50))
    data = api.encode(image, 2, weights=weights)
    assert api.decode(data, weights=weights).size == (70, 50)


def test_train_and_export_commands(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main

    checkpoint, weights = tmp_path / "ck.safetensors", tmp_path / "w" / "base.safetensors"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "base", "--data", str(photo_folder), "--checkpoint", str(checkpoint),
                                  "--steps", "1", "--batch-size", "1", "--patch-size", "64", "--threads", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "export", str(checkpoint), str(weights)])
    assert result.exit_code == 0, result.output
    assert (weights.parent / "manifest.json").exists()


def test_killed_training_saves_its_checkpoint_first(photo_folder: Path, tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    from diraccodec.training.checkpoint import load_checkpoint_metadata

    checkpoint = tmp_path / "ck.safetensors"
    command = [sys.executable, "-m", "diraccodec.cli", "train", "base", "--data", str(photo_folder),
               "--checkpoint", str(checkpoint), "--steps", "100000", "--batch-size", "1", "--patch-size", "64",
               "--threads", "1", "--checkpoint-minutes", "1000"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "step 50/" not in seen and time.monotonic() < deadline:  # the first progress line
        seen += process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode != 0
    assert "interrupted: checkpoint saved at step" in rest
    assert load_checkpoint_metadata(checkpoint).step >= 50
