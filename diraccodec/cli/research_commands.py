"""Research commands: evaluation against other codecs, reports of evaluations, comparison pictures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from diraccodec.cli.common import (
    FileName,
    check_outputs,
    check_text_output,
    console,
    device_option,
    exact_option,
    markdown_option,
    parse_list,
    parse_references,
    perception_plot_option,
    plot_option,
    reports_errors,
    stdout_console,
    weights_option,
)
from diraccodec.container.drc import DEFAULT_MAX_PIXELS
from diraccodec.errors import DiracError, one_line
from diraccodec.options import DEFAULT_EFFORT, EFFORT_PASSES, MAX_STEPS

if TYPE_CHECKING:  # the evaluation loads torch: imported where a command runs
    from diraccodec.evaluation.run import Point


def parse_reference_settings(texts: tuple[str, ...], keys: list[str]) -> dict[str, list[int]]:
    """`KEY=Q1,Q2,...` texts as each chosen reference's qualities."""
    settings: dict[str, list[int]] = {}
    for text in texts:
        key, _, values = text.partition("=")
        key = key.strip().lower()
        if key not in keys:
            raise DiracError(f"--reference-settings {text!r}: {key!r} is not among the references "
                             f"({', '.join(keys) or 'none'})")
        qualities = parse_list(values, int, "--reference-settings")  # whole numbers: the codecs take no others
        if not qualities or any(not 0 <= q <= 100 for q in qualities) or qualities != sorted(set(qualities)):
            raise DiracError(f"--reference-settings {text!r}: give whole qualities from 0 to 100 in ascending order")
        settings[key] = qualities
    return settings


@click.command("eval")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("../shared/data/kodak"), show_default=True, help="Folder of test images.")
@click.option("--images", "image_count", type=click.IntRange(1), default=None,
              help="Only the first N images of the folder, in name order (default: all).")
@click.option("--held-out", is_flag=True,
              help="The held-out training photos under --data (the 5% training leaves out) instead of its images.")
@click.option("--levels", default="1,2,3,4,5,6,7,8", show_default=True,
              help="Comma-separated rate levels, each -1 to 8.")
@click.option("--steps", "steps_text", default="0", show_default=True,
              help=f"Diffusion step counts to decode each file with, each 0-{MAX_STEPS}, e.g. 0,1,2,5,10,20,50 (the "
                   "perception axis).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed for steps > 0.")
@click.option("-e", "--effort", "efforts_text", default=str(DEFAULT_EFFORT), show_default=True,
              help=f"Encoder efforts, each {min(EFFORT_PASSES)}-{max(EFFORT_PASSES)}, e.g. 1,2,5: one curve each, with "
                   "its BD-rate against the default effort's.")
@device_option
@exact_option
@click.option("--references", default="jpeg,webp,avif,jxl", show_default=True,
              help="Codecs to run in the same run (jpeg, webp, avif, jxl), or 'none'.")
@click.option("--no-references", is_flag=True, help="Same as --references none.")
@click.option("--reference-settings", "reference_settings", multiple=True, metavar="KEY=Q1,Q2,...",
              help="Other qualities (0-100, ascending) for one of the references, e.g. avif=0,4,10,20 "
                   "(repeatable; defaults in docs/measuring.md).")
@click.option("--json", "json_path", type=FileName(dir_okay=False, path_type=Path),
              default=Path("runs/eval.json"), show_default=True,
              help="Every figure; rewritten after each setting, so a stopped run keeps its figures.")
