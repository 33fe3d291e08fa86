"""scripts/train_gpu.py and the training state it keeps, at tiny sizes on the CPU.

The command is made for short GPU runs; here it runs on a few small photos made by the test,
with a model a few channels wide, to check what must hold on any device: it resumes exactly,
its state comes in parts under the limit that join back exactly, a time budget stops and saves,
it reports its throughput, and a state survives a save killed midway.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image
from safetensors.torch import load, save_file

from diraccodec.training import checkpoint
from diraccodec.training.checkpoint import (
    TrainingState,
    load_checkpoint_metadata,
    read_state,
    state_folder,
    state_parts,
    summary_path,
    write_state,
)
from tests.conftest import ROOT, load_script, make_photos

TINY_BASE = ["--channels", "8", "--latent-channels", "12", "--batch-size", "2", "--patch-size", "64",
             "--threads", "1", "--log-every", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"), ["a", "b", "c"])


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("train_gpu")


def train(script: ModuleType, photos: Path, state: Path, *options: str) -> int:
    return script.main(["base", "--state", str(state), "--data", str(photos), *TINY_BASE, *options])


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_a_run_stopped_halfway_and_resumed_equals_one_run_bit_for_bit(script, photos, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    exact = ("--steps", "6", "--exact-moments", "--average-decay", "0.5")
    assert train(script, photos, straight, *exact) == 0
    assert train(script, photos, resumed, *exact, "--stop-after", "3") == 0
    assert load_checkpoint_metadata(resumed).step == 3
    assert train(script, photos, resumed, *exact) == 0
    (state_a, a), (state_b, b) = read_state(straight), read_state(resumed)
    assert state_a.step == state_b.step == 6
    assert any(name.startswith("adam.") for name in a) and "average.updates" in a and "rng.data" in a
    assert_same_tensors(a, b)  # parameters, Adam moments, weight average and every RNG
    assert a["adam.0.exp_avg"].dtype == torch.float32


def test_bfloat16_moments_halve_their_size_and_resume_closely(script, photos, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(script, photos, straight, "--steps", "4") == 0
    assert train(script, photos, resumed, "--steps", "4", "--stop-after", "2") == 0
    assert read_state(resumed)[0].step == 2  # stopped halfway, then resumed
    assert train(script, photos, resumed, "--steps", "4") == 0
    assert read_state(straight)[0].step == read_state(resumed)[0].step == 4
    a, b = read_state(straight)[1], read_state(resumed)[1]
    assert {a[name].dtype for name in a if name.startswith("adam.") and not name.endswith(".step")} == {torch.bfloat16}
    weights = [name for name in a if name.startswith("model.")]
    assert all(a[name].dtype == torch.float32 for name in weights)
    for name in weights:  # one step taken with moments rounded to 8 bits: close, not equal
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0, msg=name)


def test_the_command_reports_throughput_exports_and_delivers_its_results(script, photos, tmp_path):
    from diraccodec import api

    state, output, weights = tmp_path / "checkpoints" / "base", tmp_path / "out", tmp_path / "w" / "base.safetensors"
    assert train(script, photos, state, "--steps", "3", "--output", str(output), "--export", str(weights),
                 "--part-mib", "0.1") == 0
    summary = json.loads(summary_path(state).read_text())
    assert summary["step"] == 3 and summary["stopped_by"] == "steps" and summary["mpx_per_second"] > 0
    assert summary["pixels_per_step"] == 2 * 64 * 64 and summary["startup_seconds"] >= 0
    assert summary["first_figures"]["loss"] > 0 and summary["last_figures"]["loss"] > 0
    log = state.with_name("base.log").read_text()
    assert "Mpx/s" in log and log.splitlines()[-2].startswith("summary {")
    parts = state_parts(state)
    assert len(parts) > 1 and all(part.stat().st_size <= 0.1 * 2**20 for part in parts)
    delivered = sorted(path.relative_to(output).as_posix() for path in output.rglob("*") if path.is_file())
    assert delivered == ["base.log", *(f"base/{part.name}" for part in parts)]
    assert read_state(output / "base")[0].step == 3  # the delivered folder is the state itself
    image = Image.open(photos / "a.png").convert("RGB")
    assert api.decode(api.encode(image, 2, weights=weights), weights=weights).size == image.size


def test_profiled_steps_say_where_their_time_went_and_a_run_may_end_while_profiling(script, photos, tmp_path):
    state = tmp_path / "base"
    assert train(script, photos, state, "--steps", "5", "--profile-steps", "2", "--profile-after", "1") == 0
    log = state.with_name("base.log").read_text()
    line = next(line for line in log.splitlines() if line.startswith("profile of steps 2-3 of this run: "))
    assert " s a step, the device busy 0.0000 s of it (0%), 0 kernel launches and " in line
    assert "Self CPU time total" in log and "aten::" in log  # the operators' table
    assert json.loads(summary_path(state).read_text())["step"] == 5
    ended = tmp_path / "ended"
    assert train(script, photos, ended, "--steps", "2", "--profile-steps", "5", "--profile-after", "1") == 0
    assert "profile of" not in ended.with_name("ended.log").read_text()
    assert json.loads(summary_path(ended).read_text())["mpx_per_second"] > 0


def test_a_profiler_that_fails_costs_a_log_line_not_the_run(script, photos, tmp_path, monkeypatch):
    from diraccodec.training import speed

    def refused(*args, **kwargs):
        raise RuntimeError("profiler unavailable")

    monkeypatch.setattr(speed, "profile", refused)
    state = tmp_path / "base"
    assert train(script, photos, state, "--steps", "4", "--profile-steps", "1", "--profile-after", "1") == 0
    assert "no profile: profiler unavailable" in state.with_name("base.log").read_text()
    assert json.loads(summary_path(state).read_text())["step"] == 4


def test_parts_stay_under_the_limit_and_join_into_one_safetensors_stream(tmp_path):
    tensors = {"model.big": torch.randn(300, 200), "model.small": torch.arange(7), "adam.0.step": torch.ones(1)}
    state = TrainingState(12, 3.5, {"note": "x"}, warmup_from=4)
    limit = 40_000
    parts = write_state(tmp_path / "s", tensors, state, part_bytes=limit)
    joined = b"".join(part.read_bytes() for part in parts)
    assert len(parts) == -(-len(joined) // limit) > 1
    assert all(part.stat().st_size == limit for part in parts[:-1]) and parts[-1].stat().st_size <= limit
    assert_same_tensors(load(joined), tensors)  # `cat` of the parts is a plain safetensors file
    back, read = read_state(tmp_path / "s.safetensors")  # the older name of the same state
    assert back == state and load_checkpoint_metadata(tmp_path / "s") == state
    assert_same_tensors(read, tensors)
    assert write_state(tmp_path / "s", tensors, state) == [tmp_path / "s" / "state.safetensors.000"]


def test_a_save_killed_midway_leaves_the_previous_state(tmp_path, monkeypatch):
    path, old = tmp_path / "s", {"model.w": torch.zeros(3)}
    write_state(path, old, TrainingState(1, 0.0, {}))

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", killed)  # after the parts are written, before they count
    with pytest.raises(KeyboardInterrupt):
        write_state(path, {"model.w": torch.ones(3)}, TrainingState(2, 0.0, {}))
    monkeypatch.undo()
    assert read_state(path)[0].step == 1 and torch.equal(read_state(path)[1]["model.w"], old["model.w"])
    # killed between its two renames: only the previous folder stands, and it is read
    state_folder(path).rename(tmp_path / ".s.previous")
    assert read_state(path)[0].step == 1
    write_state(path, {"model.w": torch.ones(3)}, TrainingState(3, 0.0, {}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # nothing left behind
    assert read_state(path)[0].step == 3


def test_a_time_budget_stops_the_run_in_time_and_saves(script, photos, tmp_path):
    state, budget = tmp_path / "base", 0.06 * 60
    started = time.monotonic()
    assert train(script, photos, state, "--minutes", "0.06", "--save-margin", "0.8") == 0
    elapsed = time.monotonic() - started
    summary = json.loads(summary_path(state).read_text())
    assert summary["stopped_by"] == "time" and summary["steps_this_run"] > 0
    assert load_checkpoint_metadata(state).step == summary["step"]
    # the save at the end may overrun the margin on a loaded machine; without the budget it would run 0.1 M steps
    assert summary["seconds"] <= budget + 2 and elapsed < budget + 10


def test_sigterm_stops_at_a_step_boundary_saves_and_delivers(photos, tmp_path):
    state, output = tmp_path / "base", tmp_path / "out"
    script = ROOT / "scripts" / "train_gpu.py"
    command = [sys.executable, str(script), "base", "--state", str(state), "--data", str(photos), *TINY_BASE,
               "--steps", "100000", "--output", str(output)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen, deadline = "", time.monotonic() + 120
    while "step 5/" not in seen and time.monotonic() < deadline:
        seen += process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[1]
    assert process.returncode == 130, rest
    assert "interrupted: checkpoint saved at step" in rest
    step = load_checkpoint_metadata(state).step
    assert step >= 5 and read_state(output / "base")[0].step == step
    assert json.loads(summary_path(state).read_text())["stopped_by"] == "interrupted"


def test_the_diffusion_decoder_trains_on_reconstructions_made_in_the_batch(script, photos, tmp_path):
    from diraccodec.modelfiles import load_diffusion_weights

    state, weights = tmp_path / "diffusion", tmp_path / "w" / "diffusion.safetensors"
    assert script.main(["diffusion", "--state", str(state), "--data", str(photos), "--widths", "8,16,16",
                        "--batch-size", "2", "--patch-size", "64", "--steps", "2", "--threads", "1",
                        "--device", "cpu", "--export", str(weights)]) == 0
    summary = json.loads(summary_path(state).read_text())
    assert summary["step"] == 2 and summary["mpx_per_second"] > 0
    assert load_diffusion_weights(weights).model.config.widths == (8, 16, 16)


def test_the_restoration_filter_trains_through_the_command(script, photos, tmp_path):
    from diraccodec.modelfiles import load_restoration_weights

    state, weights = tmp_path / "restoration", tmp_path / "w" / "restoration.safetensors"
    assert script.main(["restoration", "--state", str(state), "--data", str(photos), "--from-scratch",
                        "--batch-size", "1", "--patch-size", "64", "--steps", "1", "--threads", "1",
                        "--device", "cpu", "--export", str(weights)]) == 0
    assert load_checkpoint_metadata(state).metadata["kind"] == "restoration"
    assert load_restoration_weights(weights) is not None


def test_a_travel_copy_is_float16_without_moments_and_resumes_with_a_ramp(script, photos, tmp_path, capsys):
    state, carried = tmp_path / "base", tmp_path / "carried"
    train(script, photos, state, "--steps", "2")
    assert script.main(["base", "--state", str(state), "--travel-copy", str(carried)]) == 0
    tensors = read_state(carried)[1]
    assert not any(name.startswith("adam.") for name in tensors)
    assert {tensors[name].dtype for name in tensors if name.startswith("model.")} == {torch.float16}
    train(script, photos, carried, "--steps", "3")
    assert "the learning rate ramps up" in capsys.readouterr().err
    assert read_state(carried)[0].warmup_from == 2  # saved, so that a run stopped mid-ramp goes on with it


def test_an_older_single_file_checkpoint_is_read_exported_and_replaced(script, photos, tmp_path):
    state = tmp_path / "base"
    train(script, photos, state, "--steps", "2", "--exact-moments")
    saved, tensors = read_state(state)
    header = {"step": str(saved.step), "seconds": "1.0", "meta": json.dumps(saved.metadata)}
    legacy, legacy_moments = tmp_path / "old.safetensors", tmp_path / "old.optim.safetensors"
    renamed = {"rng": "rng.data", "rng_global": "rng.torch"}
    save_file({old: tensors[new] for old, new in renamed.items()} |
              {k: v for k, v in tensors.items() if k.startswith("model.")}, str(legacy), metadata=header)
    save_file({k: v for k, v in tensors.items() if k.startswith("adam.")}, str(legacy_moments), metadata=header)
    assert_same_tensors(read_state(legacy)[1], tensors)
    assert train(script, photos, legacy, "--steps", "2", "--stop-after", "0", "--exact-moments",
                 "--export", str(tmp_path / "w.safetensors")) == 0
    assert (tmp_path / "w.safetensors").exists()
    assert not legacy.exists() and not legacy_moments.exists()  # replaced by the folder
    assert_same_tensors(read_state(tmp_path / "old")[1], tensors)


def test_a_fault_mid_run_still_exports_and_delivers_the_last_saved_state(script, photos, tmp_path, monkeypatch):
    """Out of GPU memory, or a compiler's error, in the middle of a rare GPU run: the command
    logs the traceback, exports the state saved before the fault, delivers it, and exits 1."""
    state, output, weights = tmp_path / "base", tmp_path / "out", tmp_path / "w" / "base.safetensors"
    assert train(script, photos, state, "--steps", "2") == 0

    def faulty(options, console):
        raise RuntimeError("CUDA out of memory (as a test raises it)")

    monkeypatch.setitem(script.TRAINERS, "base", faulty)
    assert train(script, photos, state, "--steps", "4", "--export", str(weights), "--output", str(output)) == 1
    log = state.with_name("base.log").read_text()
    assert "Traceback" in log and "CUDA out of memory (as a test raises it)" in log
    assert "(the last state saved before the fault)" in log and weights.exists()
    assert read_state(output / "base")[0].step == 2
    fresh = tmp_path / "fresh"  # nothing saved yet: nothing to export, and still no traceback out
    assert train(script, photos, fresh, "--steps", "4", "--export", str(tmp_path / "none.safetensors")) == 1
    assert not (tmp_path / "none.safetensors").exists()


def test_an_export_that_fails_keeps_the_state_and_still_delivers(script, photos, tmp_path, monkeypatch):
    state, output = tmp_path / "base", tmp_path / "out"

    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(script.EXPORTERS, "base", full_disk)
    assert train(script, photos, state, "--steps", "2", "--export", str(tmp_path / "b.safetensors"),
                 "--output", str(output)) == 1
    assert "export failed: the state" in state.with_name("base.log").read_text()
    assert read_state(output / "base")[0].step == 2 and (output / "base.log").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--minutes", "0", "0 is not above 0"),
    ("--steps", "-5", "-5 is not at least 1"),
    ("--batch-size", "0", "0 is not at least 1"),
    ("--average-decay", "1", "1 is not at least 0 and below 1"),
    ("--lpips-weight", "-1", "-1 is not at least 0"),
    ("--part-mib", "0", "0 is not above 0"),
    ("--widths", "32,x", "'x' is not a whole number"),
    ("--level-range", "3,2", "LOW,HIGH with LOW at most HIGH expected, got '3,2'"),
    ("--data", "no/such/folder", "no/such/folder: no such file or folder"),
])
def test_options_out_of_range_are_one_line_errors_before_any_work(script, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as stopped:
        script.main(["diffusion", "--state", str(tmp_path / "s"), option, value])
    error = capsys.readouterr().err  # one line, without the usage before it
    assert stopped.value.code == 2 and error.count("\n") == 1
    assert f": error: argument {option}: {message} (see: " in error


def test_a_crop_side_the_base_codec_cannot_code_is_a_one_line_error_for_every_model(script, photos, tmp_path,
                                                                                   capsys):
    for model in ("base", "diffusion", "restoration"):
        assert script.main([model, "--data", str(photos), "--state", str(tmp_path / model), "--steps", "1",
                            "--patch-size", "96", "--device", "cpu"]) == 2
        assert capsys.readouterr().err == "error: --patch-size must be a multiple of 64 (whole hyper-latents), got 96\n"
        assert not (tmp_path / f"{model}.log").exists()  # refused before the log begins


def test_an_output_that_would_copy_the_state_onto_itself_is_refused_before_the_run(script, photos, tmp_path,
                                                                                   capsys):
    state = tmp_path / "run" / "base"
    assert train(script, photos, state, "--steps", "1") == 0
    # OUTPUT/base is emptied before the copy: with the state's own parent it was the state
    assert train(script, photos, state, "--steps", "2", "--output", str(tmp_path / "run")) == 2
    assert "would copy the state" in capsys.readouterr().err and read_state(state)[0].step == 1
    (tmp_path / "a-file").write_text("kept")
    assert train(script, photos, tmp_path / "a-file" / "base", "--steps", "1") == 2  # a traceback at the log before
    assert "a-file is not a folder" in capsys.readouterr().err
    assert script.main(["restoration", "--state", str(tmp_path / "none"), "--travel-copy", str(tmp_path / "t")]) == 2
    assert "no training state at" in capsys.readouterr().err
    assert script.main(["base", "--state", "/", "--steps", "1"]) == 2  # a ValueError traceback
    assert "name a folder of its own for the training state" in capsys.readouterr().err
    for option in ("--travel-copy", "--export"):  # a copy or an export in the state's folder locked it out
        assert train(script, photos, state, "--steps", "1", option, str(state / "inside")) == 2
        assert "or inside it: write it elsewhere" in capsys.readouterr().err
    for copy in (state, state.with_name("base.safetensors")):  # either name replaced the state by the copy
        assert train(script, photos, state, "--travel-copy", str(copy)) == 2
        assert f"is the training state {state.resolve()} or inside it" in capsys.readouterr().err
    assert train(script, photos, state, "--travel-copy", str(tmp_path)) == 2  # its files went into a state
    assert "holds other files than a training state" in capsys.readouterr().err
    assert read_state(state)[0].step == 1 and sorted(p.name for p in state.iterdir()) == ["state.safetensors.000"]
    export = tmp_path / "out" / "base" / "w.safetensors"  # where the state's copy goes, emptied first
    assert train(script, photos, state, "--steps", "2", "--output", str(tmp_path / "out"), "--export", str(export)) == 2
    assert "or inside it: write it elsewhere" in capsys.readouterr().err
