"""Train a model in one command made for short, preemptible GPU runs (and for tiny CPU ones).

    python scripts/train_gpu.py base --data .gpu/shard --minutes 9 --channels 192 --latent-channels 320

It trains until --minutes (counted from its start, data loading and compilation included) and
saves its state before then, in parts of at most --part-mib MiB (diraccodec.training.checkpoint);
the same command run again resumes where it stopped. It appends its log, throughput in Mpx/s
included, to STATE.log, writes STATE.summary.json (also the log's last line), and at the end can
export inference weights (--export) and copy the state's parts and the log into --output. With
--travel-copy it only writes a float16 copy of the state, small enough to carry, and exits.
The package is imported from this checkout, installed or not.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a GPU machine runs the checkout without installing it
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from diraccodec.codec.hyperprior import CONTEXTS  # noqa: E402
from diraccodec.errors import DiracError  # noqa: E402
from diraccodec.image.files import check_writable, check_writable_folder  # noqa: E402
from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, DEFAULT_DIFFUSION_WEIGHTS  # noqa: E402
from diraccodec.options import TRAINING_PHOTOS  # noqa: E402
from diraccodec.training.base import BaseTrainingOptions, train_base  # noqa: E402
from diraccodec.training.checkpoint import (  # noqa: E402
    check_not_in_state,
    check_state_place,
    state_exists,
    state_folder,
    state_parts,
    summary_path,
    write_travel_copy,
)
from diraccodec.training.crops import check_whole_blocks  # noqa: E402
from diraccodec.training.diffusion import (  # noqa: E402
    DiffusionTrainingOptions,
    train_diffusion,
)
from diraccodec.training.export import EXPORTERS  # noqa: E402
from diraccodec.training.loop import LoopOptions, check_before_work  # noqa: E402
from diraccodec.training.restoration import (  # noqa: E402
    RestorationTrainingOptions,
    train_restoration,
)

DEFAULT_MINUTES = 9.0
SHORTEST_MINUTES = 0.1  # a run whose deadline has passed still starts, saves and exports
DEFAULT_BATCH = {"base": 64, "diffusion": 32, "restoration": 32}
TRAINERS = {"base": train_base, "diffusion": train_diffusion, "restoration": train_restoration}


def within(kind: type, low: float = -math.inf, high: float = math.inf, *, above: bool = False,
           below: bool = False) -> Callable[[str], Any]:
    """An argparse type for a number from `low` to `high` (`above`, `below`: not the bound itself)."""
    bounds = " and ".join(part for part in (
        f"{'above' if above else 'at least'} {low:g}" if low > -math.inf else "",
        f"{'below' if below else 'at most'} {high:g}" if high < math.inf else "") if part)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") \
                from None
        if value < low or value > high or (above and value == low) or (below and value == high) or value != value:
            raise argparse.ArgumentTypeError(f"{text} is not {bounds}")
        return value

    return parse


POSITIVE_INT, POSITIVE = within(int, 1), within(float, 0, above=True)
NON_NEGATIVE_INT, NON_NEGATIVE = within(int, 0), within(float, 0)


def numbers(kind: type, count: int | None = None, each: Callable[[str], Any] | None = None) -> Any:
    """An argparse type for comma-separated numbers (exactly `count` of them where given), each
    parsed by `each` where given (a range check), else by `kind`."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple((each or kind)(value) for value in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of {kind.__name__} values") from None
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"{count} comma-separated values expected, got {text!r}")
        return values

    return parse


def level_range(text: str) -> tuple[float, float]:
    """--level-range: two levels, the lower first (checked here, before the log and the models)."""
    lowest, highest = numbers(float, 2)(text)
    if lowest > highest:
        raise argparse.ArgumentTypeError(f"LOW,HIGH with LOW at most HIGH expected, got {text!r}")
    return lowest, highest