@markdown_option
@plot_option
@perception_plot_option
@weights_option
@reports_errors
def evaluate_command(data: Path, image_count: int | None, held_out: bool, levels: str, steps_text: str, seed: int,
                     efforts_text: str, device: str, exact: bool, references: str, no_references: bool,
                     reference_settings: tuple[str, ...], json_path: Path, markdown: Path | None,
                     plot_path: Path | None, perception_plot: Path | None, weights: Path | None) -> None:
    """Rate-distortion (and distortion-perception) evaluation on a folder of images (default: Kodak)."""
    from diraccodec import api
    from diraccodec.evaluation.codecs import REFERENCE_KEYS, diraccodec_codec, reference_codecs
    from diraccodec.evaluation.report import describe_machine, report_of, write_json, write_report
    from diraccodec.evaluation.run import evaluate, image_paths, images_id, read_images
    from diraccodec.modelfiles import models_in_use

    check_text_output()
    chosen = list(dict.fromkeys(parse_list(levels, float, "--levels")))  # each level once
    steps = parse_list(steps_text, int, "--steps")
    if not chosen:
        raise DiracError("--levels needs at least one level")
    if not steps or any(not 0 <= s <= MAX_STEPS for s in steps):
        raise DiracError(f"--steps takes one or more step counts between 0 and {MAX_STEPS}, got {steps_text!r}")
    keys = [] if no_references else parse_references(references, REFERENCE_KEYS)
    # the references first: they are quick, so a long run that is stopped still has them
    codecs = reference_codecs(keys, parse_reference_settings(reference_settings, keys))
    efforts = parse_list(efforts_text, int, "--effort")
    if not efforts or any(effort not in EFFORT_PASSES for effort in efforts):
        raise DiracError(f"--effort takes efforts between {min(EFFORT_PASSES)} and {max(EFFORT_PASSES)}")
    for effort in sorted(set(efforts)):
        codecs.append(diraccodec_codec(chosen, sorted(set(steps)), seed, str(weights) if weights else None, effort,
                                       device, exact))
    # fail now, not after the references have run: a level out of range, steps without a diffusion model
    codec = api.get_codec(weights, api.compute_for(device, exact))
    for level in chosen:
        try:
            api.check_quality(level, codec.num_levels)
        except DiracError as error:
            raise DiracError(f"--levels: {error}") from None
    if any(s > 0 for s in steps):
        api.get_diffusion(codec)

    measured = image_paths(data, held_out)[:image_count]
    check_outputs({"--json": json_path, "--markdown": markdown, "--plot": plot_path,
                   "--perception-plot": perception_plot}, measured)
    name = f"{data.name} (held out)" if held_out else data.name
    models = models_in_use(weights)
    machine = describe_machine(str(api.compute_for(device, exact).device))

    images = read_images(measured)
    data_id = images_id(images)
    decoding = {"seed": seed, "exact": exact}  # what changes the decoder's points beside the weights

    def save_partial(points: list) -> None:
        write_json(report_of(points, name, complete=False, models=models, machine=machine, data_id=data_id,
                             decoding=decoding), json_path)

    points = evaluate(images, codecs, console, save_partial)
    report = write_report(points, json_path, markdown, plot_path, name, perception_plot, models=models,
                          machine=machine, data_id=data_id, decoding=decoding)
    print_results(points, report, f"evaluation on {data}")


def print_results(points: list[Point], report: dict, title: str) -> None:
    """The points as a table, then each BD-rate, on standard output."""
    from diraccodec.evaluation.report import format_percent

    table = Table(title=title)
    for column in ("codec", "setting", "bpp", "PSNR", "MS-SSIM", "LPIPS", "FD-AlexNet", "s/MP", "enc s/MP"):
        table.add_column(column)
    for p in points:
        encode = "-" if p.encode_seconds_per_mp is None else f"{p.encode_seconds_per_mp:.2f}"  # older reports
        table.add_row(p.codec, f"{p.setting:g}", f"{p.bpp:.4f}", f"{p.psnr:.2f}", f"{p.ms_ssim:.4f}",
                      f"{p.lpips:.4f}", f"{p.fd_alexnet:.2f}", f"{p.seconds_per_mp:.2f}", encode)
    out = stdout_console()
    out.print(table)
    for ours, against in report["bd_rate_psnr_percent"].items():
        for name, value in against.items():
            lpips_value = report["bd_rate_lpips_percent"][ours][name]
            out.print(f"BD-rate of {ours} vs {name}: {format_percent(value)} (PSNR), "
                      f"{format_percent(lpips_value)} (LPIPS)")


