"""The user's commands: encode, decode, info, batch and bench."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from diraccodec.cli.common import (
    EXIT_SOME_FAILED,
    FileName,
    FileOrStream,
    FolderName,
    bpp_option,
    check_output,
    check_outputs,
    check_text_output,
    check_weights_there,
    console,
    detail_map_option,
    device_option,
    diffusion_weights_option,
    effort_option,
    exact_option,
    is_stream,
    markdown_option,
    max_pixels_option,
    no_restore_option,
    parse_references,
    png_compress_option,
    rate_target,
    read_drc_source,
    read_standard_input_image,
    report_error,
    reports_errors,
    seed_option,
    shown_name,
    size_option,
    stdout_console,
    steps_option,
    strip_option,
    threads_option,
    weights_option,
    write_output,
)
from diraccodec.console import bar_columns, draws_live_bars
from diraccodec.errors import CorruptFileError, DiracError, counted, one_line, warn
from diraccodec.image.files import IMAGE_FORMATS
from diraccodec.options import DEFAULT_QUALITY, MAX_STEPS

if TYPE_CHECKING:  # the API loads torch: imported where a command runs
    from diraccodec.api import Support

# The image formats decode and batch write, by suffix; standard output takes PNG unless told.
DECODED_SUFFIXES = tuple(IMAGE_FORMATS)


class ImageSuffix(click.Choice):
    """One of DECODED_SUFFIXES, with or without its dot, in any case (jpg, .JPEG)."""

    def __init__(self) -> None:
        super().__init__(DECODED_SUFFIXES)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            value = value.lower() if value.startswith(".") else "." + value.lower()
        return super().convert(value, param, ctx)


@contextlib.contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback that draws a bar on a terminal once the work has more
    than one part, and clears it at the end. Until then nothing is drawn, so an error in the
    block still prints as one line."""
    bar = Progress(*bar_columns(what), console=console, transient=True)
    task = None

    def advance(done: int, total: int) -> None:
        nonlocal task
        if task is None and total > 1 and console.is_terminal:
            bar.start()
            task = bar.add_task(what, total=total)
        if task is not None:
            bar.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        if task is not None:
            bar.stop()


@click.command()
@click.argument("source", type=FileOrStream(path_type=Path))
@click.option("-q", "--quality", type=float, default=None,
              help="Rate level, -1 (smallest files) to 8 (best); fractions such as 3.5 allowed.")
@size_option
@bpp_option
@click.option("-o", "--output", type=FileOrStream(path_type=Path), required=True,
              help='Output .drc file ("-": standard output).')
@effort_option
@click.option("--steps", "recommended_steps", type=click.IntRange(0, MAX_STEPS), default=None,
              help="Recommended diffusion steps, stored in the file for decoders that are not told.")
@detail_map_option
@strip_option
@device_option
@weights_option
@max_pixels_option
@threads_option
@reports_errors
def encode(source: Path, quality: float | None, size_text: str | None, bpp: float | None, output: Path, effort: int,
           recommended_steps: int | None, detail_map: bool | None, strip: bool, device: str, weights: Path | None,
           max_pixels: int) -> None:
    """Compress an image into a .drc file ("-": standard input or output)."""
    from diraccodec import api
    from diraccodec.image.planes import IMAGE_SUFFIXES

    rate = rate_target(quality, size_text, bpp)
    check_output(output, source)
    if not is_stream(output) and output.suffix.lower() in IMAGE_SUFFIXES:  # a viewer would call it broken
        warn(f"{output} is named as a {output.suffix.lower()[1:].upper()} image, but holds a .drc file "
             f"(name it .drc; dirac decode makes the image)")
    image = read_standard_input_image(max_pixels) if is_stream(source) else source
    with progress_bar("searching latents") as searched:
        data = api.encode(image, **rate, effort=effort, steps=recommended_steps, detail_map=detail_map,
                          device=device, weights=weights, max_pixels=max_pixels, progress=searched,
                          metadata=not strip, label=shown_name(source, "standard input"))
    info = api.inspect(data, max_pixels)  # before the write: a file no decoder reads replaces nothing
    write_output(output, data)
    console.print(one_line(f"{shown_name(output, 'standard output')}: {len(data)} bytes, "
                           f"{info.bits_per_pixel:.4f} bpp, level {info.header.quality:g}"))