def existing(text: str) -> Path:
    """An argparse type for a file or folder that must be there (a missing one would look empty)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return Path(text)


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose errors are one line that names --help, rather than the whole usage first
    (its subcommands' parsers are of this kind too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    cli = OneLineErrors(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("model", choices=sorted(TRAINERS))
    cli.add_argument("--state", type=Path, help="The state's folder, resumed if it exists (default checkpoints/MODEL).")
    cli.add_argument("--data", type=existing, action="append", help=f"Folders of photos or packed shards "
                     f"(repeatable; default {TRAINING_PHOTOS}). Held-out photos are never trained on.")
    budget = cli.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=POSITIVE,
                        help=f"Wall-clock budget of this run (default {DEFAULT_MINUTES:g}).")
    budget.add_argument("--steps", type=POSITIVE_INT, help="Train to this total step count instead of a time budget.")
    budget.add_argument("--deadline", type=float, help="End of the budget as seconds since the epoch, so that "
                        "the start-up is counted too (what a process that launches this one passes).")
    cli.add_argument("--stop-after", type=NON_NEGATIVE_INT, help="Take at most this many steps in this run.")
    cli.add_argument("--batch-size", type=POSITIVE_INT, help="Crops per step (default 64 for base, 32 for the others).")
    cli.add_argument("--patch-size", type=within(int, 64), default=128,
                     help="Crop side in pixels, a multiple of 64 (default 128).")
    cli.add_argument("--lr", type=POSITIVE, help="Peak learning rate (default 2e-4).")
    cli.add_argument("--seed", type=int, default=0, help="Seeds the crops and new weights (default 0).")
    cli.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cuda or cpu (default: cuda where present).")
    cli.add_argument("--threads", type=POSITIVE_INT, help="CPU threads for torch.")
    cli.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA).")
    cli.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="(default: on CUDA).")
    cli.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the forward pass.")
    cli.add_argument("--average-decay", type=within(float, 0, 1, below=True), default=0.0,
                     help="Weight average to export (e.g. 0.999).")
    cli.add_argument("--checkpoint-minutes", type=POSITIVE, default=3.0, help="Save this often (default 3).")
    cli.add_argument("--save-margin", type=NON_NEGATIVE, default=15.0,
                     help="Seconds kept for the last save (default 15).")
    cli.add_argument("--part-mib", type=POSITIVE, default=15.0, help="Largest part of the saved state (default 15).")
    cli.add_argument("--exact-moments", action="store_true",
                     help="Save Adam moments in float32 (bit-exact resume) instead of bfloat16.")
    cli.add_argument("--log-every", type=POSITIVE_INT, default=50, help="Steps per log line (default 50).")
    cli.add_argument("--profile-steps", type=NON_NEGATIVE_INT, default=0,
                     help="Profile this many steps after the first --profile-after and log where their time went.")
    cli.add_argument("--profile-after", type=NON_NEGATIVE_INT, default=50,
                     help="(default 50: compilation and warm-up done).")
    base = cli.add_argument_group("base codec (a resumed run keeps its state's size)")
    base.add_argument("--channels", type=POSITIVE_INT, default=96, help="N, the transforms' width (default 96).")
    base.add_argument("--latent-channels", type=POSITIVE_INT, help="M, the latents' channels (default: the "
                      "start's, else 160); from --start-from the new latents start at 0 beside the trained ones.")
    base.add_argument("--context", choices=CONTEXTS,
                      help="A new run's entropy model: none (the hyperprior alone) or checkerboard (default: "
                           "--start-from's, else none).")
    base.add_argument("--lambdas", type=numbers(float, 8), help="A new run's rate-distortion trade-offs, ascending "
                      "(default: --start-from's, else the shipped ladder).")
    base.add_argument("--freeze-hyperprior", action="store_true",
                      help="A new run keeps its start's hyperprior (but for new latents' means and scales) and "
                           "trains the transforms, gains and context.")
    base.add_argument("--analysis-channels", type=POSITIVE_INT, help="A new run's analysis width (default: the "
                      "start's, else --channels); from --start-from a wider one grows out of the trained one.")
    base.add_argument("--synthesis-channels", type=POSITIVE_INT, help="A new run's synthesis width, likewise.")
    stages = cli.add_argument_group("diffusion decoder and restoration filter")
    stages.add_argument("--weights", type=Path, default=DEFAULT_BASE_WEIGHTS,
                        help="The frozen base codec's weights (default: the shipped ones, not $DIRAC_WEIGHTS).")
    stages.add_argument("--widths", type=numbers(int, each=POSITIVE_INT),
                        help="The diffusion U-Net's widths, e.g. 32,64,128 (a new run's; the filter keeps "
                             "its start's).")
    stages.add_argument("--blocks", type=POSITIVE_INT,
                        help="The diffusion U-Net's residual blocks per resolution (deepens a saved state).")
    stages.add_argument("--lpips-weight", type=NON_NEGATIVE, default=0.0,
                        help="Weight of the LPIPS (VGG16) term of the diffusion loss (default 0: none).")
    stages.add_argument("--adversarial-weight", type=NON_NEGATIVE, default=0.0,
                        help="Weight of the adversarial term; above 0 a new diffusion run trains a critic beside it.")
    stages.add_argument("--own-prediction-fraction", type=within(float, 0, 1), default=0.0,
                        help="Share of diffusion steps trained on the model's own prediction (default 0).")
    stages.add_argument("--relative-loss", action="store_true",
                        help="Weigh the diffusion loss by the residual's size at each level.")
    stages.add_argument("--level-range", type=level_range, metavar="LOW,HIGH",
                        help="The levels the U-Net is trained at (default: 1 to the base's top level).")
    stages.add_argument("--on-restored", type=Path, help="Enhance this restoration filter's output (diffusion).")
    cli.add_argument("--start-from", type=Path, help="Weights a new run starts from: base weights for the base "
                     "(default: none; a context model they lack starts at zero); diffusion or restoration "
                     "weights for the U-Nets (default: none for the diffusion decoder, the shipped diffusion "
                     "decoder for the restoration filter).")
    stages.add_argument("--from-scratch", action="store_true", help="A new restoration run starts from the identity.")
    results = cli.add_argument_group("results")
    results.add_argument("--export", type=Path, help="Write inference weights here at the end.")
    results.add_argument("--output", type=Path, help="Copy the state's parts (in a folder so named) and the log here.")
    results.add_argument("--travel-copy", type=Path, metavar="FOLDER",
                         help="Only write a float16 copy of the state to FOLDER (to carry elsewhere) and exit.")
    results.add_argument("--travel-moments", action="store_true", help="Keep the Adam moments in the travel copy.")
    return cli


def training_options(arguments: argparse.Namespace, state: Path) -> LoopOptions:
    """The model's training options from the command line."""
    common: dict[str, Any] = {
        "checkpoint": state, "data": tuple(arguments.data or [TRAINING_PHOTOS]),
        "steps": arguments.steps or 1, "minutes": arguments.minutes, "deadline": arguments.deadline,
        "stop_after": arguments.stop_after,
        "batch_size": arguments.batch_size or DEFAULT_BATCH[arguments.model], "patch_size": arguments.patch_size,
        "seed": arguments.seed, "device": arguments.device, "threads": arguments.threads,
        "compile": arguments.compile, "channels_last": arguments.channels_last, "bf16": arguments.bf16,
        "average_decay": arguments.average_decay, "checkpoint_minutes": arguments.checkpoint_minutes,
        "save_margin_seconds": arguments.save_margin, "part_bytes": int(arguments.part_mib * 2**20),
        "exact_moments": arguments.exact_moments, "log_every": arguments.log_every,
        "profile_steps": arguments.profile_steps, "profile_after": arguments.profile_after,
    }
    if arguments.lr is not None:
        common["learning_rate"] = arguments.lr
    if arguments.model == "base":
        return BaseTrainingOptions(**common, channels=arguments.channels, latent_channels=arguments.latent_channels,
                                   context=arguments.context, start_from=arguments.start_from,
                                   lambdas=arguments.lambdas, freeze_hyperprior=arguments.freeze_hyperprior,
                                   analysis_channels=arguments.analysis_channels,
                                   synthesis_channels=arguments.synthesis_channels)
    if arguments.model == "diffusion":
        widths = {"widths": arguments.widths} if arguments.widths else {}
        return DiffusionTrainingOptions(
            **common, **widths, base_weights=arguments.weights, blocks=arguments.blocks,
            lpips_weight=arguments.lpips_weight, own_prediction_fraction=arguments.own_prediction_fraction,
            relative_loss=arguments.relative_loss, level_range=arguments.level_range,
            restoration_weights=arguments.on_restored, start_from=arguments.start_from,
            adversarial_weight=arguments.adversarial_weight)
    return RestorationTrainingOptions(**common, base_weights=arguments.weights,
                                      start_from=None if arguments.from_scratch else
                                      arguments.start_from or DEFAULT_DIFFUSION_WEIGHTS)


