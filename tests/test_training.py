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


def test_weight_average_resumes_exactly_and_is_what_export_ships(photo_folder: Path, tmp_path: Path):
    def averaged(checkpoint: Path, steps: int) -> BaseTrainingOptions:
        run = options(photo_folder, checkpoint, steps)
        run.average_decay = 0.5
        return run

    straight, resumed = tmp_path / "straight.safetensors", tmp_path / "resumed.safetensors"
    train_base(averaged(straight, 4))
    train_base(averaged(resumed, 2))
    train_base(averaged(resumed, 4))
    a, b = load_file(str(straight)), load_file(str(resumed))
    average_keys = [k for k in a if k.startswith("average.")]
    assert "average.updates" in average_keys and int(a["average.updates"][0]) == 4
    for key in average_keys:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    weight = "synthesis.0.weight"
    assert not torch.equal(a[f"average.{weight}"], a[f"model.{weight}"])
    exported = tmp_path / "w.safetensors"
    export_checkpoint(straight, exported)
    torch.testing.assert_close(load_file(str(exported))[f"model.{weight}"], a[f"average.{weight}"], rtol=0, atol=0)


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
    not_a_checkpoint = tmp_path / "photo.safetensors"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    result = runner.invoke(main, ["train", "export", str(not_a_checkpoint), str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "is not a diraccodec training checkpoint" in result.output
    tuned_checkpoint, tuned = tmp_path / "entropy.safetensors", tmp_path / "tuned" / "base.safetensors"
    result = runner.invoke(main, ["train", "entropy", "--data", str(photo_folder), "--weights", str(weights),
                                  "--checkpoint", str(tuned_checkpoint), "--steps", "1", "--crops", "2",
                                  "--batch-size", "1", "--patch-size", "128", "--threads", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "export", str(tuned_checkpoint), str(tuned)])
    assert result.exit_code == 0, result.output
    assert "base codec" in result.output


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


def test_packed_shard_is_smaller_and_records_its_downscale(photo_folder: Path, tmp_path: Path):
    from diraccodec.training.data import CropSampler, pack_shard, shard_prescale

    shard = tmp_path / "shard"
    count, size = pack_shard([photo_folder], shard, prescale=2.0, quality=85, min_side=32)
    assert count == 2 and size == sum(p.stat().st_size for p in shard.glob("*.jpg"))
    original = Image.open(photo_folder / "b.png")
    packed = sorted(shard.glob("*.jpg"))[1]
    assert Image.open(packed).size == (round(original.width / 2), round(original.height / 2))
    assert shard_prescale(shard) == 2.0 and shard_prescale(photo_folder) == 1.0
    # the shard is already downscaled 2x: of the usual 1.5x-2x nothing remains to apply
    sampler = CropSampler([shard], 32)
    assert sampler.scale_ranges == [(1.0, 1.0), (1.0, 1.0)]
    assert sampler.batch(3).shape == (3, 3, 32, 32)


def test_a_time_budget_sets_the_step_count_and_a_run_without_moments_warms_up(photo_folder: Path, tmp_path: Path,
                                                                          capsys):
    from diraccodec.training.checkpoint import load_checkpoint_metadata
    from diraccodec.training.loop import LoopOptions, learning_rate_at

    checkpoint = tmp_path / "ck.safetensors"
    train_base(options(photo_folder, checkpoint, 2))
    optimizer_path(checkpoint).unlink()  # weights brought from elsewhere, without Adam moments
    budget = options(photo_folder, checkpoint, 1)  # --minutes overrides the step count
    budget.minutes, budget.calibration_steps, budget.log_every = 0.02, 3, 1000
    state = train_base(budget)
    err = capsys.readouterr().err
    assert "ramps up over 200 steps" in err and "steps/s: this run ends near step" in err
    assert state.step > 2 + 3 and load_checkpoint_metadata(checkpoint).step == state.step
    assert budget.steps == state.step
    long_run = LoopOptions(checkpoint=checkpoint, steps=10_000, learning_rate=1e-3, warmup_steps=100)
    assert learning_rate_at(50, long_run, warmup_from=50) == pytest.approx(1e-5)
    assert learning_rate_at(149, long_run, warmup_from=50) == pytest.approx(1e-3)
    assert learning_rate_at(50, long_run) == pytest.approx(1e-3)  # with moments: no ramp
    assert learning_rate_at(10_000, long_run) == pytest.approx(1e-4)  # the decay ends at 1/10
    assert learning_rate_at(7_999, long_run) == pytest.approx(1e-3)  # over the last fifth
    resumed = LoopOptions(checkpoint=checkpoint, steps=10_000, learning_rate=1e-3, schedule_start=9_000)
    assert learning_rate_at(9_799, resumed) == pytest.approx(1e-3)  # a budgeted run: the end of its own steps
    assert learning_rate_at(9_900, resumed) < 1e-3


def test_a_budget_spent_at_its_first_measurement_still_saves_and_low_precision_moments_resume(
        photo_folder: Path, tmp_path: Path):
    from diraccodec.training.checkpoint import cast_file, join_files, load_checkpoint_metadata, split_file

    checkpoint = tmp_path / "ck.safetensors"
    train_base(options(photo_folder, checkpoint, 2))
    budget = options(photo_folder, checkpoint, 1)
    budget.minutes, budget.calibration_steps = 1e-6, 3  # over before the speed is even known
    stopped = train_base(budget).step
    assert stopped >= 5 and load_checkpoint_metadata(checkpoint).step == stopped
    # the moments come back from a GPU machine as bfloat16; the run goes on in float32
    cast_file(optimizer_path(checkpoint), optimizer_path(checkpoint), torch.bfloat16)
    travelled = load_file(str(optimizer_path(checkpoint)))
    assert travelled["adam.0.exp_avg"].dtype == torch.bfloat16
    assert travelled["adam.0.step"].dtype == torch.float32
    assert train_base(options(photo_folder, checkpoint, stopped + 2)).step == stopped + 2
    moments = load_file(str(optimizer_path(checkpoint)))
    assert {tensor.dtype for tensor in moments.values()} == {torch.float32}
    # a checkpoint too large to come back in one file comes back in two, exactly
    split_file(checkpoint, "model.", tmp_path / "weights.safetensors", tmp_path / "rest.safetensors")
    pieces = [load_file(str(tmp_path / name)) for name in ("weights.safetensors", "rest.safetensors")]
    assert pieces[0] and all(name.startswith("model.") for name in pieces[0])
    assert pieces[1] and not any(name.startswith("model.") for name in pieces[1])
    join_files([tmp_path / "weights.safetensors", tmp_path / "rest.safetensors"], tmp_path / "joined.safetensors")
    joined, original = load_file(str(tmp_path / "joined.safetensors")), load_file(str(checkpoint))
    assert joined.keys() == original.keys() and all(torch.equal(joined[k], original[k]) for k in original)
    assert load_checkpoint_metadata(tmp_path / "joined.safetensors").step == stopped + 2


def test_entropy_finetune_lowers_the_rate_and_leaves_the_transforms_alone(photo_folder: Path, tmp_path: Path,
                                                                           capsys):
    from diraccodec import api
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.modelfiles import export_base_weights
    from diraccodec.training.entropy import EntropyTrainingOptions, train_entropy

    torch.manual_seed(0)
    start = tmp_path / "start" / "base.safetensors"
    export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 12)), start, {})
    checkpoint, tuned = tmp_path / "entropy.safetensors", tmp_path / "tuned" / "base.safetensors"
    train_entropy(EntropyTrainingOptions(
        data=(photo_folder,), base_weights=start, checkpoint=checkpoint, steps=30, batch_size=2, patch_size=128,
        crops=4, learning_rate=1e-2, log_every=1, checkpoint_minutes=1e9, threads=1,
    ))
    losses = [float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().err.splitlines()
              if line.startswith("step ")]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    export_checkpoint(checkpoint, tuned)
    before, after = load_file(str(start)), load_file(str(tuned))
    frozen = [k for k in before if k.startswith(("model.analysis", "model.synthesis", "model.log_"))]
    trained = [k for k in before if k.startswith(("model.hyper_", "tables.hyper"))]
    assert frozen and trained
    for key in frozen:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(before[key], after[key]) for key in trained)
    image = Image.open(photo_folder / "b.png").convert("RGB").crop((0, 0, 96, 80))
    assert api.decode(api.encode(image, 3, weights=tuned), weights=tuned).size == (96, 80)