@click.command()
@click.argument("source", type=FileOrStream(path_type=Path))
@click.option("-o", "--output", type=FileOrStream(path_type=Path), required=True,
              help="Output image: .png, .webp (lossless), .tif/.tiff, .bmp or .jpg/.jpeg (quality 100, 4:4:4; "
                   '.jpg and .bmp not with alpha); "-": standard output, PNG unless --format says otherwise.')
@click.option("--format", "format_suffix", type=ImageSuffix(), default=None,
              help="The output's image format (png, .PNG, jpg...): for standard output, or a device, pipe or "
                   "descriptor (/dev/stdout) named without an image suffix (default .png); a named output's suffix "
                   "must agree.")
@png_compress_option
@steps_option
@seed_option
@device_option
@exact_option
@no_restore_option
@weights_option
@diffusion_weights_option
@max_pixels_option
@threads_option
@reports_errors
def decode(source: Path, output: Path, format_suffix: str | None, png_compression: int, steps: int | None,
           seed: int | None, device: str, exact: bool, no_restore: bool, weights: Path | None,
           diffusion_weights: Path | None, max_pixels: int) -> None:
    """Decompress a .drc file into an image ("-": standard input, or standard output)."""
    from diraccodec import api
    from diraccodec.container import drc
    from diraccodec.image.files import check_image_fits, image_bytes, written_mode

    check_output(output, source)  # a bad output fails now, not after the work
    image_format = output_format(output, format_suffix)
    if diffusion_weights is not None:
        check_weights_there(diffusion_weights)
    data = read_drc_source(source, max_pixels)
    header = drc.unpack(data, max_pixels)
    check_image_fits(image_format, header.width, header.height, header.colour_mode.has_alpha)  # before the decode
    with progress_bar("decoding") as decoded:
        image = api.decode(data, steps, seed, weights=weights, diffusion_weights=diffusion_weights, device=device,
                           exact=exact, max_pixels=max_pixels, restore=not no_restore, progress=decoded)
    written = image_bytes(image, image_format, png_compression)
    write_output(output, written)
    console.print(one_line(f"{shown_name(output, 'standard output')}: {image.width}x{image.height} "
                           f"{written_mode(written)}"))


def output_format(output: Path, format_suffix: str | None) -> str:
    """The image format decode writes: the output's suffix, or for standard output (and a
    device or pipe named without an image suffix, such as /dev/null) `--format` (PNG without
    it). A named output whose suffix disagrees with `--format` is refused."""
    from diraccodec.image.files import image_format_for, is_special

    told = IMAGE_FORMATS[format_suffix or ".png"]
    if is_stream(output) or (is_special(output) and output.suffix.lower() not in IMAGE_FORMATS):
        return told
    named = image_format_for(output)
    if format_suffix is not None and named != told:
        raise DiracError(f"--format {format_suffix} disagrees with the output's suffix {output.suffix}")
    return named