class _Tee(io.TextIOBase):
    """The console's text to the terminal and to the log file alike."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False  # log lines rather than a progress bar


def check_output_apart(state: Path, output: Path) -> None:
    """Refuse, before the run, an --output whose copies would land on the state or its log
    (OUTPUT/NAME is emptied first: the state's parent as OUTPUT would empty the state itself)."""
    copied_to, original = Path(os.path.realpath(output / state.name)), Path(os.path.realpath(state))
    log = f"{state.name}.log"
    log_to, log_at = os.path.realpath(output / log), os.path.realpath(state.with_name(log))
    if copied_to == original or copied_to.is_relative_to(original) or original.is_relative_to(copied_to) \
            or log_to == log_at:
        raise DiracError(f"--output {output} would copy the state {state} onto itself: name another folder")
    check_writable_folder(output)


def copy_results(state: Path, log: Path, output: Path) -> list[Path]:
    """The state's parts into OUTPUT/NAME/ (ready to stand in for the state folder) and the log into OUTPUT."""
    folder = output / state_folder(state).name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    copied = [Path(shutil.copy2(part, folder / part.name)) for part in state_parts(state)]
    return [*copied, Path(shutil.copy2(log, output / log.name))]


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    if arguments.deadline is not None:  # the time left, whatever this process's start took
        arguments.minutes = max((arguments.deadline - time.time()) / 60, SHORTEST_MINUTES)
    if arguments.steps is None and arguments.minutes is None:
        arguments.minutes = DEFAULT_MINUTES
    try:
        state = state_folder(arguments.state or Path("checkpoints") / arguments.model)
        if arguments.travel_copy:
            # a state itself: not the state's folder or one inside it, nor a folder of other files
            check_not_in_state(state_folder(arguments.travel_copy), state)
            check_state_place(arguments.travel_copy)
            parts = write_travel_copy(state, arguments.travel_copy, moments=arguments.travel_moments,
                                      part_bytes=int(arguments.part_mib * 2**20))
            size = sum(p.stat().st_size for p in parts) / 2**20
            print(f"{arguments.travel_copy}: {len(parts)} parts, {size:.1f} MiB")
            return 0
        options = training_options(arguments, state)
        check_before_work(options)  # before the log is opened beside the state
        check_whole_blocks(arguments.patch_size)
        if arguments.output is not None:
            check_output_apart(state, arguments.output)
        if arguments.export is not None:
            check_not_in_state(arguments.export, state)
            if arguments.output is not None:  # OUTPUT/NAME is emptied before the state's copy goes there
                check_not_in_state(arguments.export, arguments.output / state.name)
            check_writable(arguments.export)
    except DiracError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log = state.with_name(state.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    interrupted = False
    with open(log, "a") as log_file:
        console = Console(file=_Tee(sys.stderr, log_file), soft_wrap=True)
        device = torch.cuda.get_device_name(options.device) if options.device.startswith("cuda") else "cpu"
        command = " ".join(["scripts/train_gpu.py", *(sys.argv[1:] if argv is None else argv)])
        console.print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {command} | torch {torch.__version__} "
                      f"on {device}", markup=False, highlight=False)
        failed = False
        try:
            TRAINERS[arguments.model](options, console)
        except KeyboardInterrupt:  # SIGTERM or Ctrl-C: the state is saved; deliver it all the same
            interrupted = True
        except DiracError as error:  # bad input: one line, as the dirac command gives it
            console.print(f"error: {error}", markup=False, highlight=False)
            return 2
        except Exception:  # a fault mid-run (out of GPU memory, a compiler's): the last saved state still ships
            console.print(traceback.format_exc(), markup=False, highlight=False)
            failed = True
        if arguments.export and state_exists(state):
            try:
                EXPORTERS[arguments.model](state, arguments.export)
                saved = " (the last state saved before the fault)" if failed else ""
                console.print(f"exported {arguments.export}{saved}")
            except Exception:  # the state stays, to export elsewhere; the log and parts still go out
                console.print(traceback.format_exc(), markup=False, highlight=False)
                console.print(f"export failed: the state {state} is kept")
                failed = True
    if arguments.output:
        copy_results(state, log, arguments.output)
    print(f"summary: {summary_path(state)}", file=sys.stderr)
    return 1 if failed else 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
