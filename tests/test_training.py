"""Training runs, exports weights the codec can use, and trains only on its own photos (tiny settings).

Exact resume, the state's parts and time budgets are tested through scripts/train_gpu.py
(test_gpu_training.py), which runs these same trainers.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from safetensors.torch import load_file, save_file

from diraccodec.training.base import BaseTrainingOptions, export_base_checkpoint, train_base
from diraccodec.training.checkpoint import load_checkpoint_metadata, read_state, summary_path, write_travel_copy


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, sample_image: Image.Image) -> Path:
    folder = tmp_path_factory.mktemp("photos") / "odd[" / "x]"  # "[/x]", which rich would read as a closing tag
    folder.mkdir(parents=True)
    sample_image.save(folder / "a.jpg", quality=95)
    sample_image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(folder / "b.png")
    return folder


def small_base_weights(folder: Path) -> Path:
    """Untrained base weights of a tiny size (N=8, M=12) to start runs from, always the same."""
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.modelfiles import export_base_weights

    torch.manual_seed(0)
    export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 12)), folder / "base.safetensors", {})
    return folder / "base.safetensors"


def options(folder: Path, checkpoint: Path, steps: int) -> BaseTrainingOptions:
    return BaseTrainingOptions(
        data=(folder,), checkpoint=checkpoint, steps=steps, batch_size=2, patch_size=64,
        channels=8, latent_channels=12, log_every=1, checkpoint_minutes=1e9, threads=1,
    )


def test_the_weight_average_is_what_export_ships(photo_folder: Path, tmp_path: Path):
    run = options(photo_folder, tmp_path / "ck.safetensors", 4)
    run.average_decay = 0.5
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # the run asks for 1: the caller's 3 must come back
        train_base(run)
        assert torch.get_num_threads() == 3  # --threads holds for the run only, not the caller
    finally:
        torch.set_num_threads(threads_before)
    state, tensors = read_state(run.checkpoint)
    assert state.metadata["kind"] == "base"  # what `dirac train export` goes by
    assert int(tensors["average.updates"][0]) == 4
    weight = "synthesis.0.weight"
    assert not torch.equal(tensors[f"average.{weight}"], tensors[f"model.{weight}"])
    exported = tmp_path / "w.safetensors"
    export_base_checkpoint(run.checkpoint, exported)
    assert torch.equal(load_file(str(exported))[f"model.{weight}"], tensors[f"average.{weight}"])


def test_training_lowers_the_loss_and_exports_usable_weights(photo_folder: Path, tmp_path: Path, capsys):
    from diraccodec import api

    checkpoint = tmp_path / "ck.safetensors"
    train_base(options(photo_folder, checkpoint, 12))
    printed = capsys.readouterr().err.splitlines()
    assert f"loading training images from {photo_folder}" in printed  # the path as it is
    losses = [float(line.split("loss ")[1].split()[0]) for line in printed if line.startswith("step ")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    weights = tmp_path / "w.safetensors"
    export_base_checkpoint(checkpoint, weights)
    image = Image.open(photo_folder / "b.png").convert("RGB").crop((0, 0, 70, 50))
    data = api.encode(image, 2, weights=weights)
    assert api.decode(data, weights=weights).size == (70, 50)


def test_sigterm_stops_dirac_train_as_ctrl_c_does_with_its_own_status(photo_folder: Path, tmp_path: Path):
    """`kill` of a training run: it saves at the next step, then ends with "dirac: terminated"
    and status 143, as any command does on SIGTERM (Ctrl-C gives 130)."""
    from tests.conftest import ROOT

    state = tmp_path / "state"
    command = [sys.executable, "-m", "diraccodec.cli", "train", "base", "--data", str(photo_folder), "--checkpoint",
               str(state), "--steps", "100000", "--batch-size", "1", "--patch-size", "64", "--threads", "1",
               "--analysis-channels", "8", "--synthesis-channels", "8", "--latent-channels", "12", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen, deadline = "", time.monotonic() + 120
    while "model N=" not in seen and time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line, seen  # it ended before training
        seen += line
    while "step 50/" not in seen and time.monotonic() < deadline:  # into its steps (a log line each 50)
        line = process.stderr.readline()
        assert line, seen
        seen += line
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == 143, seen + rest
    assert "interrupted: checkpoint saved at step" in rest and rest.strip().endswith("dirac: terminated")
    assert load_checkpoint_metadata(state).step >= 1


def test_train_and_export_commands(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main

    state, weights = tmp_path / "checkpoints" / "base", tmp_path / "w" / "base.safetensors"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "base", "--data", str(photo_folder), "--checkpoint", str(state),
                                  "--steps", "1", "--batch-size", "1", "--patch-size", "64", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint_metadata(state).step == 1 and (state / "state.safetensors.000").is_file()
    result = runner.invoke(main, ["train", "export", str(state), str(weights)])
    assert result.exit_code == 0, result.output
    assert (weights.parent / "manifest.json").exists()
    not_a_checkpoint = tmp_path / "photo.safetensors"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    result = runner.invoke(main, ["train", "export", str(not_a_checkpoint), str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "is not a diraccodec training checkpoint" in result.output
    result = runner.invoke(main, ["train", "export", str(weights), str(tmp_path / "x.safetensors")])  # weights
    assert result.output == f"dirac: error: {weights} is not a diraccodec training checkpoint (it has no 'step')\n"
    tuned_state, tuned = tmp_path / "checkpoints" / "base-entropy", tmp_path / "tuned" / "base.safetensors"
    result = runner.invoke(main, ["train", "entropy", "--data", str(photo_folder), "--weights", str(weights),
                                  "--checkpoint", str(tuned_state), "--steps", "1", "--crops", "2",
                                  "--batch-size", "1", "--patch-size", "128", "--threads", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "export", str(tuned_state), str(tuned)])
    assert result.exit_code == 0, result.output
    assert "base codec" in result.output


def test_packed_shard_holds_training_photos_under_their_names_and_records_its_downscale(photo_folder: Path,
                                                                                        tmp_path: Path,
                                                                                        monkeypatch):
    from diraccodec.training.crops import CropSampler, scale_grid
    from diraccodec.training.data import is_held_out, pack_shard, shard_prescale

    held_out_name = next(f"photo{i}" for i in range(1000) if is_held_out(Path(f"photo{i}.png")))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, source in (("a.jpg", "a.jpg"), ("b.png", "b.png"), (f"{held_out_name}.png", "b.png")):
        (folder / name).write_bytes((photo_folder / source).read_bytes())
    shard = tmp_path / "shard"
    count, size = pack_shard([folder], shard, prescale=2.0, quality=85, min_side=32)
    packed = sorted(shard.rglob("*.jpg"))
    assert count == 2 and size == sum(p.stat().st_size for p in packed)
    assert [p.relative_to(shard).as_posix() for p in packed] == ["00-photos/a.jpg", "00-photos/b.jpg"]
    original = Image.open(folder / "b.png")
    assert Image.open(packed[1]).size == (round(original.width / 2), round(original.height / 2))
    assert shard_prescale(shard) == 2.0 and shard_prescale(folder) == 1.0
    # the shard is already downscaled 2x: of the usual 1.5x-2x nothing remains to apply
    assert scale_grid((1.5, 2.0), 2.0, 4) == [1.0] and scale_grid((1.5, 2.0), 1.0, 3) == [1.5, 1.75, 2.0]
    sampler = CropSampler([shard], 32)
    assert sampler.image_count == sampler.copies == 2
    assert sampler.batch(3).shape == (3, 3, 32, 32)
    from diraccodec.errors import DiracError

    (tmp_path / "kept").mkdir()
    for output in (tmp_path / "new", tmp_path / "kept"):  # a folder the failed pack made is not left behind
        with pytest.raises(DiracError, match="after the 100x downscale: nothing to pack"):
            pack_shard([folder], output, prescale=100.0, min_side=32)
    assert not (tmp_path / "new").exists() and (tmp_path / "kept").is_dir()
    # packed again from other photos, the shard is replaced whole: none of the earlier photos stay
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.png").write_bytes((photo_folder / "b.png").read_bytes())
    assert pack_shard([other], shard, prescale=2.0, min_side=32)[0] == 1
    assert sorted(p.relative_to(shard).as_posix() for p in shard.rglob("*.jpg")) == ["00-other/c.jpg"]
    # a photo that fails to read midway leaves the earlier shard as it was, and nothing beside it
    (other / "d.jpg").write_bytes((photo_folder / "a.jpg").read_bytes()[:300])
    with pytest.raises(DiracError, match=r"d\.jpg"):
        pack_shard([other], shard, prescale=2.0, min_side=32)
    with pytest.raises(DiracError, match=r"d\.jpg"):
        pack_shard([other], tmp_path / "fresh", prescale=2.0, min_side=32)
    assert sorted(p.relative_to(shard).as_posix() for p in shard.rglob("*.jpg")) == ["00-other/c.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "other", "photos", "shard"]
    with pytest.raises(DiracError, match=r"photos holds files a pack does not write: pack into a new folder"):
        pack_shard([other], folder, prescale=2.0, min_side=32)  # a folder of photos is never packed over
    (shard / "notes.txt").write_text("mine")  # nor an earlier shard that holds anything else
    with pytest.raises(DiracError, match=r"shard holds files a pack does not write"):
        pack_shard([other], shard, prescale=2.0, min_side=32)
    (shard / "notes.txt").unlink()
    with pytest.raises(DiracError, match=r"shard holds photos this pack reads: pack into another folder"):
        pack_shard([shard / "00-other"], shard, prescale=2.0, min_side=32)
    # through a symbolic link, or from inside it as ".", the shard itself is replaced
    (tmp_path / "link").symlink_to(shard)
    monkeypatch.chdir(shard)
    for output in (tmp_path / "link", Path(".")):
        assert pack_shard([folder], output, prescale=2.0, min_side=32)[0] == 2
        assert (tmp_path / "link").is_symlink()
        assert sorted(p.relative_to(shard).as_posix() for p in shard.rglob("*.jpg")) == \
            ["00-photos/a.jpg", "00-photos/b.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "link", "other", "photos", "shard"]
    # stopped as the new manifest moves in, the new photos move out again and the earlier shard's back in
    earlier = sorted(p.relative_to(shard).as_posix() for p in shard.rglob("*"))
    (other / "d.jpg").unlink()
    rename, stops = Path.rename, []

    def stopping(path: Path, target: Path) -> Path:
        if Path(target) == shard / "shard.json" and not stops:
            stops.append(target)
            raise KeyboardInterrupt
        return rename(path, target)

    monkeypatch.setattr(Path, "rename", stopping)
    with pytest.raises(KeyboardInterrupt):
        pack_shard([other], shard, prescale=2.0, min_side=32)
    assert stops and sorted(p.relative_to(shard).as_posix() for p in shard.rglob("*")) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "link", "other", "photos", "shard"]


def test_the_held_out_split_is_fixed_by_name_and_no_training_path_sees_it(tmp_path: Path):
    from diraccodec.errors import DiracError
    from diraccodec.training.crops import CropSampler
    from diraccodec.training.data import HELD_OUT_SHARE, held_out_images, is_held_out, training_images

    names = [f"img_{index:05d}" for index in range(4000)]
    held = sorted(name for name in names if is_held_out(Path(f"{name}.jpg")))
    assert abs(len(held) / len(names) - HELD_OUT_SHARE) < 0.01
    assert all(is_held_out(Path(f"elsewhere/{name}.png")) for name in held)  # by name: any folder, any format
    kept = [name for name in names if name not in held][:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in [*held[:2], *kept]:
        Image.new("RGB", (40, 40), (7, 0, 0)).save(folder / f"{name}.png")
    assert [p.stem for p in held_out_images([folder])] == held[:2]
    assert [p.stem for p in training_images([folder])] == kept
    for name in names[-50:]:  # adding photos moves none across the split
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
    assert set(held[:2]) <= {p.stem for p in held_out_images([folder])}
    assert set(kept) <= {p.stem for p in training_images([folder])}
    assert CropSampler([folder], 32).image_count == len(kept)  # the 8x8 additions are too small to crop
    (folder / "shard.json").write_text('{"prescale": 2.0}')  # a shard packed before the split
    with pytest.raises(DiracError, match="pack it again"):
        training_images([folder])


def test_crops_are_windows_of_the_photos_mirrored_at_random(tmp_path: Path):
    from diraccodec.training.crops import CropSampler

    folder = tmp_path / "photos"
    folder.mkdir()
    rows, columns = np.meshgrid(np.arange(50), np.arange(70), indexing="ij")
    coded = np.stack([rows * 5, columns * 3, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(coded).save(folder / "a.png")  # each pixel says where it is
    batch = CropSampler([folder], 16, scale_range=(1.0, 1.0), channels_last=True).batch(64)
    assert batch.shape == (64, 3, 16, 16) and batch.is_contiguous(memory_format=torch.channels_last)
    pixels = (batch * 255).round().to(torch.int64)
    mirrored = 0
    for crop in pixels:
        top, left = int(crop[0, 0, 0]) // 5, int(crop[1, 0, :].min()) // 3
        window = torch.from_numpy(coded[top : top + 16, left : left + 16].astype(np.int64)).permute(2, 0, 1)
        flipped = bool(crop[1, 0, 0] > crop[1, 0, -1])
        assert torch.equal(crop, window.flip(-1) if flipped else window)
        mirrored += flipped
    assert 10 < mirrored < 54


def test_a_time_budget_sets_the_step_count_and_a_run_without_moments_warms_up(photo_folder: Path, tmp_path: Path,
                                                                          capsys):
    from diraccodec.training.loop import LoopOptions, learning_rate_at

    checkpoint = tmp_path / "ck"
    train_base(options(photo_folder, checkpoint, 2))
    write_travel_copy(checkpoint, checkpoint)  # weights brought from elsewhere, without Adam moments
    budget = options(photo_folder, checkpoint, 1)  # --minutes overrides the step count
    budget.minutes, budget.calibration_steps, budget.log_every, budget.save_margin_seconds = 0.03, 3, 1000, 0.2
    state = train_base(budget)
    err = capsys.readouterr().err
    assert "ramps up over 200 steps" in err and "steps/s: this run ends near step" in err
    assert state.step > 2 + 3 and load_checkpoint_metadata(checkpoint).step == state.step
    assert json.loads(summary_path(checkpoint).read_text())["stopped_by"] == "time"
    assert (budget.steps, budget.schedule_start) == (1, 0)  # the run set its own copy's, not the caller's
    long_run = LoopOptions(checkpoint=checkpoint, steps=10_000, learning_rate=1e-3, warmup_steps=100)
    assert learning_rate_at(50, long_run, warmup_from=50) == pytest.approx(1e-5)
    assert learning_rate_at(149, long_run, warmup_from=50) == pytest.approx(1e-3)
    assert learning_rate_at(50, long_run) == pytest.approx(1e-3)  # with moments: no ramp
    assert learning_rate_at(10_000, long_run) == pytest.approx(1e-4)  # the decay ends at 1/10
    assert learning_rate_at(7_999, long_run) == pytest.approx(1e-3)  # over the last fifth
    resumed = LoopOptions(checkpoint=checkpoint, steps=10_000, learning_rate=1e-3, schedule_start=9_000)
    assert learning_rate_at(9_799, resumed) == pytest.approx(1e-3)  # a budgeted run: the end of its own steps
    assert learning_rate_at(9_900, resumed) < 1e-3


def test_a_deadline_ends_a_budgeted_run_before_its_minutes_do(photo_folder: Path, tmp_path: Path):
    """A stage launched by the candidate script ends by its launcher's deadline, whatever its
    own start-up took: the minutes it was given count from later than the deadline does."""
    budget = options(photo_folder, tmp_path / "ck", 1)
    budget.minutes, budget.deadline, budget.log_every, budget.save_margin_seconds = 1.0, time.time() + 3, 1000, 0.2
    started = time.monotonic()
    train_base(budget)
    assert time.monotonic() - started < 20 and json.loads(summary_path(tmp_path / "ck").read_text())[
        "stopped_by"] == "time"  # not the minute it was given


def test_a_deadline_ends_a_run_to_a_step_count_early_without_changing_the_count(photo_folder: Path, tmp_path: Path):
    budget = options(photo_folder, tmp_path / "ck", 10**6)
    budget.deadline, budget.log_every, budget.save_margin_seconds = time.time() + 2, 1000, 0.2
    budget.calibration_steps = 3  # where the speed would be measured under minutes
    started = time.monotonic()
    train_base(budget)
    summary = json.loads(summary_path(tmp_path / "ck").read_text())
    assert time.monotonic() - started < 20 and summary["stopped_by"] == "time"  # stopped by the deadline
    assert summary["learning_rate"] == budget.learning_rate  # its count kept: far from the decay, as at the start


def test_a_slow_first_step_does_not_end_a_budgeted_run_early(photo_folder: Path, tmp_path: Path, monkeypatch):
    """On a GPU the first step compiles the model (a minute or more). Counted in the speed, it
    made the first estimate of the run's steps so small that the decay began before the next
    estimate, and the run stopped at that count with half of its time unused."""
    import time

    from diraccodec.training import loop

    take_step, taken = loop._take_step, []

    def compiling_first(*arguments):
        if not taken:
            time.sleep(3.0)  # the compilation
        taken.append(1)
        return take_step(*arguments)

    monkeypatch.setattr(loop, "_take_step", compiling_first)
    budget = options(photo_folder, tmp_path / "ck", 1)
    budget.minutes, budget.calibration_steps, budget.log_every, budget.save_margin_seconds = 0.1, 3, 1000, 0.2
    started = time.monotonic()
    train_base(budget)
    elapsed = time.monotonic() - started
    summary = json.loads(summary_path(tmp_path / "ck").read_text())
    # the bug: the first estimate of the steps was so small that the run stopped with half its time left
    assert summary["stopped_by"] == "time" and elapsed > 0.8 * 6, (elapsed, summary["steps_this_run"])
    assert summary["steps_this_run"] > 1


def test_a_fault_mid_run_saves_the_steps_taken_before_it_goes_on(photo_folder: Path, tmp_path: Path, monkeypatch):
    """An out-of-memory error or a kernel's fault between saves (every few minutes) lost every
    step since the last one: the state is saved where the fault came, then the error goes on."""
    from diraccodec.training import loop

    take_step, taken = loop._take_step, []

    def faulting_third(*arguments):
        taken.append(1)
        if len(taken) == 3:
            raise RuntimeError("CUDA out of memory")
        return take_step(*arguments)

    monkeypatch.setattr(loop, "_take_step", faulting_third)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        train_base(options(photo_folder, tmp_path / "ck", 5))  # checkpoint_minutes 1e9: no save of its own
    assert read_state(tmp_path / "ck")[0].step == 2


def test_a_compiled_run_says_what_the_compiler_made_of_its_steps(photo_folder: Path, tmp_path: Path, monkeypatch):
    """A compiler that gives up runs the steps uncompiled and quietly: the summary counts its graphs,
    this run's alone where an earlier run in the process compiled too (train_candidate.py's stages)."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # no C++ build here
    compiled = options(photo_folder, tmp_path / "ck", 2)
    compiled.compile = True
    counters["stats"]["unique_graphs"] += 100  # an earlier stage's graphs
    counters["graph_break"]["an earlier stage's break"] += 100
    train_base(compiled)
    summary = json.loads(summary_path(tmp_path / "ck").read_text())
    assert summary["compiled"] and 1 <= summary["compiled_graphs"] < 100 and 0 <= summary["graph_breaks"] < 100
    train_base(options(photo_folder, tmp_path / "plain", 1))
    assert "compiled_graphs" not in json.loads(summary_path(tmp_path / "plain").read_text())


