"""The `dirac` command line: encode, decode, info, batch and train.

Every command reports a user's mistake (bad file, bad option, unwritable output) as one
line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from diraccodec.container.drc import DEFAULT_MAX_PIXELS
from diraccodec.errors import DiracError, WrongWeightsError, show_warnings_on_one_line
from diraccodec.training.base import DEFAULT_TRAIN_DATA
from diraccodec.transforms import search as latent_search

EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 1

console = Console(stderr=True, highlight=False)


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DiracError into one line on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DiracError as error:
            click.echo(f"dirac: error: {error}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("dirac: interrupted", err=True)
            sys.exit(130)

    return wrapper


weights_option = click.option(
    "--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Base weights file (default: weights/base.safetensors, or $DIRAC_WEIGHTS).",
)
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
    help="Refuse images (or files claiming images) larger than this, before allocating anything.",
)
fast_option = click.option(
    "--fast", is_flag=True,
    help="U-Nets (diffusion, restoration) with oneDNN kernels: about 2.5x faster; pixels depend on thread count.",
)
search_option = click.option(
    "--search", "search_passes", type=click.IntRange(0, latent_search.MAX_PASSES),
    default=latent_search.DEFAULT_PASSES, show_default=True,
    help="Encoder search passes for cheaper latents (0: plain rounding, fastest; 4 take 3-5% off the "
         "rate at equal quality for about 15 s per megapixel).",
)
steps_option = click.option(
    "--steps", type=int, default=None,
    help="Diffusion steps at decode: 0 = base reconstruction (highest fidelity); more add realistic detail.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diraccodec")
def main() -> None:
    """diraccodec: a learned image codec with a diffusion decoder."""
    show_warnings_on_one_line()


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-q", "--quality", type=float, required=True, help="Rate level, 1 (smallest) to 8; fractions allowed.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .drc file.")
@click.option("--steps", type=int, default=None, help="Recommended diffusion steps stored in the file.")
@search_option
@click.option("--no-detail-map", is_flag=True,
              help="Leave out the map of where the image has fine detail, which steers the diffusion decoder "
                   "at the levels that use one (1 and 2; about 0.0025 bpp).")
@weights_option
@max_pixels_option
@reports_errors
def encode(source: Path, quality: float, output: Path, steps: int | None, search_passes: int, no_detail_map: bool,
           weights: Path | None, max_pixels: int) -> None:
    """Compress an image into a .drc file."""
    from diraccodec import api
    from diraccodec.image.files import write_atomic

    columns = (TextColumn("searching latents"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = None

        def searched(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = progress.add_task("search", total=total, visible=total > 1)
            progress.update(task, completed=done)

        data = api.encode(source, quality, steps=steps, weights=weights, max_pixels=max_pixels,
                          search_passes=search_passes, progress=searched, detail_map=False if no_detail_map else None)
    write_atomic(output, data)
    info = api.inspect(data)
    console.print(f"{output}: {len(data)} bytes, {info.bits_per_pixel:.4f} bpp")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output image (.png, ...).")
@steps_option
@click.option("--seed", type=int, default=None, help="Sampling seed (same seed, same pixels).")
@fast_option
@click.option("--no-restore", is_flag=True,
              help="At 0 steps, skip the restoration filter: the base synthesis alone (faster, less faithful).")
@weights_option
@max_pixels_option
@reports_errors
def decode(source: Path, output: Path, steps: int | None, seed: int | None, fast: bool, no_restore: bool,
           weights: Path | None, max_pixels: int) -> None:
    """Decompress a .drc file into an image."""
    from diraccodec import api
    from diraccodec.image.files import image_format_for, read_bytes, write_image

    image_format_for(output)  # refuse a bad output name before the work
    image = api.decode(read_bytes(source), steps, seed, weights=weights, max_pixels=max_pixels, fast=fast,
                       restore=not no_restore)
    write_image(output, image)
    console.print(f"{output}: {image.width}x{image.height} {image.mode}")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@max_pixels_option
@reports_errors
def info(source: Path, max_pixels: int) -> None:
    """Show a .drc file's header and its real bits per pixel."""
    from diraccodec import api
    from diraccodec.image.files import read_bytes

    details = api.inspect(read_bytes(source), max_pixels)
    header = details.header
    table = Table(show_header=False, box=None)
    rows = [
        ("file", str(source)),
        ("format version", str(header.version)),
        ("size", f"{header.width}x{header.height}"),
        ("colour mode", header.colour_mode.name),
        ("quality", f"{header.quality:g}"),
        ("weights", header.weights_id.hex()),
        ("bytes", str(details.file_size)),
        ("bpp", f"{details.bits_per_pixel:.4f}"),
        ("sections", ", ".join(f"{tag.decode('ascii', 'replace')} ({len(v)} B)" for tag, v in header.sections.items())),
        ("recommended steps", "none" if details.recommended_steps is None else str(details.recommended_steps)),
        ("diffusion", diffusion_support(header.weights_id)),
        ("restoration", restoration_support(header.weights_id)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console(highlight=False).print(table)


def diffusion_support(weights_id: bytes) -> str:
    """Whether the installed diffusion weights can enhance files made with `weights_id`."""
    from diraccodec import api
    from diraccodec.modelfiles import default_diffusion_path, load_diffusion_weights

    path = default_diffusion_path()  # read on every call: $DIRAC_DIFFUSION_WEIGHTS may change
    if not path.exists():
        return f"not available: no diffusion weights at {path} (0 steps only)"
    try:
        diffusion = load_diffusion_weights(path.resolve())
    except DiracError as error:
        return f"unavailable ({error})"
    if diffusion.base_weights_id != weights_id:
        return f"not available: {diffusion.path.name} was trained on other base weights"
    try:
        api.restorer_for(diffusion)  # the filter it was trained on, where it needs one
    except WrongWeightsError:
        return (f"not available: {diffusion.path.name} enhances the output of restoration weights "
                f"{diffusion.restoration_weights_id.hex()}, which are not installed")
    except DiracError as error:
        return f"unavailable ({error})"
    full = diffusion.settings.full_steps
    note = f" (its full effect from {full})" if full else ""
    return f"available ({diffusion.path.name}); decode with --steps N{note}"


def restoration_support(weights_id: bytes) -> str:
    """Whether 0 steps will go through the installed restoration filter for `weights_id`."""
    from diraccodec.modelfiles import load_restoration_weights

    try:
        restoration = load_restoration_weights()
    except DiracError as error:
        return f"unavailable ({error})"
    if restoration is None or restoration.base_weights_id != weights_id:
        return "none: 0 steps give the base synthesis alone"
    return f"0 steps go through {restoration.path.name}"


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
@click.option("-q", "--quality", type=float, default=3.0, show_default=True, help="Rate level for images.")
@steps_option
@click.option("--seed", type=int, default=None)
@click.option("--format", "decoded_suffix", type=click.Choice([".png", ".webp", ".tif", ".bmp"]), default=".png",
              show_default=True, help="Image format that .drc files decode to.")
@click.option("-j", "--workers", type=click.IntRange(1, 64), default=None, help="Parallel workers.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@fast_option
@search_option
@weights_option
@max_pixels_option
@reports_errors
def batch(source: Path, destination: Path, quality: float, steps: int | None, seed: int | None,
          decoded_suffix: str, workers: int | None, overwrite: bool, fast: bool, search_passes: int,
          weights: Path | None, max_pixels: int) -> None:
    """Convert a folder tree: images become .drc files and .drc files become images."""
    from diraccodec import api
    from diraccodec.batch import BatchSettings, default_workers, plan_jobs, run_batch

    codec = api.get_codec(weights)  # validate the options once, before any worker starts
    api.check_quality(quality, codec.num_levels)
    settings = BatchSettings(quality, steps, seed, decoded_suffix, str(weights) if weights else None, overwrite,
                             max_pixels, fast, search_passes)
    jobs = plan_jobs(source, destination, settings)
    if not jobs:
        raise DiracError(f"no images or .drc files found under {source}")
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("converting", total=len(jobs))

        def advance(result: Any) -> None:
            progress.advance(task)
            if result.status == "failed":
                progress.console.print(f"[red]failed[/red] {result.job.source}: {result.message}")

        results = run_batch(jobs, settings, workers or default_workers(), advance)
    _print_summary(results, time.monotonic() - started)
    if any(r.status == "failed" for r in results):
        sys.exit(EXIT_SOME_FAILED)


def _print_summary(results: list[Any], seconds: float) -> None:
    table = Table(title="dirac batch")
    for column in ("status", "files", "input MB", "output MB", "bpp"):
        table.add_column(column, justify="right" if column != "status" else "left")
    for status in ("converted", "skipped", "failed"):
        chosen = [r for r in results if r.status == status]
        if not chosen:
            continue
        input_mb = sum(r.input_bytes for r in chosen) / 1e6
        output_mb = sum(r.output_bytes for r in chosen) / 1e6
        encoded = [r for r in chosen if r.job.encodes and r.pixels]
        bpp = f"{8 * sum(r.output_bytes for r in encoded) / sum(r.pixels for r in encoded):.4f}" if encoded else "-"
        table.add_row(status, str(len(chosen)), f"{input_mb:.2f}", f"{output_mb:.2f}", bpp)
    console.print(table)
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        console.print(f"failed: {result.job.source}: {result.message}")
    console.print(f"{len(results)} files in {seconds:.1f} s")


def parse_list(text: str, kind: type, option: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiracError(f"{option} must be numbers separated by commas, got {text!r}") from None


@main.command("eval")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("../shared/data/kodak"), show_default=True, help="Folder of test images.")
@click.option("--levels", default="1,2,3,4,5,6,7,8", show_default=True, help="Comma-separated rate levels.")
@click.option("--steps", "steps_text", default="0", show_default=True,
              help="Diffusion step counts to decode each file with, e.g. 0,1,2,5,10,20,50 (the perception axis).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed for steps > 0.")
@fast_option
@search_option
@click.option("--references", default="jpeg,webp,avif,jxl", show_default=True,
              help="Codecs to run in the same run (jpeg, webp, avif, jxl), or 'none'.")
@click.option("--no-references", is_flag=True, help="Same as --references none.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("runs/eval.json"), show_default=True,
              help="Every figure; rewritten after each setting, so a stopped run keeps its figures.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as Markdown here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the rate-distortion curves (PNG) here.")
@click.option("--perception-plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the distortion-perception curves per level (PNG) here.")
@weights_option
@reports_errors
def evaluate_command(data: Path, levels: str, steps_text: str, seed: int, fast: bool, search_passes: int,
                     references: str,
                     no_references: bool,
                     json_path: Path, markdown: Path | None, plot_path: Path | None, perception_plot: Path | None,
                     weights: Path | None) -> None:
    """Rate-distortion (and distortion-perception) evaluation on a folder of images (default: Kodak)."""
    from diraccodec.evaluation.codecs import REFERENCE_KEYS, diraccodec_codec, reference_codecs
    from diraccodec.evaluation.run import (
        evaluate,
        format_percent,
        load_images,
        report_of,
        write_json,
        write_report,
    )

    chosen = parse_list(levels, float, "--levels")
    steps = parse_list(steps_text, int, "--steps")
    if not chosen or not steps or any(not 0 <= s <= 100 for s in steps):
        raise DiracError("--levels and --steps need at least one value; steps are between 0 and 100")
    keys = [] if no_references or references.strip().lower() == "none" else \
        [k.strip().lower() for k in references.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in REFERENCE_KEYS]:
        raise DiracError(f"unknown reference codec {unknown[0]!r}; choose from {', '.join(REFERENCE_KEYS)}")
    # the references first: they are quick, so a long run that is stopped still has them
    codecs = reference_codecs(keys)
    codecs.append(diraccodec_codec(chosen, sorted(set(steps)), seed, str(weights) if weights else None, fast,
                                   search_passes))
    if any(s > 0 for s in steps):  # fail now, not after the first level, when there is no diffusion model
        from diraccodec import api

        api.get_diffusion(api.get_codec(weights))

    def save_partial(points: list) -> None:
        write_json(report_of(points, data.name, complete=False), json_path)

    points = evaluate(load_images(data), codecs, console, save_partial)
    report = write_report(points, json_path, markdown, plot_path, data.name, perception_plot)
    table = Table(title=f"evaluation on {data}")
    for column in ("codec", "setting", "bpp", "PSNR", "MS-SSIM", "LPIPS", "FD-AlexNet", "s/MP", "enc s/MP"):
        table.add_column(column)
    for p in points:
        table.add_row(p.codec, f"{p.setting:g}", f"{p.bpp:.4f}", f"{p.psnr:.2f}", f"{p.ms_ssim:.4f}",
                      f"{p.lpips:.4f}", f"{p.fd_alexnet:.2f}", f"{p.seconds_per_mp:.2f}",
                      f"{p.encode_seconds_per_mp:.2f}")
    out = Console(highlight=False)
    out.print(table)
    for ours, against in report["bd_rate_psnr_percent"].items():
        for name, value in against.items():
            lpips_value = report["bd_rate_lpips_percent"][ours][name]
            out.print(f"BD-rate of {ours} vs {name}: {format_percent(value)} (PSNR), "
                      f"{format_percent(lpips_value)} (LPIPS)")


@main.command("report")
@click.argument("json_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--updated-by", "updates", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="A later run of some of the same settings: its points replace those of the same curve and "
                   "level, the others are added (repeatable, applied in order).")
@click.option("--json", "pooled_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report here (needed with --updated-by, which leaves every input as it is; "
                   "default: rewrite JSON_PATH).")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--perception-plot", type=click.Path(dir_okay=False, path_type=Path), default=None)
@reports_errors
def report_command(json_path: Path, updates: tuple[Path, ...], pooled_path: Path | None, markdown: Path | None,
                   plot_path: Path | None, perception_plot: Path | None) -> None:
    """Tables, BD-rates and plots from an evaluation's JSON, also of a run stopped part-way, or of several pooled."""
    import json
    import shlex

    from diraccodec.evaluation.run import points_of, pooled_points, write_report

    if updates and pooled_path is None:
        raise DiracError("--updated-by needs --json for the pooled report (the inputs are left as they are)")
    saved: list[dict] = []
    for source in (json_path, *updates):
        try:
            saved.append(json.loads(source.read_text()))
            points_of(saved[-1])
        except (ValueError, KeyError, TypeError) as error:
            raise DiracError(f"{source} is not an evaluation report ({error})") from None
    points = pooled_points(saved)
    if not points:
        raise DiracError(f"{json_path} holds no measured points yet")
    note = " (stopped part-way; every setting it finished is here)"
    commands = [report.get("command", "") for report in saved]
    commands = [c + note if not r.get("complete", True) and not c.endswith(note) else c
                for c, r in zip(commands, saved, strict=True)]
    # pooled, the report's command is the whole recipe: each run, then this pooling
    pooling = " ".join(["dirac report", shlex.quote(str(json_path)),
                        *(f"--updated-by {shlex.quote(str(update))}" for update in updates),
                        f"--json {shlex.quote(str(pooled_path))}"])
    command = " && ".join([*commands, pooling]) if updates else commands[0]
    write_report(points, pooled_path or json_path, markdown, plot_path, saved[0].get("data", json_path.stem),
                 perception_plot, command, complete=all(bool(r.get("complete", True)) for r in saved))
    console.print(f"{pooled_path or json_path}: {len(points)} points")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-q", "--quality", type=float, required=True, help="Rate level of our file.")
@click.option("--steps", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--box", default=None, help="Crop LEFT,TOP,SIZE in pixels (default: a centred square).")
@click.option("--zoom", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output picture (.png).")
@weights_option
@reports_errors
def compare(source: Path, quality: float, steps: int, box: str | None, zoom: int, seed: int, output: Path,
            weights: Path | None) -> None:
    """Side by side crops: original, AVIF at the same size, 0 steps and N steps."""
    from diraccodec.evaluation.pictures import comparison_picture, is_valid_box
    from diraccodec.image.files import image_format_for, write_image
    from diraccodec.image.planes import open_image

    image_format_for(output)
    image = open_image(source, DEFAULT_MAX_PIXELS).convert("RGB")
    if box is None:
        size = min(256, image.width, image.height)
        crop = ((image.width - size) // 2, (image.height - size) // 2, size)
    else:
        values = parse_list(box, int, "--box")
        if len(values) != 3:
            raise DiracError(f"--box takes LEFT,TOP,SIZE, got {box!r}")
        crop = (values[0], values[1], values[2])
    if not is_valid_box(image, crop):
        raise DiracError(f"--box {crop} does not fit inside the {image.width}x{image.height} image")
    write_image(output, comparison_picture(image, quality, steps, crop, seed, zoom, str(weights) if weights else None))
    console.print(f"{output}: written")


@main.group()
def train() -> None:
    """Train the models (long-running; resumes from its checkpoint)."""


training_data_option = click.option(
    "--data", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
    default=[DEFAULT_TRAIN_DATA], show_default=True, help="Folders of training photos (or packed shards).")


def training_options(
    checkpoint: str, steps: int, batch_size: int = 8, patch_size: int = 128
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every training command takes, with its own checkpoint, step and crop defaults."""
    options = [
        training_data_option,
        click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=Path(checkpoint),
                     show_default=True, help="Resumed from when it exists; written every few minutes."),
        click.option("--steps", type=click.IntRange(1), default=steps, show_default=True, help="Total steps."),
        click.option("--batch-size", type=click.IntRange(1), default=batch_size, show_default=True),
        click.option("--patch-size", type=click.IntRange(64), default=patch_size, show_default=True),
        click.option("--lr", "learning_rate", type=float, default=2e-4, show_default=True),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda."),
        click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch."),
        click.option("--checkpoint-minutes", type=float, default=5.0, show_default=True),
        click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Train for this long (wall clock); the step count is then set from the measured speed."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--average-decay", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Keep a moving average of the weights (e.g. 0.999) and export it; 0: none."),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        command = reports_errors(command)
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@train.command("base")
@training_options("checkpoints/base.safetensors", 9000)
def train_base_command(data: tuple[Path, ...], **loop: Any) -> None:
    """Train the multi-rate hyperprior base codec."""
    from diraccodec.training.base import BaseTrainingOptions, train_base

    train_base(BaseTrainingOptions(data=tuple(data), **loop))


@train.command("diffusion")
@training_options("checkpoints/diffusion.safetensors", 20000)
@click.option("--lpips-weight", type=float, default=0.0, show_default=True, help="Weight of the VGG LPIPS term.")
@click.option("--own-prediction-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of samples noised from the model's own first step rather than the truth.")
@click.option("--relative-loss", is_flag=True,
              help="Divide each crop's error and LPIPS by the base reconstruction's, so every level counts alike.")
@click.option("--level-range", default=None, metavar="LOW,HIGH",
              help="Train only on rate levels in this range (default: all of the base's levels).")
@click.option("--blocks", type=click.IntRange(1), default=None,
              help="Residual blocks per resolution of the U-Net: a new run's depth; a checkpoint with fewer is "
                   "deepened, the new blocks starting as the identity (default: the checkpoint's, or 1).")
@click.option("--on-restored", "restoration_weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Learn to enhance this restoration filter's output instead of the base synthesis.")
@weights_option
def train_diffusion_command(data: tuple[Path, ...], weights: Path | None, level_range: str | None,
                            restoration_weights: Path | None, **loop: Any) -> None:
    """Train the diffusion decoder on the frozen base codec's reconstructions."""
    from diraccodec.modelfiles import default_weights_path
    from diraccodec.training.diffusion import DiffusionTrainingOptions, train_diffusion

    levels = None
    if level_range is not None:
        bounds = parse_list(level_range, float, "--level-range")
        if len(bounds) != 2:
            raise DiracError(f"--level-range takes LOW,HIGH, got {level_range!r}")
        levels = (bounds[0], bounds[1])
    train_diffusion(DiffusionTrainingOptions(data=tuple(data), base_weights=weights or default_weights_path(),
                                             level_range=levels, restoration_weights=restoration_weights,
                                             **loop))


@train.command("restoration")
@training_options("checkpoints/restoration.safetensors", 4000)
@click.option("--start-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Diffusion weights whose U-Net a fresh run starts from (default: the shipped ones).")
@click.option("--from-scratch", is_flag=True, help="Start a fresh run from the identity, not a diffusion U-Net.")
@weights_option
def train_restoration_command(data: tuple[Path, ...], weights: Path | None, start_from: Path | None,
                              from_scratch: bool, **loop: Any) -> None:
    """Train the restoration filter (squared error) on the frozen base codec's reconstructions."""
    from diraccodec.modelfiles import default_diffusion_path, default_weights_path
    from diraccodec.training.restoration import RestorationTrainingOptions, train_restoration

    origin = None if from_scratch else (start_from or default_diffusion_path())
    train_restoration(RestorationTrainingOptions(data=tuple(data), base_weights=weights or default_weights_path(),
                                                 start_from=origin, **loop))


@train.command("entropy")
@training_options("checkpoints/base-entropy.safetensors", 4000, batch_size=16, patch_size=320)
@click.option("--crops", type=click.IntRange(1), default=2400, show_default=True,
              help="Crops whose latents are computed once and trained on.")
@weights_option
def train_entropy_command(data: tuple[Path, ...], weights: Path | None, **loop: Any) -> None:
    """Fine-tune the base codec's entropy model for rate alone, transforms frozen, on large crops."""
    from diraccodec.modelfiles import default_weights_path
    from diraccodec.training.entropy import EntropyTrainingOptions, train_entropy

    train_entropy(EntropyTrainingOptions(data=tuple(data), base_weights=weights or default_weights_path(), **loop))


@train.command("pack")
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@training_data_option
@click.option("--prescale", type=click.FloatRange(min=1), default=2.0, show_default=True,
              help="Downscale applied once, ahead of training.")
@click.option("--quality", type=click.IntRange(50, 100), default=80, show_default=True, help="JPEG quality (4:4:4).")
@reports_errors
def train_pack_command(output: Path, data: tuple[Path, ...], prescale: float, quality: int) -> None:
    """Pack training photos into a small, pre-downscaled shard (to carry to a GPU machine)."""
    from diraccodec.training.data import pack_shard

    count, size = pack_shard(data, output, prescale, quality)
    console.print(f"{output}: {count} images, {size / 2**20:.1f} MiB")


@train.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@reports_errors
def train_export_command(checkpoint: Path, output: Path) -> None:
    """Write inference weights from a training checkpoint (base codec, diffusion decoder or restoration filter)."""
    from diraccodec.training.base import export_checkpoint
    from diraccodec.training.checkpoint import load_checkpoint_metadata
    from diraccodec.training.diffusion import export_diffusion_checkpoint
    from diraccodec.training.restoration import export_restoration_checkpoint

    metadata = load_checkpoint_metadata(checkpoint).metadata
    if metadata.get("kind") == "restoration":
        export_restoration_checkpoint(checkpoint, output)
        kind = "restoration filter"
    elif "base_weights_id" in metadata:
        export_diffusion_checkpoint(checkpoint, output)
        kind = "diffusion decoder"
    else:
        export_checkpoint(checkpoint, output)
        kind = "base codec"
    console.print(f"wrote {output} ({kind})")


if __name__ == "__main__":
    main()