@click.command("report")
@click.argument("json_path", type=FileName(exists=True, dir_okay=False, path_type=Path))
@click.option("--updated-by", "updates", type=FileName(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="A later run of some of the same settings: its points replace those of the same curve and "
                   "level, the others are added (repeatable, applied in order).")
@click.option("--json", "pooled_path", type=FileName(dir_okay=False, path_type=Path), default=None,
              help="Write the report here (needed with --updated-by, which leaves every input as it is; "
                   "default: rewrite JSON_PATH).")
@markdown_option
@plot_option
@perception_plot_option
@click.option("--curves", "curves_folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write one JSON per curve into this folder (CompressAI's layout).")
@reports_errors
def report_command(json_path: Path, updates: tuple[Path, ...], pooled_path: Path | None, markdown: Path | None,
                   plot_path: Path | None, perception_plot: Path | None, curves_folder: Path | None) -> None:
    """Tables, BD-rates and plots from an evaluation's JSON, also of a run stopped part-way, or of several pooled."""
    from diraccodec.evaluation.report import points_of, report_again

    check_text_output()
    if updates and pooled_path is None:
        raise DiracError("--updated-by needs --json for the pooled report (the inputs are left as they are)")
    # JSON_PATH alone may be rewritten (the default); with --updated-by every input stays as it is
    json_is_input = pooled_path is not None and not updates and \
        os.path.realpath(pooled_path) == os.path.realpath(json_path)
    check_outputs({"--json": None if json_is_input else pooled_path, "--markdown": markdown, "--plot": plot_path,
                   "--perception-plot": perception_plot}, [json_path, *updates])
    report = report_again(json_path, updates, pooled_path, markdown, plot_path, perception_plot)
    written = []
    if curves_folder is not None:  # the files first: a table that cannot be shown loses nothing
        from diraccodec.evaluation.curves import write_curves

        written = write_curves(report, curves_folder, report["data"])
    print_results(points_of(report), report, f"report of {report['data']}")
    console.print(one_line(f"{pooled_path or json_path}: {len(report['points'])} points"))
    if curves_folder is not None:
        console.print(one_line(f"{curves_folder}: {len(written)} curves"))


@click.command()
@click.argument("source", type=FileName(path_type=Path))
@click.option("-q", "--quality", type=float, required=True, help="Rate level of our file, -1 to 8.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), default=20, show_default=True,
              help="Diffusion steps of the last panel.")
@click.option("--box", default=None, help="Crop LEFT,TOP,SIZE in pixels (default: a centred square).")
@click.option("--zoom", type=click.IntRange(1, 8), default=2, show_default=True,
              help="Each crop pixel drawn as ZOOM x ZOOM pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed of the last panel.")
@click.option("-o", "--output", type=FileName(path_type=Path), required=True,
              help="Output picture (.png; any image suffix that decode writes).")
@device_option
@weights_option
@reports_errors
def compare(source: Path, quality: float, steps: int, box: str | None, zoom: int, seed: int, output: Path,
            device: str, weights: Path | None) -> None:
    """Side by side crops: original, AVIF at the same size or smaller (its smallest where that is larger), 0 steps
    and N steps."""
    from diraccodec.evaluation.codecs import check_references
    from diraccodec.evaluation.pictures import comparison_picture, is_valid_box
    from diraccodec.evaluation.run import SMALLEST_SIDE
    from diraccodec.image.files import image_format_for, write_image
    from diraccodec.image.planes import open_image

    image_format_for(output)
    check_outputs({"-o": output}, [source])
    check_references(["avif"])
    image = open_image(source, DEFAULT_MAX_PIXELS).convert("RGB")
    if min(image.size) < SMALLEST_SIDE:  # the panels' LPIPS is measured over the whole image
        raise DiracError(f"{source} is {image.width}x{image.height}: the comparison's LPIPS needs at least "
                         f"{SMALLEST_SIDE} pixels a side")
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
    picture = comparison_picture(image, quality, steps, crop, seed, zoom, str(weights) if weights else None, device)
    write_image(output, picture)
    console.print(one_line(f"{output}: written"))