def test_entropy_finetune_lowers_the_rate_and_leaves_the_transforms_alone(photo_folder: Path, tmp_path: Path,
                                                                           capsys):
    from diraccodec import api
    from diraccodec.errors import DiracError
    from diraccodec.modelfiles import load_base_weights
    from diraccodec.training.entropy import EntropyTrainingOptions, train_entropy

    start = small_base_weights(tmp_path / "start")
    checkpoint, tuned = tmp_path / "entropy.safetensors", tmp_path / "tuned" / "base.safetensors"
    run = EntropyTrainingOptions(
        data=(photo_folder,), base_weights=start, checkpoint=checkpoint, steps=30, batch_size=2, patch_size=128,
        crops=4, learning_rate=1e-2, log_every=1, checkpoint_minutes=1e9, threads=1,
    )
    train_entropy(run)
    losses = [float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().err.splitlines()
              if line.startswith("step ")]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    export_base_checkpoint(checkpoint, tuned)
    before, after = load_file(str(start)), load_file(str(tuned))
    frozen = [k for k in before if k.startswith(("model.analysis", "model.synthesis", "model.log_"))]
    trained = [k for k in before if k.startswith(("model.hyper_", "tables.hyper"))]
    assert frozen and trained
    for key in frozen:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(before[key], after[key]) for key in trained)
    image = Image.open(photo_folder / "b.png").convert("RGB").crop((0, 0, 96, 80))
    assert api.decode(api.encode(image, 3, weights=tuned), weights=tuned).size == (96, 80)
    # resumed, the state's transforms would go on under other weights' id: refused before any work
    start_id, tuned_id = (load_base_weights(path).weights_id.hex() for path in (start, tuned))
    with pytest.raises(DiracError, match=rf"^the training state at \S+/entropy fine-tunes base weights {start_id}, "
                                         rf"not base\.safetensors \({tuned_id}\): name another --checkpoint"):
        train_entropy(replace(run, base_weights=tuned, steps=31))
    assert load_checkpoint_metadata(checkpoint).step == 30


