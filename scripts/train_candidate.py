"""Train a whole candidate model (base codec, restoration filter, diffusion decoder) in one short GPU run.

A new base codec makes the shipped restoration filter and diffusion decoder unusable: both are
tied to the base weights they were trained on. This script trains the three within one time
budget, each fine-tuned from a start, so that a single run returns a model that can be
evaluated and shipped:

    python scripts/train_candidate.py pack .gpu/start      # here: the start, in float16 (42.1 MiB)
    python3 scripts/train_candidate.py train --start .gpu/start --data /tmp/shard --minutes 9 --output OUT
    python scripts/train_candidate.py join OUT candidate/  # here: the weights, checked and listed

`pack` writes float16 copies of the shipped weights and of the VGG16 LPIPS weights (the
diffusion decoder's loss), small enough to travel with a training shard. `train` runs
scripts/train_gpu.py's three trainings: the base (by default with the checkerboard context
model and the ladder down to 0.05 bpp, its hyperprior kept as the start has it: the small,
downscaled crops here would undo the entropy fine-tune made on large crops at the photos' own
scale) for --base-share of --minutes, then the restoration filter and the diffusion decoder
side by side (two processes: each alone leaves the GPU waiting on Python) on the base it has
just exported, until the end. Deadlines count from the start, so a slow start shortens only
the stages after it, and each stage delivers as it ends, so a run stopped later still returns
what is done. The output holds at most 6 files of at most 15 MiB: the base weights in parts,
the two U-Nets, the log and candidate.json (each stage's summary, each file's SHA-256). `join`
puts the base back together, checks every file, gives the diffusion decoder the sampler and
finishing settings of a reference file (the shipped one by default), carried to the
candidate's ladder level by level (diraccodec.diffusion.finishing.settings_on_ladder), gives
the base hyper-latent tables per level counted on the training photos and ties the U-Nets to
it (as `dirac train level-tables`), lists the files in a manifest and prints the evaluation
command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from unittest.mock import patch

LAUNCHED = time.time()  # a run's budget counts from here: torch's import (seconds) is part of it

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "scripts"):  # a GPU machine runs the checkout without installing it
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import torch  # noqa: E402
import train_gpu  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from diraccodec.codec.base_codec import BaseWeights  # noqa: E402
from diraccodec.diffusion.finishing import FinishingSettings, settings_on_ladder  # noqa: E402
from diraccodec.diffusion.sampler import SamplerSettings  # noqa: E402
from diraccodec.errors import DiracError  # noqa: E402
from diraccodec.image.files import check_writable_folder  # noqa: E402
from diraccodec.modelfiles import (  # noqa: E402
    DEFAULT_DIFFUSION_WEIGHTS,
    WEIGHTS_DIR,
    load_base_weights,
    load_diffusion_weights,
    load_restoration_weights,
    record_in_manifest,
    replace_diffusion_settings,
    retie_unets,
    write_half_precision_copy,
    write_with_level_tables,
)
from diraccodec.perceptual.weights import CACHE_ENV, perceptual_weights  # noqa: E402
from diraccodec.training.checkpoint import summary_path  # noqa: E402
from diraccodec.training.data import training_images  # noqa: E402
from diraccodec.training.entropy import fit_level_tables  # noqa: E402

STAGES = ("base", "restoration", "diffusion")
WEIGHTS = {stage: f"{stage}.safetensors" for stage in STAGES}
LPIPS_NETWORK = "vgg16"  # the diffusion decoder's training loss (the evaluation uses AlexNet)
# The ladder from 0.05 bpp (level 1, lambda 0.0001) to the shipped top level, geometric.
LADDER = (0.0001, 0.000268, 0.00072, 0.00193, 0.00518, 0.0139, 0.0373, 0.1)
PART_BYTES = 15 * 2**20  # returned files stay under 16 MiB
TRAINING_PHOTOS = ROOT.parent / "shared" / "data" / "train"  # beside the checkout, where join runs
SHARED_TABLES_BASE = "base-shared-tables.safetensors"  # the trained base, before the level tables
SHORTEST_STAGE_MINUTES = 0.1  # a stage left no time still starts, saves and exports
# How long past the budget the filter's process may take (its imports delay its own clock's
# start by a few seconds) before it is asked to stop, and again before it is killed
HELPER_GRACE_SECONDS = 60
# Each stage's options beyond data, state, budget and export: how the shipped models trained
# on a GPU (docs/models.md), at a learning rate for fine-tuning.
STAGE_OPTIONS = {
    "base": ["--lr", "1e-4"],
    "restoration": ["--lr", "1e-4", "--average-decay", "0.998"],
    "diffusion": ["--lr", "1e-4", "--average-decay", "0.999", "--lpips-weight", "1.0",
                  "--own-prediction-fraction", "0.5"],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack(start: Path, weights: Path, lpips: bool) -> None:
    """Float16 copies of the three weights files (listed in start's manifest) and of VGG16's LPIPS weights."""
    for name in WEIGHTS.values():
        write_half_precision_copy(weights / name, start / name)
    if lpips:
        folder = start / "lpips"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = perceptual_weights(LPIPS_NETWORK)
        halved = {name: tensor.half() for name, tensor in tensors.items()}
        save_file(halved, str(folder / f"{LPIPS_NETWORK}.safetensors"))
    files = sorted(path for path in start.rglob("*") if path.is_file())
    for path in files:
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    print(f"{start}: {sum(path.stat().st_size for path in files) / 2**20:.1f} MiB in all")


def stage_arguments(stage: str, arguments: argparse.Namespace, budget: list[str]) -> list[str]:
    """scripts/train_gpu.py's command line for one stage."""
    work, start = arguments.work, arguments.start
    batch, patch = arguments.batch_sizes[STAGES.index(stage)], arguments.patch_sizes[STAGES.index(stage)]
    line = [stage, "--state", str(work / stage), "--batch-size", str(batch), "--patch-size", str(patch),
            "--export", str(work / "weights" / WEIGHTS[stage]), "--seed", str(arguments.seed), *budget,
            *STAGE_OPTIONS[stage]]
    for folder in arguments.data:
        line += ["--data", str(folder)]
    if arguments.device:
        line += ["--device", arguments.device]
    if arguments.threads:
        line += ["--threads", str(arguments.threads)]
    if arguments.no_compile:
        line.append("--no-compile")
    if arguments.profile_steps:
        line += ["--profile-steps", str(arguments.profile_steps)]
    if stage == "base":
        line += ["--start-from", str(start / WEIGHTS["base"]), "--context", arguments.context,
                 "--lambdas", ",".join(f"{value:g}" for value in arguments.lambdas)]
        if not arguments.train_hyperprior:
            line.append("--freeze-hyperprior")
        for option in ("analysis_channels", "synthesis_channels", "latent_channels"):
            if getattr(arguments, option) is not None:
                line += [f"--{option.replace('_', '-')}", str(getattr(arguments, option))]
    else:
        line += ["--weights", str(work / "weights" / WEIGHTS["base"]), "--start-from", str(start / WEIGHTS[stage])]
    if stage == "diffusion" and arguments.adversarial_weight:
        line += ["--adversarial-weight", f"{arguments.adversarial_weight:g}"]
    return line


def split_file(path: Path, output: Path, part_bytes: int) -> list[Path]:
    """`path` as OUTPUT/NAME.1, NAME.2, ... of at most part_bytes each."""
    data = path.read_bytes()
    parts = []
    for index, offset in enumerate(range(0, len(data), part_bytes), start=1):
        part = output / f"{path.name}.{index}"
        part.write_bytes(data[offset:offset + part_bytes])
        parts.append(part)
    return parts


def stage_deadline(total: float, until: float, now: float, launched: float) -> float:
    """A stage's deadline (seconds since the epoch): the share `until` of `total` minutes counted
    from the launch, so a stage that overruns shortens only the stages after it; at least
    SHORTEST_STAGE_MINUTES from `now`. The stage counts its own start-up within it."""
    return max(launched + 60 * total * until, now + 60 * SHORTEST_STAGE_MINUTES)


def lpips_weights_from(start: Path) -> AbstractContextManager[object]:
    """The LPIPS loss reads the carried copy of its weights (where pack wrote one) while the stages run."""
    carried = (start / "lpips" / f"{LPIPS_NETWORK}.safetensors").exists()
    return patch.dict(os.environ, {CACHE_ENV: str(start)} if carried else {})


def train(arguments: argparse.Namespace, launched: float) -> int:
    """The base, then the restoration filter (in a process of its own) beside the diffusion
    decoder, within --minutes of `launched` (seconds since the epoch)."""
    record: dict[str, Any] = {"minutes": arguments.minutes, "base_share": arguments.base_share, "stages": {},
                              "start_up_seconds": round(time.time() - launched, 1)}

    def budget(until: float) -> list[str]:
        if arguments.steps:
            return ["--steps", str(arguments.steps)]
        return ["--deadline", f"{stage_deadline(arguments.minutes, until, time.time(), launched):.1f}"]

    def finished(stage: str) -> None:
        summary = summary_path(arguments.work / stage)
        record["stages"][stage] = json.loads(summary.read_text()) if summary.exists() else None
        record["seconds"] = round(time.time() - launched, 1)
        if arguments.output:  # stage by stage: a run killed later still returns what is done
            deliver(arguments, record, stage)

    def seconds_left() -> float | None:
        return None if arguments.steps else max(0.0, launched + arguments.minutes * 60 - time.time())

    for stage in STAGES:  # an earlier run's exports are not this run's (the states stay, to resume)
        for path in (arguments.work / "weights" / WEIGHTS[stage], summary_path(arguments.work / stage)):
            path.unlink(missing_ok=True)
    with lpips_weights_from(arguments.start):
        try:
            status = train_gpu.main(announced("base", stage_arguments("base", arguments,
                                                                      budget(arguments.base_share))))
        finally:
            finished("base")  # its log, at least, whatever happened
        if status:
            return status
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # The two U-Nets are small: one alone leaves the GPU waiting on Python between its
        # kernels, so they train side by side until the end of the budget.
        restoration_line = announced("restoration", stage_arguments("restoration", arguments, budget(1.0)))
        arguments.work.mkdir(parents=True, exist_ok=True)
        with open(arguments.work / "restoration.console", "w") as console:
            helper = subprocess.Popen([sys.executable, str(Path(train_gpu.__file__)), *restoration_line],
                                      stdout=console, stderr=subprocess.STDOUT)
            try:
                status = train_gpu.main(announced("diffusion", stage_arguments("diffusion", arguments, budget(1.0))))
            finally:
                finished("diffusion")  # before waiting on the filter's process, which may overrun
                left = seconds_left()
                helper_status = wait_for(helper, None if left is None else left + HELPER_GRACE_SECONDS)
                finished("restoration")
    return status or helper_status


def wait_for(process: subprocess.Popen, seconds: float | None) -> int:
    """The process's exit status; past `seconds` it is asked to stop (SIGTERM: it saves and
    exports at its next step), and killed if it has not within HELPER_GRACE_SECONDS."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            return process.wait(timeout=HELPER_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def announced(stage: str, line: list[str]) -> list[str]:
    print(f"== {stage}: scripts/train_gpu.py {' '.join(line)}", file=sys.stderr)
    return line


def deliver(arguments: argparse.Namespace, record: dict[str, Any], stage: str) -> None:
    """The stage's weights (the base in parts), the logs so far in one and candidate.json into --output."""
    output, path = arguments.output, arguments.work / "weights" / WEIGHTS[stage]
    output.mkdir(parents=True, exist_ok=True)
    files = record.setdefault("files", {})
    if path.exists():
        parts = split_file(path, output, PART_BYTES) if path.stat().st_size > PART_BYTES else \
            [Path(shutil.copy2(path, output / path.name))]
        files[path.name] = {"sha256": sha256(path), "bytes": path.stat().st_size,
                            "parts": [part.name for part in parts]}
    with open(output / "candidate.log", "w") as log:
        for stage in STAGES:
            stage_log = (arguments.work / stage).with_name(f"{stage}.log")
            if stage_log.exists():
                log.write(stage_log.read_text())
        console = arguments.work / "restoration.console"  # what its process printed, should it fail early
        if "restoration" in record["stages"] and record["stages"]["restoration"] is None and console.exists():
            log.write(console.read_text())
    (output / "candidate.json").write_text(json.dumps(record, indent=2) + "\n")


def reference_settings(path: Path, ladder: tuple[float, ...]) -> tuple[SamplerSettings, FinishingSettings]:
    """The sampler and finishing settings of the diffusion weights at `path`, carried from the
    ladder of their base (the base weights beside them) to `ladder`."""
    reference = load_diffusion_weights(path)
    beside = path.parent / WEIGHTS["base"]
    reference_base = load_base_weights(beside) if beside.exists() else None
    if reference_base is None or reference_base.weights_id != reference.base_weights_id:
        raise DiracError(f"{path}'s base weights {reference.base_weights_id.hex()} are not beside it as {beside}: "
                         "their ladder is needed to carry the settings")
    chosen_for = reference_base.model.config.lambdas
    if tuple(chosen_for) == tuple(ladder):
        return reference.settings, reference.finishing
    return settings_on_ladder(reference.settings, reference.finishing, chosen_for, ladder)


def join(output: Path, destination: Path, settings_from: Path | None, level_tables_from: Path | None = None) -> None:
    """The returned weights whole again, checked against candidate.json and tied together, in
    DESTINATION; with `level_tables_from`, its base carries hyper-latent tables per level counted
    on those training photos (the trained base, without them, kept as base-shared-tables)."""
    if destination.resolve() == output.resolve():
        raise DiracError(f"join {output} into another folder: its parts are what a later join reads")
    check_writable_folder(destination)
    try:
        record = json.loads((output / "candidate.json").read_text())
        files = {name: b"".join((output / part).read_bytes() for part in entry["parts"])
                 for name, entry in record["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DiracError(f"{output} holds no complete candidate: {error}") from None
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != record["files"][name]["sha256"]:
            raise DiracError(f"{name} does not match candidate.json: a part is missing or damaged")
    missing = [name for name in WEIGHTS.values() if name not in files]
    if missing:
        raise DiracError(f"the run returned no {', '.join(missing)}: see {output / 'candidate.log'}")
    destination.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (destination / name).write_bytes(data)
        record_in_manifest(destination / name)
    base = load_base_weights(destination / WEIGHTS["base"])
    restoration = load_restoration_weights(destination / WEIGHTS["restoration"])
    diffusion = load_diffusion_weights(destination / WEIGHTS["diffusion"])
    assert restoration is not None  # an explicit path loads or raises
    for name, tied_to in (("restoration", restoration.base_weights_id), ("diffusion", diffusion.base_weights_id)):
        if tied_to != base.weights_id:
            raise DiracError(f"the {name} weights name base {tied_to.hex()}, not the returned {base.weights_id.hex()}")
    if settings_from is not None:
        sampler, finishing = reference_settings(settings_from.resolve(), base.model.config.lambdas)
        replace_diffusion_settings(destination / WEIGHTS["diffusion"], destination / WEIGHTS["diffusion"],
                                   sampler, finishing)
    if level_tables_from is not None:
        base = add_level_tables(destination, level_tables_from)
    print(f"{destination}: base {base.weights_id.hex()}, restoration and diffusion decoder on it")
    variables = {"DIRAC_WEIGHTS": "base", "DIRAC_RESTORATION_WEIGHTS": "restoration",
                 "DIRAC_DIFFUSION_WEIGHTS": "diffusion"}
    named = {variable: shlex.quote(str(destination / WEIGHTS[kind])) for variable, kind in variables.items()}
    # as docs/results.md measures the shipped models (docs/results/kodak-default.json), to compare with
    print(f"evaluate: {' '.join(f'{variable}={path}' for variable, path in named.items())} dirac eval "
          f"--data ../shared/data/kodak --levels 1,2,3,4,5,6,7,8 --steps 0,5,20 "
          f"--json {shlex.quote(str(destination / 'kodak.json'))}")


def add_level_tables(folder: Path, photos_folder: Path) -> BaseWeights:
    """Give the folder's base hyper-latent tables per level (as `dirac train level-tables`) and
    tie its U-Nets to it; the base without them stays beside it as SHARED_TABLES_BASE."""
    photos = training_images([photos_folder])
    if not photos:
        raise DiracError(f"no training photos under {photos_folder} to count the level tables on")
    base_path, shared_path = folder / WEIGHTS["base"], folder / SHARED_TABLES_BASE
    os.replace(base_path, shared_path)
    record_in_manifest(shared_path)
    load_base_weights.cache_clear()  # the path now holds other weights
    tables = fit_level_tables(load_base_weights(shared_path.resolve()), photos)
    write_with_level_tables(shared_path, base_path, tables, {"photos": len(photos), "data": [str(photos_folder)]})
    retie_unets(shared_path, base_path, folder / WEIGHTS["restoration"], folder / WEIGHTS["diffusion"], folder)
    return load_base_weights(base_path.resolve())


def parser() -> argparse.ArgumentParser:
    cli = train_gpu.OneLineErrors(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = cli.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="Write the start: float16 copies of the weights and LPIPS VGG16.")
    packing.add_argument("start", type=Path)
    packing.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="Where the three weights files are "
                         "(default: the shipped ones).")
    packing.add_argument("--no-lpips", dest="lpips", action="store_false", help="Leave out LPIPS VGG16.")

    training = commands.add_parser("train", help="Train the three models in turn within one budget.")
    training.add_argument("--start", type=train_gpu.existing, required=True, help="A folder written by pack.")
    training.add_argument("--data", type=train_gpu.existing, action="append", required=True,
                          help="Photos or packed shards.")
    budget = training.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=train_gpu.POSITIVE, default=9.0,
                        help="The whole run's budget, counted from the launch (default 9).")
    budget.add_argument("--steps", type=train_gpu.POSITIVE_INT,
                        help="Train each stage to this many steps instead (tiny runs).")
    training.add_argument("--base-share", type=train_gpu.within(float, 0, 1, above=True, below=True), default=0.55,
                          help="The base's share of --minutes; the U-Nets train side by side in the rest "
                               "(default 0.55).")
    training.add_argument("--work", type=Path, default=Path(".gpu/candidate"),
                          help="The stages' states and exported weights (default .gpu/candidate).")
    training.add_argument("--output", type=Path, help="Where the weights, the log and candidate.json go.")
    training.add_argument("--context", choices=("none", "checkerboard"), default="checkerboard",
                          help="The base's entropy model: checkerboard (default; a start without one gains it "
                               "at zero) or none.")
    training.add_argument("--lambdas", type=train_gpu.numbers(float, 8), default=LADDER,
                          help="The base's ladder (default: 0.0001 ... 0.1, geometric).")
    training.add_argument("--train-hyperprior", action="store_true",
                          help="Train the base's hyperprior too (default: kept as the start has it).")
    training.add_argument("--analysis-channels", type=train_gpu.POSITIVE_INT,
                          help="Grow the base's analysis to this width (default: the start's).")
    training.add_argument("--synthesis-channels", type=train_gpu.POSITIVE_INT,
                          help="Grow the base's synthesis to this width (default: the start's).")
    training.add_argument("--latent-channels", type=train_gpu.POSITIVE_INT,
                          help="Grow the base's latents to this many channels, M (default: the start's); a frozen "
                               "hyperprior learns their means and scales alone.")
    training.add_argument("--batch-sizes", type=train_gpu.numbers(int, 3, train_gpu.POSITIVE_INT),
                          default=(128, 32, 32),
                          help="Crops per step of the base, the restoration filter and the diffusion decoder "
                               "(default 128,32,32).")
    training.add_argument("--patch-sizes", type=train_gpu.numbers(int, 3, train_gpu.within(int, 64)),
                          default=(128, 128, 128),
                          help="Their crop sides, multiples of 64 (default 128,128,128: of the shard's 1,407 "
                               "photos, 2x downscaled, 126 are 256 pixels a side).")
    training.add_argument("--adversarial-weight", type=train_gpu.NON_NEGATIVE, default=0.0,
                          help="The diffusion decoder's adversarial term (default 0: none).")
    training.add_argument("--seed", type=int, default=0, help="Seeds each stage's crops (default 0).")
    training.add_argument("--device", help="cuda or cpu (default: CUDA where present).")
    training.add_argument("--threads", type=train_gpu.POSITIVE_INT, help="CPU threads for torch.")
    training.add_argument("--no-compile", action="store_true", help="No torch.compile (default: on CUDA).")
    training.add_argument("--profile-steps", type=train_gpu.NON_NEGATIVE_INT, default=0,
                          help="Steps of each stage profiled after its first 50, in the log (default 0: none).")

    joining = commands.add_parser("join", help="Check the returned weights and put them in a folder of their own.")
    joining.add_argument("output", type=Path, help="What train wrote to --output.")
    joining.add_argument("destination", type=Path)
    joining.add_argument("--settings-from", type=Path, default=DEFAULT_DIFFUSION_WEIGHTS,
                         help="Diffusion weights whose sampler and finishing settings the candidate takes "
                              "(default: the shipped ones).")
    joining.add_argument("--trained-settings", dest="settings_from", action="store_const", const=None,
                         help="Keep the settings the export wrote (no finishing).")
    joining.add_argument("--level-tables-from", type=Path, default=TRAINING_PHOTOS,
                         help="Training photos to count the base's hyper-latent tables per level on "
                              f"(default {TRAINING_PHOTOS}).")
    joining.add_argument("--no-level-tables", dest="level_tables_from", action="store_const", const=None,
                         help="Keep the shared hyper-latent tables.")
    return cli


def main(argv: list[str] | None = None) -> int:
    """The command; its time budget counts from the script's launch, or, called with `argv`
    from other code, from the call."""
    launched = LAUNCHED if argv is None else time.time()
    arguments = parser().parse_args(argv)
    try:
        if arguments.command == "pack":
            pack(arguments.start, arguments.weights, arguments.lpips)
        elif arguments.command == "join":
            join(arguments.output, arguments.destination, arguments.settings_from, arguments.level_tables_from)
        else:
            return train(arguments, launched)
    except DiracError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
