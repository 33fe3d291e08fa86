"""An evaluation's report: BD-rates, plots, its JSON (with the machine and command that made
it) and Markdown table, and the pooling of reports of several runs (`dirac report`)."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from diraccodec.errors import DiracError, warn
from diraccodec.evaluation.metrics import FD_DESCRIPTION, bd_rate
from diraccodec.evaluation.run import OURS, Point, curve_name
from diraccodec.image.files import write_atomic


def points_by_codec(points: list[Point]) -> dict[str, list[Point]]:
    """Each codec's points (one curve per codec, its settings in the order they came)."""
    grouped: dict[str, list[Point]] = {}
    for point in points:
        grouped.setdefault(point.codec, []).append(point)
    return grouped


def is_ours(name: str) -> bool:
    return name == OURS or name.startswith(OURS + " ")


def default_effort_curve(name: str) -> str:
    """The curve at the default encoder effort with the same steps: "diraccodec effort 3 (20
    steps)" -> "diraccodec (20 steps)"."""
    return re.sub(r" effort \d+", "", name)


def bd_rates(points: list[Point], metric: str) -> dict[str, dict[str, float]]:
    """BD-rate of each of our curves against every other codec; LPIPS is negated (lower is better)."""
    sign = -1.0 if metric == "lpips" else 1.0
    grouped = points_by_codec(points)

    def axis(curve: list[Point]) -> tuple[list[float], list[float]]:
        return [p.bpp for p in curve], [sign * getattr(p, metric) for p in curve]

    def anchors(ours: str) -> list[str]:
        """The other codecs, and for an encoder effort's curve the default effort's too."""
        names = [name for name in grouped if not is_ours(name)]
        base = default_effort_curve(ours)
        return [*names, base] if base != ours and base in grouped else names

    return {
        ours: {name: bd_rate(*axis(grouped[name]), *axis(grouped[ours])) for name in anchors(ours)}
        for ours in grouped if is_ours(ours) and len(grouped[ours]) > 1
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(figure: object, path: Path) -> None:
    """A 32-colour palette PNG at 80 dpi: line plots keep every line, in a tenth of the bytes."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=80, format="png")  # type: ignore[attr-defined]
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=32, method=Image.Quantize.MEDIANCUT)
    output = io.BytesIO()
    palette.save(output, format="PNG", optimize=True)
    write_atomic(path, output.getvalue())


def plot(points: list[Point], path: Path, title: str) -> None:
    """Rate against PSNR, MS-SSIM and LPIPS; of our step counts only 0 and the largest up to 20."""
    plt = _pyplot()
    steps = sorted({p.steps for p in points if is_ours(p.codec) and p.steps and p.steps <= 20})
    wanted = {OURS} | ({curve_name(OURS, steps[-1])} if steps else set())
    ours = {p.codec for p in points if is_ours(p.codec)}
    # the default effort's curves; a run of other efforts alone shows each of theirs
    shown = (wanted & ours) or {name for name in ours if default_effort_curve(name) in wanted}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, curve in points_by_codec(points).items():
        if is_ours(name) and name not in shown:
            continue
        style = dict(marker="o", linewidth=2.5 if is_ours(name) else 1.2)
        for ax, metric in zip(axes, ("psnr", "ms_ssim", "lpips"), strict=True):
            ax.plot([p.bpp for p in curve], [getattr(p, metric) for p in curve], label=name, **style)
    for ax, label in zip(axes, ("PSNR (dB, RGB)", "MS-SSIM", "LPIPS (AlexNet, lower is better)"), strict=True):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path)
    plt.close(figure)


def plot_perception(points: list[Point], path: Path, title: str) -> None:
    """The distortion-perception curves: for each level, PSNR against LPIPS and FD as steps grow."""
    plt = _pyplot()
    # the default encoder's curves: other efforts change the files, not the steps' effect
    ours = [p for p in points if is_ours(p.codec) and default_effort_curve(p.codec) == p.codec]
    if not ours and any(is_ours(p.codec) for p in points):  # other efforts alone: the first one's curves
        first = min(p.codec.split(" (")[0] for p in points if is_ours(p.codec))  # "diraccodec effort 1"
        ours = [p for p in points if is_ours(p.codec) and p.codec.split(" (")[0] == first]
    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    for level in sorted({p.setting for p in ours}):
        curve = sorted((p for p in ours if p.setting == level), key=lambda p: p.steps or 0)
        label = f"level {level:g} ({curve[0].bpp:.3f} bpp)"
        axes[0].plot([p.psnr for p in curve], [p.lpips for p in curve], marker="o", label=label)
        for p in curve:
            axes[0].annotate(str(p.steps or 0), (p.psnr, p.lpips), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
        steps = [max(p.steps or 0, 0.5) for p in curve]
        axes[1].plot(steps, [p.lpips for p in curve], marker="o", label=label)
        axes[2].plot(steps, [p.fd_alexnet for p in curve], marker="o", label=label)
    axes[0].set_xlabel("PSNR (dB, RGB)")
    axes[0].set_ylabel("LPIPS (AlexNet)")
    axes[0].invert_xaxis()
    axes[0].set_title("distortion-perception (numbers: steps)")
    for ax, label in ((axes[1], "LPIPS (AlexNet)"), (axes[2], "FD-AlexNet (256x256 patches)")):
        ax.set_xscale("log")
        ax.set_xlabel("diffusion steps (0 drawn at 0.5)")
        ax.set_ylabel(label)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path)
    plt.close(figure)


def shell_words(words: Sequence[str], windows: bool = os.name == "nt") -> str:
    """Words as one command line that reads back as those words: POSIX shell quoting, or on
    Windows the quoting its programs parse (`"my photos"`, which cmd.exe keeps whole)."""
    return subprocess.list2cmdline(words) if windows else shlex.join(words)


def command_line() -> str:
    """This process's `dirac` command, as a report records it."""
    return shell_words(["dirac", *sys.argv[1:]])


def _finite_or_none(value: object) -> object:
    """JSON has no NaN: a figure that could not be computed is null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


def describe_machine(device: str = "cpu") -> str:
    """Where and with what a run measures: the CPU (its vector instructions decide bfloat16),
    the device and thread count, the versions of the code and of the codecs' libraries."""
    import PIL
    import torch  # which an evaluation has loaded

    from diraccodec import __version__
    from diraccodec.compute import cpu_description

    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else device
    return (f"{platform.machine()}, {cpu_description()}; networks on {where}, {torch.get_num_threads()} threads; "
            f"diraccodec {__version__}, torch {torch.__version__}, Pillow {PIL.__version__}")


def report_of(points: list[Point], data_name: str, complete: bool, command: str | None = None,
              models: dict[str, str | None] | None = None, machine: str | None = None,
              data_id: str | None = None, decoding: dict | None = None) -> dict:
    """The report's fields; `models`: the weights ids measured (modelfiles.models_in_use);
    `machine`: where they were measured (default: this machine); `data_id`: images_id;
    `decoding`: the decoder's settings that change its points (seed, exact mode)."""
    if machine is None:
        machine = describe_machine()
    return _finite_or_none({
        "command": command or command_line(),
        "data": data_name,
        **({"data_id": data_id} if data_id else {}),
        "machine": machine,
        "complete": complete,
        **({"models": models} if models else {}),
        **({"decoding": decoding} if decoding else {}),
        "fd_alexnet": FD_DESCRIPTION,
        "points": [asdict(p) for p in points],
        "bd_rate_psnr_percent": bd_rates(points, "psnr"),
        "bd_rate_lpips_percent": bd_rates(points, "lpips"),
    })


def _significant(value: object) -> object:
    """Floats to 7 significant digits: far beyond what the measurements resolve."""
    return float(f"{value:.7g}") if isinstance(value, float) else value


def write_json(report: dict, path: Path) -> None:
    """Readable and small: the report's fields indented, each point on one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = []
    for key, value in report.items():
        if key == "points":
            rows = ",\n".join(f"    {json.dumps({k: _significant(v) for k, v in point.items()})}" for point in value)
            fields.append(f'  "points": [\n{rows}\n  ]')
        else:
            fields.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    write_atomic(path, ("{\n" + ",\n".join(fields) + "\n}\n").encode())


def points_of(report: dict) -> list[Point]:
    """The points of a saved report, complete or not; null figures come back as NaN, and a
    point of another shape (a figure as text) is a TypeError, which report_again reports."""
    def restored(fields: dict) -> Point:
        point = Point(**fields)
        for name in ("psnr", "ms_ssim", "lpips", "fd_alexnet", "seconds_per_mp"):
            if getattr(point, name) is None:
                setattr(point, name, float("nan"))
        numbers = (point.setting, point.bpp, point.psnr, point.ms_ssim, point.lpips, point.fd_alexnet,
                   point.seconds_per_mp, point.images)
        optional = (point.steps, point.seconds_per_step_per_mp, point.encode_seconds_per_mp)
        if not isinstance(point.codec, str) or not all(_is_number(value) for value in numbers) or \
                not all(value is None or _is_number(value) for value in optional):
            raise TypeError(f"a point of another shape: {fields}")  # what report_again calls not a report
        return point

    return [restored(fields) for fields in report["points"]]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def pooled_points(reports: list[dict]) -> list[Point]:
    """The points of several reports; a later report's point replaces the same curve's at the same setting.

    A change that touches some levels or step counts is measured again on those alone; pooled
    with the earlier run, the figures describe the codec as it now is.
    """
    pooled: dict[tuple[str, float], Point] = {}
    for report in reports:
        pooled.update({(point.codec, point.setting): point for point in points_of(report)})
    return list(pooled.values())


def _why_not_pooled(saved: list[dict]) -> str | None:
    """How the saved reports' images differ (None where they may be pooled): the folder's name,
    the count, or the pixels' fingerprint (another folder of that name)."""
    data_sets = list(dict.fromkeys(str(report["data"]) for report in saved if report.get("data")))
    if len(data_sets) > 1:
        return " and ".join(data_sets)
    where = f"other images of {data_sets[0] if data_sets else 'the folder'}"
    counts = sorted({int(point["images"]) for report in saved for point in report["points"]})
    if len(counts) > 1:
        return f"{where}: " + " and ".join(f"{count} image{'' if count == 1 else 's'}" for count in counts)
    if len({report["data_id"] for report in saved if report.get("data_id")}) > 1:
        return f"{where}: other pixels"
    return None


def _warn_where_runs_differ(saved: list[dict]) -> None:
    """Runs pooled across weights, decoder settings or machines (library versions, speed): as
    designed, a later run replaces some settings' points, but the mix is said, not hidden."""
    for field, what in (("models", "weights"), ("decoding", "decoder settings"), ("machine", "machines")):
        values = list(dict.fromkeys(json.dumps(r[field], sort_keys=True) for r in saved if r.get(field)))
        if len(values) > 1:
            warn(f"the runs measured with different {what} ({' then '.join(values)}): the pooled curves "
                 f"mix them; the report's command names every run")


def report_again(json_path: Path, updates: Sequence[Path] = (), pooled_path: Path | None = None,
                 markdown_path: Path | None = None, plot_path: Path | None = None,
                 perception_plot_path: Path | None = None) -> dict:
    """The report of a saved evaluation (also one stopped part-way), or of it with `updates`'
    points pooled in (pooled_points), written to `pooled_path` (default: over `json_path`).
    The report's command is the whole recipe: each run's command, then this pooling."""
    saved: list[dict] = []
    for source in (json_path, *updates):
        try:
            saved.append(json.loads(Path(source).read_text()))
        except ValueError:  # not UTF-8, or not JSON
            raise DiracError(f"{source} is not an evaluation report (not JSON text): give dirac eval's "
                             f"--json") from None
        try:
            points_of(saved[-1])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DiracError(f"{source} is not an evaluation report (JSON without its fields): give dirac eval's "
                             f"--json") from None
    if reason := _why_not_pooled(saved):
        raise DiracError(f"the reports measured different data ({reason}): pool runs of one image set")
    # one fingerprint at most (_why_not_pooled); the pooled report keeps it where every run had it
    data_id = saved[0].get("data_id") if all(report.get("data_id") for report in saved) else None
    _warn_where_runs_differ(saved)
    points = pooled_points(saved)
    if not points:
        raise DiracError(f"{json_path} holds no measured points yet")
    note = " (stopped part-way; every setting it finished is here)"
    commands = [c + note if not r.get("complete", True) and not c.endswith(note) else c
                for c, r in zip((report.get("command", "") for report in saved), saved, strict=True)]
    pooling = shell_words(["dirac", "report", str(json_path),
                           *(word for update in updates for word in ("--updated-by", str(update))),
                           "--json", str(pooled_path)])
    command = " && ".join([*commands, pooling]) if updates else commands[0]
    measured = [r["models"] for r in saved if r.get("models")]  # the latest run's weights
    decodings = [r["decoding"] for r in saved if r.get("decoding")]
    machines = list(dict.fromkeys(r["machine"] for r in saved if r.get("machine")))  # where they ran, not here
    data_name = saved[0].get("data", Path(json_path).stem)
    return write_report(points, pooled_path or json_path, markdown_path, plot_path, data_name, perception_plot_path,
                        command, complete=all(bool(r.get("complete", True)) for r in saved),
                        models=measured[-1] if measured else None, machine=" and ".join(machines) or None,
                        data_id=data_id, decoding=decodings[-1] if decodings else None)


def write_report(points: list[Point], json_path: Path, markdown_path: Path | None, plot_path: Path | None,
                 data_name: str, perception_plot_path: Path | None = None, command: str | None = None,
                 complete: bool = True, models: dict[str, str | None] | None = None,
                 machine: str | None = None, data_id: str | None = None, decoding: dict | None = None) -> dict:
    """JSON, Markdown and plots of the points; `command` names the run that measured them."""
    report = report_of(points, data_name, complete, command, models, machine, data_id, decoding)
    write_json(report, json_path)
    if plot_path is not None:
        plot(points, plot_path, f"rate-distortion on {data_name}")
    if perception_plot_path is not None:
        plot_perception(points, perception_plot_path, f"distortion-perception on {data_name}")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(markdown_path, markdown_table(report).encode())
    return report


def _figure(value: float | None, format_spec: str) -> str:
    return "" if value is None or value != value else format(value, format_spec)


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def markdown_table(report: dict) -> str:
    """A report as Markdown, for docs/results.md: the command that reproduces it first, then
    each codec's points and the BD-rates."""
    lines = [
        f"Reproduce: `{report['command']}` (data: {report['data']}; machine: {report['machine']})",
        "",
        f"FD-AlexNet: {report['fd_alexnet']}.",
        "",
        "| codec | setting | steps | bpp | PSNR (dB) | MS-SSIM | LPIPS | FD-AlexNet | enc+dec s/MP | enc s/MP "
        "| s/step/MP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["points"]:
        lines.append(
            f"| {p['codec']} | {p['setting']:g} | {_figure(p['steps'], 'd')} | {p['bpp']:.4f} "
            f"| {_figure(p['psnr'], '.2f')} | {_figure(p['ms_ssim'], '.4f')} | {_figure(p['lpips'], '.4f')} "
            f"| {_figure(p['fd_alexnet'], '.2f')} "
            f"| {_figure(p['seconds_per_mp'], '.2f')} | {_figure(p.get('encode_seconds_per_mp'), '.2f')} "
            f"| {_figure(p['seconds_per_step_per_mp'], '.2f')} |"
        )
    lines += ["", "BD-rate (negative: fewer bits for the same quality; n/a where the curves do not overlap or "
                  "have under 4 points):",
              "", "| ours | against | BD-rate (PSNR) | BD-rate (LPIPS) |", "|---|---|---:|---:|"]
    for ours, against in report["bd_rate_psnr_percent"].items():
        for name, value in against.items():
            lpips_value = report["bd_rate_lpips_percent"][ours][name]
            lines.append(f"| {ours} | {name} | {format_percent(value)} | {format_percent(lpips_value)} |")
    return "\n".join(lines) + "\n"