def test_a_context_model_trains_from_hyperprior_weights_and_codes(photo_folder: Path, tmp_path: Path):
    from diraccodec import api
    from diraccodec.errors import DiracError

    start = small_base_weights(tmp_path / "start")
    run = options(photo_folder, tmp_path / "ck", 3)
    run.context, run.start_from = "checkerboard", start
    train_base(run)
    weights = tmp_path / "w" / "base.safetensors"
    export_base_checkpoint(run.checkpoint, weights)
    before, after = load_file(str(start)), load_file(str(weights))
    assert not torch.equal(after["model.context.parameters_net.2.weight"], torch.zeros(24, 24, 1, 1))
    assert not torch.equal(after["model.synthesis.0.weight"], before["model.synthesis.0.weight"])
    image = Image.open(photo_folder / "b.png").convert("RGB").crop((0, 0, 70, 50))
    assert api.decode(api.encode(image, 2, weights=weights), weights=weights).size == (70, 50)
    # weights that already hold a context model do not start a plain hyperprior
    again = options(photo_folder, tmp_path / "ck2", 1)
    again.start_from, again.context = weights, "none"
    with pytest.raises(DiracError, match="does not fit a none context model"):
        train_base(again)


def test_a_new_ladder_starts_from_the_gains_of_the_old_one():
    from diraccodec.training.base import gains_on_ladder

    old = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
    log_gains = torch.linspace(-2.0, 0.0, 8)[:, None] * torch.tensor([[1.0, 0.5]])
    new = gains_on_ladder(log_gains, old, (0.0005, 0.001, 0.002 * 2**0.5, 0.128))
    assert torch.equal(new[1], log_gains[0]) and torch.equal(new[3], log_gains[7])
    torch.testing.assert_close(new[2], (log_gains[1] + log_gains[2]) / 2)  # halfway in log-lambda
    torch.testing.assert_close(new[0], 2 * log_gains[0] - log_gains[1])  # the end segment, extended