@click.command()
@click.argument("sources", nargs=-1, required=True, type=FileOrStream(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print each file's fields as one JSON object on a line of its own, for scripts.")
@max_pixels_option
@reports_errors
def info(sources: tuple[Path, ...], as_json: bool, max_pixels: int) -> None:
    """Show .drc files' headers and their real bits per pixel.

    Of several files, one that cannot be read is reported in a line of its own and the others
    are shown; the status is then 1, as for a batch."""
    check_text_output()
    if sum(map(is_stream, sources)) > 1:
        raise DiracError("standard input (-) can be read once")
    if len(sources) == 1:
        click.echo(info_text(sources[0], as_json, max_pixels))
        return
    failed = shown = False
    for source in sources:
        try:
            text = info_text(source, as_json, max_pixels)
            click.echo(f"\n{text}" if shown and not as_json else text)  # a blank line between two files
            shown = True
        except DiracError as error:
            report_error(error, with_max_pixels=True, about=f"{shown_name(source, 'standard input')}: ")
            failed = True
    if failed:
        sys.exit(EXIT_SOME_FAILED)


def info_text(source: Path, as_json: bool, max_pixels: int) -> str:
    """`dirac info` of one file: a line per field, its name aligned, or one line of JSON."""
    from diraccodec import api
    from diraccodec.image.metadata import describe as describe_metadata
    from diraccodec.image.profiles import describe as describe_profile

    data = read_drc_source(source, max_pixels)
    details = api.inspect(data, max_pixels)
    header = details.header
    reads_as = api.serving_weights_id(header.weights_id)
    reading_note = "" if reads_as == header.weights_id else f" (read by the installed {reads_as.hex()}: the same model)"
    # a tag is four bytes the file chose: shown as Python writes bytes, escaped (a terminal's
    # escape sequence cannot act) and each its own (a backslash is escaped too)
    sections = {repr(tag)[2:-1]: len(payload) for tag, payload in header.sections.items()}
    split, profile = stream_split(data, max_pixels), describe_profile(details.icc_profile)
    diffusion = diffusion_text(api.diffusion_support(reads_as))
    restoration = restoration_text(api.restoration_support(reads_as))
    if as_json:
        metadata = {"exif": len(details.metadata.exif or b""), "xmp": len(details.metadata.xmp or b"")}
        return json.dumps({
            "file": shown_name(source, "standard input"), "format_version": header.version, "width": header.width,
            "height": header.height, "colour_mode": header.colour_mode.name, "level": header.quality,
            "weights": header.weights_id.hex(), "read_by": reads_as.hex(), "bytes": details.file_size,
            "bpp": details.bits_per_pixel,
            "sections": sections, "latent_stream": split, "colour_profile": profile, "metadata": metadata,
            "recommended_steps": details.recommended_steps, "diffusion": diffusion, "restoration": restoration,
        })
    stream = split.get("error") or (f"hyper-latents {split['hyper_latents']:.0f} B ({split['hyper_share']:.1f}%), "
                                    f"latents {split['latents']:.0f} B (information content)")
    rows = [
        ("file", one_line(shown_name(source, "standard input"))),
        ("format version", str(header.version)),
        ("size", f"{header.width}x{header.height}"),
        ("colour mode", header.colour_mode.name),
        ("level", f"{header.quality:g}"),
        ("weights", f"{header.weights_id.hex()}{reading_note}"),
        ("bytes", str(details.file_size)),
        ("bpp", f"{details.bits_per_pixel:.4f}"),
        ("sections", ", ".join(f"{tag} ({size} B)" for tag, size in sections.items())),
        ("latent stream", stream),
        ("colour profile", profile),
        ("metadata", describe_metadata(details.metadata)),
        ("recommended steps", "none" if details.recommended_steps is None else str(details.recommended_steps)),
        ("diffusion", diffusion),
        ("restoration", restoration),
    ]
    width = max(len(key) for key, _ in rows)  # plain lines, without a table's padding after the values
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def stream_split(data: bytes, max_pixels: int) -> dict[str, Any]:
    """The latent stream's bytes (information content) between the hyper-latents and the
    latents, where the installed base weights made the file; else why it was not read. A
    stream they find corrupt makes the file so, as a decode would call it."""
    from diraccodec import api

    try:
        split = api.stream_bytes(data, max_pixels=max_pixels)
    except CorruptFileError:
        raise
    except DiracError as error:
        return {"error": f"not read ({error})"}
    share = 100 * split.hyper_latents / max(split.hyper_latents + split.latents, 1e-9)
    return {"hyper_latents": split.hyper_latents, "latents": split.latents, "hyper_share": share}


def diffusion_text(support: Support) -> str:
    """`dirac info`'s line on steps above 0, from the API's `diffusion_support`."""
    if support.weights is None:
        return support.why_not
    note = f" (its full effect from {support.full_steps})" if support.full_steps else ""
    return f"available ({support.weights.name}); decode with --steps N{note}"


def restoration_text(support: Support) -> str:
    """`dirac info`'s line on 0 steps, from the API's `restoration_support`."""
    return support.why_not if support.weights is None else f"0 steps go through {support.weights.name}"


@click.command()
@click.argument("source", type=FolderName())
@click.argument("destination", type=FolderName())
@click.option("-q", "--quality", type=float, default=None,
              help=f"Rate level for images, -1 to 8 (default {DEFAULT_QUALITY:g}).")
@size_option
@bpp_option
@effort_option
@click.option("--steps", type=click.IntRange(0, MAX_STEPS), default=None,
              help="Diffusion steps when decoding .drc files (default: each file's recommendation, else 0); "
                   "when encoding images, the recommended steps stored in each file.")
@seed_option
@detail_map_option
@strip_option
@click.option("--format", "decoded_suffix", type=ImageSuffix(),
              default=".png", show_default=True,
              help="Image format that .drc files decode to (.webp lossless; .jpg quality 100, 4:4:4; .jpg and .bmp "
                   "not with alpha).")
@png_compress_option
@click.option("-j", "--workers", type=click.IntRange(1, 64), default=None,
              help="Parallel workers (default: up to 4, one per core; with --ray, one actor per CPU of the "
                   "cluster, or per GPU).")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              help="Run on a Ray cluster (pip install diraccodec[ray]): its address, or alone for the configured "
                   "cluster, else a private one started and stopped on this machine. SOURCE and DESTINATION must "
                   "be paths every node reads, or s3:// and other URIs that pyarrow opens (diraccodec[uris]).")
@device_option
@exact_option
@no_restore_option
@weights_option
@diffusion_weights_option
@max_pixels_option
@reports_errors
def batch(source: str, destination: str, quality: float | None, size_text: str | None, bpp: float | None,
          effort: int, steps: int | None, seed: int | None, detail_map: bool | None, strip: bool, decoded_suffix: str,
          png_compression: int, workers: int | None, overwrite: bool, ray_address: str | None, device: str,
          exact: bool, no_restore: bool, weights: Path | None, diffusion_weights: Path | None,
          max_pixels: int) -> None:
    """Convert a folder tree: images become .drc files and .drc files become images."""
    from diraccodec.batch import BatchSettings, check_settings, default_workers, plan_jobs, run_batch
    from diraccodec.batch.storage import is_uri, storage_for
    from diraccodec.image.files import check_writable_folder

    if size_text is None and bpp is None and quality is None:
        quality = DEFAULT_QUALITY
    rate = rate_target(quality, size_text, bpp)
    if ray_address is not None:
        from diraccodec.batch.ray_cluster import check_address

        check_address(ray_address)
    # a destination that cannot be written fails now, not once per file (Ray's workers write elsewhere)
    if not is_uri(destination) and ray_address is None:
        check_writable_folder(Path(destination))
    elif is_uri(destination):  # a missing bucket or refused credentials: said once, here
        storage_for(destination).exists(destination)
    settings = BatchSettings(
        quality=rate.get("quality", DEFAULT_QUALITY), size=rate.get("size"), bpp=rate.get("bpp"), effort=effort,
        detail_map=detail_map, metadata=not strip, steps=steps, seed=seed, restore=not no_restore,
        decoded_suffix=decoded_suffix, png_compression=png_compression, overwrite=overwrite, device=device,
        exact=exact, max_pixels=max_pixels, weights=str(weights.resolve()) if weights else None,
        diffusion_weights=str(diffusion_weights.resolve()) if diffusion_weights else None)
    jobs = plan_jobs(source, destination, settings)
    if not jobs:
        raise DiracError(f"no images or .drc files found under {source}")
    check_settings(settings, jobs, on_ray=ray_address is not None)
    started = time.monotonic()
    one_line_per_file = not draws_live_bars(console)  # in a log, instead of the bar
    with Progress(*bar_columns(), console=console, transient=False, disable=one_line_per_file) as progress:
        task = progress.add_task("converting", total=len(jobs))

        def advance(result: Any) -> None:
            progress.advance(task)
            reason = f": {result.message}" if result.status == "failed" else ""
            if one_line_per_file:
                progress.console.print(one_line(f"[{progress.tasks[0].completed:.0f}/{len(jobs)}] {result.status} "
                                                f"{result.job.source}{reason}"), markup=False, highlight=False)
            elif reason:
                progress.console.print(Text.assemble(("failed", "red"), one_line(f" {result.job.source}{reason}")))

        if ray_address is not None:
            from diraccodec.batch import run_batch_on_ray

            results = run_batch_on_ray(jobs, settings, ray_address, workers, advance)
        else:
            results = run_batch(jobs, settings, workers or default_workers(), advance)
    print_summary(results, time.monotonic() - started)
    if any(r.status == "failed" for r in results):
        sys.exit(EXIT_SOME_FAILED)


def print_summary(results: list[Any], seconds: float) -> None:
    """The batch's table: files, megabytes and bpp by outcome, then each failure with its
    reason and the time taken."""
    table = Table(title="dirac batch")
    for column in ("status", "files", "input MB", "output MB", "bpp"):
        table.add_column(column, justify="right" if column != "status" else "left")
    files = [r for r in results if r.job.unreadable is None]
    for status in ("converted", "skipped", "failed"):
        chosen = [r for r in files if r.status == status]
        if not chosen:
            continue
        if status != "converted":  # nothing was read or written for these: no sizes to give
            table.add_row(status, str(len(chosen)), "-", "-", "-")
            continue
        input_mb = sum(r.input_bytes for r in chosen) / 1e6
        output_mb = sum(r.output_bytes for r in chosen) / 1e6
        encoded = [r for r in chosen if r.job.encodes and r.pixels]
        bpp = f"{8 * sum(r.output_bytes for r in encoded) / sum(r.pixels for r in encoded):.4f}" if encoded else "-"
        table.add_row(status, str(len(chosen)), f"{input_mb:.2f}", f"{output_mb:.2f}", bpp)
    folders = len(results) - len(files)  # failed, each counted apart from the files
    if folders:
        table.add_row("unreadable folders", str(folders), "-", "-", "-")
    console.print(table)
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        console.print(one_line(f"failed: {result.job.source}: {result.message}"))
    also = f" and {counted(folders, 'unreadable folder')}" if folders else ""
    console.print(f"{counted(len(files), 'file')}{also} in {seconds:.1f} s")


@click.command()
@click.argument("images", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("-q", "--quality", "level", type=click.FloatRange(-1, 8), default=4.0, show_default=True,
              help="Rate level of the files timed.")
@effort_option
@click.option("--references", default="avif,jxl", show_default=True,
              help="Codecs timed on the same images in the same run (avif, jxl, webp, jpeg), or 'none'.")
@click.option("--steps", "steps", type=click.IntRange(0, MAX_STEPS), default=0, show_default=True,
              help="Also time whole decodes at this many diffusion steps (0: only one step, as a stage).")
@click.option("--repeat", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Time each stage this many times per image and keep the fastest.")
@click.option("--json", "json_path", type=FileName(dir_okay=False, path_type=Path), default=None,
              help="Also write every figure here.")
@markdown_option
@device_option
@exact_option
@weights_option
@threads_option
@reports_errors
def bench(images: tuple[Path, ...], level: float, effort: int, references: str, steps: int, repeat: int,
          json_path: Path | None, markdown: Path | None, device: str, exact: bool, weights: Path | None) -> None:
    """Time every stage in seconds per megapixel, beside AVIF and JPEG XL (default: the repository's sample)."""
    from diraccodec.bench import REFERENCES, BenchOptions, run_bench, table_of, write_bench

    check_text_output()
    keys = parse_references(references, list(REFERENCES))
    check_outputs({"--json": json_path, "--markdown": markdown}, images)
    options = BenchOptions(tuple(images), level, effort, tuple(keys), steps, repeat, device, exact,
                           str(weights) if weights else None)
    report = run_bench(options, console)
    write_bench(report, json_path, markdown)  # the files first: a table that cannot be shown loses nothing
    stdout_console().print(table_of(report))

