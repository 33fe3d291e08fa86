"""scripts/train_candidate.py: a whole candidate model (base, restoration filter, diffusion
decoder) trained in one run from float16 copies of the shipped weights, returned in parts and
joined into weights that code an image. Tiny on the CPU: a step per stage on photos made here."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diraccodec.diffusion.finishing import settings_on_ladder
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    DEFAULT_DIFFUSION_WEIGHTS,
    DEFAULT_RESTORATION_WEIGHTS,
    DIFFUSION_ENV,
    RESTORATION_ENV,
    load_base_weights,
    load_diffusion_weights,
    load_restoration_weights,
    load_unet_weights,
    read_manifest,
)
from diraccodec.perceptual.weights import CACHE_ENV
from tests.conftest import load_script, make_photos


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("train_candidate")


def test_a_half_precision_copy_rounds_the_parameters_and_keeps_the_tables(tmp_path):
    from diraccodec.modelfiles import LEVEL_TABLES, SHARED_TABLES_ID, write_half_precision_copy

    copy = tmp_path / "base.safetensors"
    write_half_precision_copy(DEFAULT_BASE_WEIGHTS, copy)
    assert copy.stat().st_size < 0.55 * DEFAULT_BASE_WEIGHTS.stat().st_size
    assert read_manifest(tmp_path)["base.safetensors"]["bytes"] == copy.stat().st_size
    with safe_open(str(copy), "pt") as half, safe_open(str(DEFAULT_BASE_WEIGHTS), "pt") as full:
        assert half.metadata()["half_precision_copy_of"] == load_base_weights().weights_id.hex()
        assert half.metadata()["config"] == full.metadata()["config"]
        # the shared tables alone: a start for training, which no file's id names
        shipped_names = full.keys()
        assert set(half.keys()) == {name for name in shipped_names if not name.startswith(f"{LEVEL_TABLES}.")}
        assert SHARED_TABLES_ID not in half.metadata()
        for name in sorted(half.keys()):
            original, halved = full.get_tensor(name), half.get_tensor(name)
            expected = original.half() if name.startswith("model.") and original.is_floating_point() else original
            assert halved.dtype == expected.dtype and torch.equal(halved, expected), name
    loaded = load_base_weights(copy).model.state_dict()  # loads as float32, the rounded values
    shipped = load_base_weights().model.state_dict()
    assert all(loaded[name].dtype == shipped[name].dtype for name in shipped)
    assert all(torch.equal(loaded[name], shipped[name].half().to(shipped[name].dtype)) for name in shipped)


def test_a_diffusion_run_starts_from_a_restoration_filter_deepened(tmp_path):
    from diraccodec.training.diffusion import DiffusionTrainingOptions, export_diffusion_checkpoint, train_diffusion

    photos = make_photos(tmp_path / "photos", ["a", "b"], size=(160, 128))
    state, exported = tmp_path / "diffusion", tmp_path / "w" / "diffusion.safetensors"
    options = DiffusionTrainingOptions(checkpoint=state, data=(photos,), steps=1, batch_size=1, patch_size=64,
                                       threads=1, blocks=2, start_from=DEFAULT_RESTORATION_WEIGHTS)
    train_diffusion(options)
    export_diffusion_checkpoint(state, exported)
    trained = load_diffusion_weights(exported)
    assert trained is not None and trained.model.config.blocks == 2
    start = load_unet_weights(DEFAULT_RESTORATION_WEIGHTS).state_dict()  # one block per resolution
    # one step at the start of the learning-rate ramp (1/200 of 2e-4): the start, barely moved
    gaps = [(trained.model.state_dict()[name] - start[name]).abs().max().item() for name in start]
    assert max(gaps) < 1e-5 and max(gaps) > 0
    added = set(trained.model.state_dict()) - set(start)
    assert added and all(name.startswith("deeper_") for name in added)
    assert json.loads(trained.metadata["info"])["start_from"] == str(DEFAULT_RESTORATION_WEIGHTS)


def test_each_stage_ends_by_its_deadline_counted_from_the_launch(script):
    launched = 1_000_000.0
    assert script.stage_deadline(10.0, 0.55, now=launched + 20, launched=launched) == launched + 330
    assert script.stage_deadline(10.0, 1.0, now=launched + 390, launched=launched) == launched + 600  # late: less
    assert script.stage_deadline(10.0, 1.0, now=launched + 599.4, launched=launched) == pytest.approx(
        launched + 599.4 + 60 * script.SHORTEST_STAGE_MINUTES)


def test_a_stage_given_a_deadline_counts_its_own_start_up(script, tmp_path, monkeypatch):
    import time

    import train_gpu  # beside the script, on the path it set

    seen = {}

    def trainer(options, console):
        seen["minutes"] = options.minutes

    monkeypatch.setitem(train_gpu.TRAINERS, "base", trainer)
    assert train_gpu.main(["base", "--state", str(tmp_path / "base"), "--deadline", str(time.time() + 90)]) == 0
    assert seen["minutes"] == pytest.approx(1.5, abs=0.05)  # the time left when it runs, not the launcher's
    assert train_gpu.main(["base", "--state", str(tmp_path / "base"), "--deadline", "5"]) == 0  # long past
    assert seen["minutes"] == train_gpu.SHORTEST_MINUTES


@pytest.mark.slow
def test_a_candidate_trains_travels_in_parts_and_joins_into_weights_that_code(script, tmp_path, monkeypatch,
                                                                            capsys):
    from diraccodec import api

    start, work, output, candidate = (tmp_path / name for name in ("start", "work", "output", "candidate"))
    assert script.main(["pack", str(start)]) == 0
    assert (start / "lpips" / "vgg16.safetensors").exists()
    photos = make_photos(tmp_path / "photos", ["a", "b", "c"], size=(192, 160))
    cache_before = os.environ.get(CACHE_ENV)
    assert script.main(["train", "--start", str(start), "--data", str(photos), "--steps", "1", "--work", str(work),
                        "--output", str(output), "--batch-sizes", "1,1,1", "--patch-sizes", "64,64,64",
                        "--device", "cpu", "--threads", "1", "--analysis-channels", "112",
                        "--latent-channels", "176"]) == 0
    assert os.environ.get(CACHE_ENV) == cache_before  # the carried LPIPS weights were read, then let go
    record = json.loads((output / "candidate.json").read_text())
    assert set(record["stages"]) == {"base", "restoration", "diffusion"}
    assert all(summary["step"] == 1 for summary in record["stages"].values())
    returned = sorted(path.name for path in output.iterdir())
    assert returned == ["base.safetensors.1", "base.safetensors.2", "candidate.json", "candidate.log",
                        "diffusion.safetensors", "restoration.safetensors"]
    assert all(path.stat().st_size <= script.PART_BYTES for path in output.iterdir())
    log = (output / "candidate.log").read_text()
    assert log.count("summary {") == 3

    capsys.readouterr()
    assert script.main(["join", str(output), str(candidate), "--level-tables-from", str(photos)]) == 0
    # the evaluation command printed whole, as it runs: the candidate's three files named, the shipped
    # models' measurement repeated
    command = shlex.split(capsys.readouterr().out.splitlines()[-1].removeprefix("evaluate: "))
    assert command[:3] == [f"DIRAC_WEIGHTS={candidate}/base.safetensors",
                           f"DIRAC_RESTORATION_WEIGHTS={candidate}/restoration.safetensors",
                           f"DIRAC_DIFFUSION_WEIGHTS={candidate}/diffusion.safetensors"]
    assert command[3:] == ["dirac", "eval", "--data", "../shared/data/kodak", "--levels", "1,2,3,4,5,6,7,8",
                           "--steps", "0,5,20", "--json", f"{candidate}/kodak.json"]
    base = load_base_weights(candidate / "base.safetensors")
    # hyper-latent tables per level, counted on the photos; the trained base kept beside it
    shared = load_base_weights(candidate / script.SHARED_TABLES_BASE)
    assert base.hyper_level_tables is not None and shared.hyper_level_tables is None
    assert all(torch.equal(value, shared.model.state_dict()[key]) for key, value in base.model.state_dict().items())
    assert base.model.config.context == "checkerboard"
    assert (base.model.config.analysis_width, base.model.config.synthesis_width) == (112, 96)
    assert base.model.config.latent_channels == 176
    # the frozen hyperprior (the default) keeps what it predicts for the 160 trained latents
    packed = load_base_weights(start / "base.safetensors").model.hyper_synthesis[-1].weight
    predicts = base.model.hyper_synthesis[-1].weight
    assert torch.equal(predicts[:160], packed[:160]) and torch.equal(predicts[176:336], packed[160:])
    assert base.model.config.lambdas == pytest.approx(script.LADDER)
    diffusion = load_diffusion_weights(candidate / "diffusion.safetensors")
    shipped = load_diffusion_weights(DEFAULT_DIFFUSION_WEIGHTS)
    assert diffusion is not None and shipped is not None
    assert diffusion.base_weights_id == base.weights_id
    restoration = load_restoration_weights(candidate / "restoration.safetensors")
    assert restoration is not None and restoration.base_weights_id == base.weights_id
    assert diffusion.restoration_weights_id in (None, restoration.weights_id)
    carried = settings_on_ladder(shipped.settings, shipped.finishing, load_base_weights().model.config.lambdas,
                                 script.LADDER)
    assert (diffusion.settings, diffusion.finishing) == carried != (shipped.settings, shipped.finishing)

    monkeypatch.setenv(RESTORATION_ENV, str(candidate / "restoration.safetensors"))
    monkeypatch.setenv(DIFFUSION_ENV, str(candidate / "diffusion.safetensors"))
    image = Image.open(photos / "a.png").convert("RGB")
    data = api.encode(image, 1, weights=candidate / "base.safetensors")
    restored = api.decode(data, steps=0, weights=candidate / "base.safetensors")
    enhanced = api.decode(data, steps=2, weights=candidate / "base.safetensors")
    assert restored.size == enhanced.size == image.size
    assert not np.array_equal(np.asarray(restored), np.asarray(enhanced))


def test_join_refuses_a_damaged_part_in_one_line(script, tmp_path, capsys):
    output = tmp_path / "output"
    output.mkdir()
    (output / "base.safetensors.1").write_bytes(b"abc")
    (output / "base.safetensors.2").write_bytes(b"de")
    sha = hashlib.sha256(b"abcdf").hexdigest()
    (output / "candidate.json").write_text(json.dumps(
        {"files": {"base.safetensors": {"sha256": sha, "bytes": 5,
                                        "parts": ["base.safetensors.1", "base.safetensors.2"]}}}))
    assert script.main(["join", str(output), str(tmp_path / "candidate")]) == 2
    message = capsys.readouterr().err.strip()
    assert message == "error: base.safetensors does not match candidate.json: a part is missing or damaged"
    assert not (tmp_path / "candidate" / "base.safetensors").exists()


def test_a_stage_that_fails_leaves_the_others_returned(script, tmp_path, capsys):
    start, output = tmp_path / "start", tmp_path / "output"
    assert script.main(["pack", str(start), "--no-lpips"]) == 0
    (start / "restoration.safetensors").unlink()  # the filter's process cannot start
    photos = make_photos(tmp_path / "photos", ["a", "b"], size=(192, 160))
    stale = tmp_path / "work" / "weights" / "restoration.safetensors"  # an earlier call's, on a machine kept warm
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's filter")
    assert script.main(["train", "--start", str(start), "--data", str(photos), "--steps", "1",
                        "--work", str(tmp_path / "work"), "--output", str(output), "--batch-sizes", "1,1,1",
                        "--patch-sizes", "64,64,64", "--device", "cpu", "--threads", "1"]) == 2
    record = json.loads((output / "candidate.json").read_text())
    assert sorted(record["files"]) == ["base.safetensors", "diffusion.safetensors"]
    assert record["stages"]["restoration"] is None and record["stages"]["diffusion"]["step"] == 1
    assert "error: cannot read weights" in (output / "candidate.log").read_text()
    capsys.readouterr()
    assert script.main(["join", str(output), str(tmp_path / "candidate")]) == 2
    assert capsys.readouterr().err.startswith("error: the run returned no restoration.safetensors: see ")


def test_the_filter_s_process_is_stopped_past_its_time_and_killed_if_it_will_not(script, monkeypatch):
    """The candidate waits for the restoration filter's process at most until the budget's end
    and a grace: then SIGTERM (it saves and exports at its next step), then SIGKILL."""
    import subprocess
    import sys
    import time

    monkeypatch.setattr(script, "HELPER_GRACE_SECONDS", 1.0)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    assert script.wait_for(polite, 0.5) == -15 and time.monotonic() - started < 10
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    stubborn.stdout.readline()  # its handler is in place
    assert script.wait_for(stubborn, 0.5) == -9
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert script.wait_for(done, None) == 3


def test_join_into_the_returned_folder_itself_is_refused(script, tmp_path, capsys):
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "candidate.json").write_text("{}")
    assert script.main(["join", str(returned), str(returned)]) == 2  # its U-Nets were rewritten in place
    assert "into another folder" in capsys.readouterr().err
    assert list(returned.iterdir()) == [returned / "candidate.json"]