def test_train_base_takes_a_lower_ladder_from_trained_weights(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.codec.hyperprior import DEFAULT_LAMBDAS
    from diraccodec.modelfiles import load_base_weights

    start = small_base_weights(tmp_path / "start")
    ladder = (0.0002, *DEFAULT_LAMBDAS[1:])
    state, weights = tmp_path / "state", tmp_path / "w" / "base.safetensors"
    common = ["train", "base", "--data", str(photo_folder), "--checkpoint", str(state), "--steps", "1",
              "--batch-size", "1", "--patch-size", "64", "--threads", "1", "--start-from", str(start), "--lr", "1e-9"]
    runner = CliRunner()
    for bad in ("0.0002,0.0001", ",".join(["inf", *map(str, DEFAULT_LAMBDAS[1:])])):
        result = runner.invoke(main, [*common, "--lambdas", bad])
        assert result.exit_code == 2 and "--lambdas takes 8 positive values in ascending order" in result.output
    result = runner.invoke(main, [*common, "--lambdas", ",".join(map(str, ladder))])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["train", "export", str(state), str(weights)]).exit_code == 0
    before, after = load_base_weights(start).model, load_base_weights(weights).model
    assert after.config.lambdas == ladder
    info = json.loads(load_base_weights(weights).metadata["info"])
    assert info["started_from"] == load_base_weights(start).weights_id.hex()
    # level 1 moved down the ladder: coarser quantisation than the start's level 1
    assert after.log_gain[0].mean() < before.log_gain[0].mean() - 0.1
    torch.testing.assert_close(after.log_gain[1:], before.log_gain[1:], atol=1e-5, rtol=0)


def test_the_ladder_script_lowers_level_1s_rate(tmp_path: Path, sample_image: Image.Image):
    import subprocess
    import sys

    sample_image.crop((0, 0, 192, 128)).save(tmp_path / "a.png")
    script = Path(__file__).resolve().parent.parent / "scripts" / "ladder_rates.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--images", "1", "--lowest", "0.0005,0.0001"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| 0")]
    assert [row[1].strip() for row in rows] == ["0.0005", "0.0001"]
    assert float(rows[1][2]) < float(rows[0][2])  # a lower lambda, fewer bits


def test_the_gpu_script_reports_bad_input_in_one_line(photo_folder: Path, tmp_path: Path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "train_gpu.py"
    unlisted = tmp_path / "base.safetensors"
    save_file({"weight": torch.zeros(1)}, str(unlisted))  # weights no manifest lists
    result = subprocess.run([sys.executable, str(script), "base", "--data", str(photo_folder), "--state",
                             str(tmp_path / "state"), "--start-from", str(unlisted), "--steps", "1", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: weights" in result.stderr and "are not listed" in result.stderr


def test_a_frozen_hyperprior_stays_as_its_start_had_it_while_the_rest_trains(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main

    start = small_base_weights(tmp_path / "start")
    state, weights = tmp_path / "state", tmp_path / "w" / "base.safetensors"
    common = ["train", "base", "--data", str(photo_folder), "--checkpoint", str(state), "--batch-size", "1",
              "--patch-size", "64", "--threads", "1", "--start-from", str(start), "--context", "checkerboard",
              "--lr", "1e-2"]
    runner = CliRunner()
    result = runner.invoke(main, [*common, "--steps", "2", "--freeze-hyperprior"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [*common, "--steps", "4"])  # resumed: the state keeps its freeze
    assert result.exit_code == 0 and "apply to new runs" in result.output and "--freeze-hyperprior" in result.output
    assert runner.invoke(main, ["train", "export", str(state), str(weights)]).exit_code == 0
    before, after = load_file(str(start)), load_file(str(weights))
    hyperprior = [name for name in before if name.startswith(("model.hyper_analysis", "model.hyper_synthesis",
                                                               "model.hyper_prior"))]
    assert hyperprior and all(torch.equal(after[name], before[name]) for name in hyperprior)
    assert all(torch.equal(after[name], before[name]) for name in before if name.startswith("tables.hyper."))
    for name in ("model.synthesis.0.weight", "model.analysis.0.weight", "model.log_gain"):
        assert not torch.equal(after[name], before[name]), name
    assert not torch.equal(after["model.context.parameters_net.2.weight"], torch.zeros(24, 24, 1, 1))
    assert load_checkpoint_metadata(state).metadata["frozen_hyperprior"] is True


def test_a_resumed_run_notes_only_the_options_that_differ_from_its_state(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main

    start = small_base_weights(tmp_path / "start")
    state, weights = tmp_path / "state", tmp_path / "w" / "base.safetensors"
    common = ["train", "base", "--data", str(photo_folder), "--checkpoint", str(state), "--batch-size", "1",
              "--patch-size", "64", "--threads", "1"]
    runner = CliRunner()
    result = runner.invoke(main, [*common, "--steps", "1", "--start-from", str(start), "--context", "checkerboard",
                                  "--freeze-hyperprior"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [*common, "--steps", "2"])  # the defaults ask for nothing the state lacks
    assert result.exit_code == 0 and "apply to new runs" not in result.output, result.output
    for asked in (["--context", "none"], ["--start-from", str(start)]):
        result = runner.invoke(main, [*common, "--steps", "2", *asked])
        assert result.exit_code == 0 and "apply to new runs" in result.output, (asked, result.output)
    # a new run from checkerboard weights keeps their context model unless told otherwise
    assert runner.invoke(main, ["train", "export", str(state), str(weights)]).exit_code == 0
    fresh = tmp_path / "fresh"
    result = runner.invoke(main, [*common[:4], "--checkpoint", str(fresh), *common[6:], "--steps", "1",
                                  "--start-from", str(weights)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint_metadata(fresh).metadata["config"]["context"] == "checkerboard"


def test_a_frozen_hyperprior_learns_the_means_and_scales_of_new_latents_alone(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.entropy.models import SCALE_LOWER_BOUND

    start = small_base_weights(tmp_path / "start")
    state, weights = tmp_path / "state", tmp_path / "w" / "base.safetensors"
    common = ["train", "base", "--data", str(photo_folder), "--checkpoint", str(state), "--batch-size", "1",
              "--patch-size", "64", "--threads", "1", "--start-from", str(start), "--latent-channels", "16",
              "--lr", "1e-2", "--freeze-hyperprior"]
    runner = CliRunner()
    result = runner.invoke(main, [*common, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "learns the means and scales of the new latents 13-16 alone" in result.output
    assert runner.invoke(main, ["train", "export", str(state), str(tmp_path / "halfway.safetensors")]).exit_code == 0
    assert runner.invoke(main, [*common, "--steps", "4"]).exit_code == 0  # resumed: the state keeps the rule
    assert load_checkpoint_metadata(state).metadata["frozen_latents"] == 12
    assert runner.invoke(main, ["train", "export", str(state), str(weights)]).exit_code == 0
    before, halfway, after = (load_file(str(path)) for path in (start, tmp_path / "halfway.safetensors", weights))
    for name in before:
        if name.startswith(("model.hyper_prior", "model.hyper_analysis.2", "model.hyper_analysis.4",
                            "model.hyper_synthesis.0", "model.hyper_synthesis.2", "tables.hyper.")):
            assert torch.equal(after[name], before[name]), name
    # the hyper-analysis does not read the new latents: their columns stay 0
    reads = after["model.hyper_analysis.0.weight"]
    assert torch.equal(reads[:, :12], before["model.hyper_analysis.0.weight"]) and not reads[:, 12:].any()
    old_rows, new_rows = torch.zeros(32, dtype=torch.bool), torch.zeros(32, dtype=torch.bool)
    old_rows[:12] = old_rows[16:28] = True
    new_rows[12:16] = new_rows[28:] = True
    grown_start = {"weight": torch.zeros(8, 12, 3, 3), "bias": torch.tensor([0.0] * 4 + [SCALE_LOWER_BOUND] * 4)}
    for part, started in grown_start.items():
        predicts = after[f"model.hyper_synthesis.4.{part}"]
        assert torch.equal(predicts[old_rows], before[f"model.hyper_synthesis.4.{part}"])
        assert not torch.equal(predicts[new_rows], started), part  # the new latents' rows learn
        assert not torch.equal(predicts[new_rows], halfway[f"model.hyper_synthesis.4.{part}"][new_rows]), part


def test_train_base_grows_wider_transforms_and_more_latents_out_of_trained_weights(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec import api
    from diraccodec.cli import main
    from diraccodec.errors import DiracError
    from diraccodec.modelfiles import load_base_weights

    start = small_base_weights(tmp_path / "start")
    state, weights = tmp_path / "state", tmp_path / "w" / "base.safetensors"
    common = ["train", "base", "--data", str(photo_folder), "--checkpoint", str(state), "--steps", "1",
              "--batch-size", "1", "--patch-size", "64", "--threads", "1", "--start-from", str(start)]
    runner = CliRunner()
    result = runner.invoke(main, [*common, "--analysis-channels", "0"])
    assert result.exit_code == 2 and "Invalid value for '--analysis-channels'" in result.output
    with pytest.raises(DiracError, match="the synthesis width must be at least 1, got 0"):
        train_base(replace(options(photo_folder, tmp_path / "fresh", 1), synthesis_channels=0))
    result = runner.invoke(main, [*common, "--synthesis-channels", "4"])
    assert result.exit_code == 2 and "does not fit a none context model of synthesis 4" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, [*common, "--analysis-channels", "16", "--synthesis-channels", "12",
                                  "--latent-channels", "16"])
    assert result.exit_code == 0, result.output
    assert "(analysis 8 -> 16, synthesis 8 -> 12, latents 12 -> 16)" in result.output
    assert runner.invoke(main, ["train", "export", str(state), str(weights)]).exit_code == 0
    grown = load_base_weights(weights).model
    assert (grown.config.analysis_width, grown.config.synthesis_width, grown.config.channels) == (16, 12, 8)
    assert grown.config.latent_channels == 16
    assert grown.analysis[0].weight.shape == (16, 3, 5, 5) and grown.synthesis[0].weight.shape == (16, 12, 5, 5)
    image = Image.open(photo_folder / "b.png").convert("RGB").crop((0, 0, 70, 50))
    assert api.decode(api.encode(image, 2, weights=weights), weights=weights).size == (70, 50)


def test_the_entropy_model_runs_in_float32_under_bfloat16_autocast():
    """Training's --bf16 speeds up the transforms; the rate stays float32, where bfloat16's 8
    bits would round the latents' integer steps and the likelihoods' small differences."""
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior

    model = MultiRateHyperprior(HyperpriorConfig(8, 12))
    y = (torch.randn(2, 12, 8, 8) * 40).bfloat16()  # as a bfloat16 analysis hands it over
    torch.manual_seed(0)
    plain = model.rate(y.float())
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.rate(y)
    for a, b in zip(plain, mixed, strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)


def test_a_state_never_replaces_what_is_not_a_state(photo_folder: Path, tmp_path: Path):
    """A save replaces the state's whole folder: a folder of photos named as the state lost them."""
    from diraccodec.errors import DiracError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("kept")
    with pytest.raises(DiracError, match=r"victim holds other files than a training state \(notes.txt\)"):
        train_base(options(photo_folder, victim, 1))
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    (tmp_path / "a-file").write_text("kept")
    with pytest.raises(DiracError, match="a-file is a file, not a training state's folder"):
        train_base(options(photo_folder, tmp_path / "a-file", 1))
    with pytest.raises(DiracError, match="a-file is not a folder"):  # before training, not at the save
        train_base(options(photo_folder, tmp_path / "a-file" / "ck", 1))
    from diraccodec.training.checkpoint import write_state

    state = tmp_path / "state"
    train_base(options(photo_folder, state, 1))
    state_now, tensors = read_state(state)
    (state / ".DS_Store").write_text("came mid-run")  # after the run's checks: the save keeps it
    write_state(state, tensors, state_now)
    assert (state / ".DS_Store").read_text() == "came mid-run" and load_checkpoint_metadata(state).step == 1
    (state / "notes.txt").write_text("came mid-run")
    with pytest.raises(DiracError, match=r"state holds other files than a training state \(notes.txt\)"):
        train_base(options(photo_folder, state, 2))  # the next run asks for it to be moved out
    (state / "notes.txt").unlink()
    assert train_base(options(photo_folder, state, 2)).step == 2  # a hidden file says nothing of the folder
    assert (state / ".DS_Store").read_text() == "came mid-run"
    stranded = tmp_path / ".state.partial"
    stranded.mkdir(exist_ok=True)
    (state / ".DS_Store").rename(stranded / ".DS_Store")  # as a save killed before its swap leaves it
    with pytest.raises(DiracError, match=r"left by an interrupted save: move it back into"):  # not cleared
        write_state(state, tensors, state_now)
    assert (stranded / ".DS_Store").read_text() == "came mid-run"
    for bad in (".", "/"):
        with pytest.raises(DiracError, match="name a folder of its own for the training state"):
            train_base(options(photo_folder, Path(bad), 1))
    auto = options(photo_folder, tmp_path / "ck", 1)
    auto.device = "auto"  # the codec's word, not training's
    with pytest.raises(DiracError, match=r"unknown device 'auto' \(use cpu or cuda\)"):
        train_base(auto)
    budget = options(photo_folder, tmp_path / "ck", 1)
    budget.minutes = 0.2  # 12 s, within the 15 s kept for the save
    with pytest.raises(DiracError, match=r"--minutes 0\.2 leaves no time to train"):
        train_base(budget)
    assert not (tmp_path / "ck").exists()


def test_an_export_beside_a_state_stays_and_one_inside_it_is_refused(photo_folder: Path, tmp_path: Path):
    from click.testing import CliRunner

    from diraccodec.cli import main

    state = tmp_path / "base"
    train_base(options(photo_folder, state, 1))
    exported = tmp_path / "base.safetensors"  # the name an older layout's checkpoint had
    export_base_checkpoint(state, exported)
    train_base(options(photo_folder, state, 2))  # its save must not delete the export as that older checkpoint
    assert exported.is_file() and load_checkpoint_metadata(state).step == 2
    result = CliRunner().invoke(main, ["train", "export", str(state), str(state / "state.safetensors.000")])
    assert result.exit_code == 2 and "or inside it: write it elsewhere" in result.output, result.output
    assert load_checkpoint_metadata(state).step == 2


def test_a_damaged_training_photo_or_shard_manifest_is_named_in_one_line(photo_folder: Path, tmp_path: Path):
    import shutil

    from diraccodec.errors import DiracError

    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    good = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(good[: len(good) // 3])  # cut short
    with pytest.raises(DiracError, match=r"cannot read the training photo .*a.jpg: image file is truncated"):
        train_base(options(folder, tmp_path / "ck", 1))
    (folder / "a.jpg").write_bytes(b"not a photo")
    with pytest.raises(DiracError, match=r"cannot read the training photo .*a.jpg: cannot identify image file"):
        train_base(options(folder, tmp_path / "ck", 1))
    (folder / "a.jpg").write_bytes(good)
    (folder / "shard.json").write_text("{bad")
    with pytest.raises(DiracError, match=r"shard.json is not a shard's manifest"):
        train_base(options(folder, tmp_path / "ck", 1))


def tiny_base_state(folder: Path, seconds: float = 0.0) -> Path:
    """A base training state of an untrained tiny model (N=8, M=12), written directly: no training."""
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.training.checkpoint import TrainingState, write_state

    torch.manual_seed(0)
    model = MultiRateHyperprior(HyperpriorConfig(8, 12))
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    state = TrainingState(step=7, seconds=seconds, metadata={"kind": "base", "config": model.config.as_fields()})
    write_state(folder / "state", tensors, state)
    return folder / "state"


def test_exported_weights_record_the_hours_the_state_trained(tmp_path: Path):
    """The weights file's info says how long its state trained: hours, not minutes."""
    state = tiny_base_state(tmp_path, seconds=5400.0)  # an hour and a half
    exported = tmp_path / "w.safetensors"
    export_base_checkpoint(state, exported)
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as handle:
        info = json.loads(handle.metadata()["info"])
    assert info["training_hours"] == 1.5 and info["steps"] == 7 and info["kind"] == "base"


def test_a_travel_copy_keeps_integer_tensors_as_they_are(tmp_path: Path):
    """The weight average's update count must survive a travel copy exactly (float16 would round it)."""
    from diraccodec.training.checkpoint import TrainingState, write_state

    tensors = {"model.w": torch.linspace(-1, 1, 6), "average.w": torch.linspace(-1, 1, 6) * 0.5,
               "average.updates": torch.tensor([12345], dtype=torch.int64),
               "model.counts": torch.tensor([3, 70001], dtype=torch.int32)}
    write_state(tmp_path / "full", tensors, TrainingState(step=12345, seconds=1.0, metadata={}))
    write_travel_copy(tmp_path / "full", tmp_path / "copy")
    _, copy = read_state(tmp_path / "copy")
    assert copy["model.w"].dtype == torch.float16 and copy["average.w"].dtype == torch.float16
    assert copy["average.updates"].dtype == torch.int64 and copy["average.updates"].tolist() == [12345]
    assert copy["model.counts"].dtype == torch.int32 and copy["model.counts"].tolist() == [3, 70001]


def test_an_older_checkpoint_refuses_adam_moments_from_another_step(tmp_path: Path):
    """The older layout's moments file must match its checkpoint's step, or a resume mixes two runs."""
    from diraccodec.errors import DiracError

    header = {"seconds": "1.000", "meta": json.dumps({"kind": "base"})}
    save_file({"model.w": torch.ones(3), "rng": torch.zeros(4, dtype=torch.uint8)}, str(tmp_path / "old.safetensors"),
              metadata={**header, "step": "5"})
    moments = {"adam.0.exp_avg": torch.full((3,), 0.25), "adam.0.exp_avg_sq": torch.full((3,), 0.5),
               "adam.0.step": torch.tensor([5.0])}
    save_file(moments, str(tmp_path / "old.optim.safetensors"), metadata={**header, "step": "5"})
    state, tensors = read_state(tmp_path / "old")  # the same step: the moments join the state
    assert state.step == 5 and torch.equal(tensors["adam.0.exp_avg"], moments["adam.0.exp_avg"])
    assert "rng.data" in tensors and "rng" not in tensors
    save_file(moments, str(tmp_path / "old.optim.safetensors"), metadata={**header, "step": "4"})
    with pytest.raises(DiracError, match=r"old.optim.safetensors is from step 4, the model from 5"):
        read_state(tmp_path / "old")


def test_a_state_whose_header_outgrows_its_first_part_still_reads_its_metadata(tmp_path: Path):
    """load_checkpoint_metadata reads the first part alone: a longer header must still be read whole."""
    from diraccodec.training.checkpoint import TrainingState, state_parts, write_state

    metadata = {"kind": "base", "note": "x" * 2000}
    tensors = {f"model.layer{index}.weight": torch.full((2,), float(index)) for index in range(50)}
    write_state(tmp_path / "state", tensors, TrainingState(step=42, seconds=9.5, metadata=metadata, warmup_from=40),
                part_bytes=1024)
    first = state_parts(tmp_path / "state")[0].read_bytes()
    assert int.from_bytes(first[:8], "little") > len(first)  # the header runs on into the next parts
    state = load_checkpoint_metadata(tmp_path / "state")
    assert (state.step, state.seconds, state.metadata, state.warmup_from) == (42, 9.5, metadata, 40)


def tiny_loop(checkpoint: Path, steps: int, console: Console | None = None, **changes: object):
    """run_loop over a one-weight model, its loss a fixed function of it and of inputs drawn from
    the run's generator: the loop alone, in milliseconds. Returns (the state, the model, its optimiser)."""
    from diraccodec.compute import thread_count_restored
    from diraccodec.training.loop import LoopOptions, run_loop, start_run

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    settings = LoopOptions(checkpoint=checkpoint, steps=steps, **{"log_every": 1000, "checkpoint_minutes": 1e9,
                                                                  "threads": 1, "compile": False, **changes})
    console = console or Console(file=io.StringIO())
    with thread_count_restored():  # start_run sets the count for the run, as the training commands do
        run = start_run(model, settings, console)

        def loss() -> dict[str, torch.Tensor]:
            x = torch.rand(4, 1, generator=run.generator)
            return {"loss": (run.step_model(x) - 3).square().mean()}

        return run_loop(run, settings, loss, console), model, run.optimizer


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(context, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(context, gradient: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Triton Error [CUDA]: out of resource: shared memory\nRequired: 262144")


class _CompiledThatFailsAsItRuns(torch.nn.Module):
    """What torch.compile returns, its generated backward kernel failing at launch."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FailsInBackward.apply(self.model(x))


def test_a_compiled_step_that_fails_as_it_runs_is_taken_again_uncompiled(tmp_path: Path, monkeypatch):
    """A generated kernel's fault in the first step (suppress_errors covers compiling alone) ended
    a run before its first save: the step is taken again uncompiled, on the same batch, and the
    run ends as an uncompiled run would. A fault the model makes uncompiled too ends it."""
    state, plain, plain_optimizer = tiny_loop(tmp_path / "plain", 3)
    monkeypatch.setattr(torch, "compile", _CompiledThatFailsAsItRuns)
    console = Console(file=io.StringIO(), width=300)
    state, fallen_back, optimizer = tiny_loop(tmp_path / "ck", 3, console, compile=True)
    assert state.step == 3 and all(torch.equal(mine, theirs) for mine, theirs in zip(
        fallen_back.parameters(), plain.parameters(), strict=True))  # the same batches, each step taken once
    assert [entry["step"] for entry in optimizer.state.values()] == [
        entry["step"] for entry in plain_optimizer.state.values()]  # no step counted twice
    assert ("the compiled step failed (RuntimeError: Triton Error [CUDA]: out of resource: shared memory): "
            "it is taken again uncompiled, and so are the later ones") in console.file.getvalue()
    assert json.loads(summary_path(tmp_path / "ck").read_text())["compiled"] is False

    def fails_uncompiled_too(model: torch.nn.Module) -> torch.nn.Module:
        uncompiled = model.forward
        model.forward = lambda x: _FailsInBackward.apply(uncompiled(x))
        return _CompiledThatFailsAsItRuns(model)

    monkeypatch.setattr(torch, "compile", fails_uncompiled_too)
    with pytest.raises(RuntimeError, match="out of resource"):
        tiny_loop(tmp_path / "always", 2, compile=True)
    monkeypatch.setattr(torch, "compile", lambda model: _OutOfMemory())
    with pytest.raises(torch.cuda.OutOfMemoryError):  # uncompiled, the step would need more
        tiny_loop(tmp_path / "memory", 2, compile=True)


class _OutOfMemory(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_long_run_saves_its_state_every_checkpoint_minutes_before_it_ends(tmp_path: Path, monkeypatch):
    """A run saves as it goes: one that crashed between its start and its end kept nothing."""
    from diraccodec.training import loop

    save, saved_at = loop.TrainingRun.save, []

    def recorded(run, settings):
        saved_at.append(run.state.step)
        return save(run, settings)

    monkeypatch.setattr(loop.TrainingRun, "save", recorded)
    tiny_loop(tmp_path / "ck", 3, checkpoint_minutes=0.0)  # any time at all since the last save is due
    assert saved_at[:3] == [1, 2, 3] and read_state(tmp_path / "ck")[0].step == 3


def test_a_run_that_takes_no_step_still_leaves_a_state(tmp_path: Path):
    """A run with its steps already done (or a budget spent at once) still leaves a state to resume and export."""
    from diraccodec.training.checkpoint import state_exists

    state, _, _ = tiny_loop(tmp_path / "ck", 0)
    assert state.step == 0 and state_exists(tmp_path / "ck") and read_state(tmp_path / "ck")[0].step == 0
    assert json.loads(summary_path(tmp_path / "ck").read_text())["stopped_by"] == "steps"


def test_minutes_that_end_before_a_later_deadline_still_end_the_run(tmp_path: Path):
    """--minutes bounds a run launched with a distant deadline: the earlier of the two ends it."""
    tiny_loop(tmp_path / "ck", 1, minutes=1e-6, deadline=time.time() + 3600, save_margin_seconds=0.0, stop_after=5)
    summary = json.loads(summary_path(tmp_path / "ck").read_text())
    assert summary["stopped_by"] == "time" and summary["steps_this_run"] == 0  # not stop_after's 5 steps


def test_training_gives_the_callers_signal_handlers_back(tmp_path: Path):
    """Training catches SIGINT and SIGTERM for itself: after it, Ctrl-C and `kill` reach the caller's handlers again."""
    def mine(signum: int, frame: object) -> None:
        pass

    before = {number: signal.signal(number, mine) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        tiny_loop(tmp_path / "ck", 1)
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def position_coded_photo(folder: Path, width: int, height: int) -> np.ndarray:
    """A photo whose red says its column and green its row, saved under a name of the training split."""
    from diraccodec.training.data import is_held_out

    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coded = np.stack([columns * 7, rows * 7, np.full_like(rows, 9)], axis=-1).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    name = next(f"p{index}.png" for index in range(1000) if not is_held_out(Path(f"p{index}.png")))
    Image.fromarray(coded).save(folder / name)
    return coded


def test_crops_reach_the_last_row_and_column_of_a_photo(tmp_path: Path):
    """Every position is a crop's: one pixel more than the patch gives two places each way, both drawn."""
    from diraccodec.training.crops import CropSampler

    position_coded_photo(tmp_path / "photos", 33, 33)
    pixels = (CropSampler([tmp_path / "photos"], 32, scale_range=(1.0, 1.0)).batch(64) * 255).round().long()
    lefts = {int(crop[0].min()) // 7 for crop in pixels}
    tops = {int(crop[1].min()) // 7 for crop in pixels}
    assert lefts == {0, 1} and tops == {0, 1}


def test_a_draw_of_one_still_crops_inside_the_photo(tmp_path: Path, monkeypatch):
    """A uniform source that gives 1.0 (some devices' generators have) picks the last place, not one past the photo."""
    from diraccodec.training.crops import CropSampler

    coded = position_coded_photo(tmp_path / "photos", 35, 34)  # 4 columns and 3 rows of places
    sampler = CropSampler([tmp_path / "photos"], 32, scale_range=(1.0, 1.0))

    def rand(size, generator=None, device=None):
        return torch.ones(size if isinstance(size, tuple) else (size,), device=device)

    monkeypatch.setattr(torch, "rand", rand)
    crop = (sampler.batch(1)[0] * 255).round().long()  # and not mirrored: the coin says >= 0.5
    assert torch.equal(crop, torch.from_numpy(coded[2:, 3:].astype(np.int64)).permute(2, 0, 1))


def test_a_photo_exactly_the_patch_size_is_trained_on():
    """A photo no larger than the patch is still one whole crop: only smaller ones are left out."""
    from diraccodec.training.crops import copy_sizes

    assert copy_sizes((32, 32), 32, [1.5, 2.0]) == [(32, 32)]
    assert copy_sizes((48, 32), 32, [1.0]) == [(48, 32)]
    assert copy_sizes((48, 31), 32, [1.0]) == []


def test_a_small_photos_downscales_stop_where_it_would_lose_its_shape():
    """A downscale the photo cannot take stops at its largest: squeezing each side up to the patch distorts it."""
    from diraccodec.training.crops import copy_sizes

    sizes = copy_sizes((96, 64), 32, [1.5, 3.0])
    assert sizes == [(64, 43), (48, 32)] and all(abs(w / h - 1.5) < 0.02 for w, h in sizes)


def test_a_photo_too_small_for_several_downscales_is_kept_once():
    """Copies of the same size would make a small photo drawn as often as several large ones' downscales."""
    from diraccodec.training.crops import copy_sizes

    assert copy_sizes((40, 32), 32, [1.5, 1.75, 2.0]) == [(40, 32)]
    assert copy_sizes((1000, 800), 32, [2.0, 2.0]) == [(500, 400)]
