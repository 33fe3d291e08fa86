"""The `dirac` group: the user's commands on the first screen, research and training after them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from diraccodec.cli.codec_commands import batch, bench, decode, encode, info
from diraccodec.cli.common import (
    EXIT_USER_ERROR,
    report_interruption,
    report_unwritten_standard_output,
    say,
    sigterm_as_interrupt,
    standard_output_failure,
)
from diraccodec.cli.entry import interruption_in
from diraccodec.cli.research_commands import compare, evaluate_command, report_command
from diraccodec.cli.train_commands import train
from diraccodec.errors import one_line, show_warnings_on_one_line

USER_COMMANDS = (encode, decode, info, batch, bench)
RESEARCH_COMMANDS = (evaluate_command, report_command, compare, train)


class SectionedGroup(click.Group):
    """Lists the user's commands first, in their natural order, then research and training; a
    mistake on the command line (an unknown option, a value out of range) is one line, status 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                try:
                    result = self._main_with_one_line_errors(*args, **kwargs)
                except OSError as error:
                    if (failure := standard_output_failure(error)) is None:
                        raise  # not the text output's: a fault, shown whole
                    report_unwritten_standard_output(failure)
                except SystemExit as ending:  # the command's own status stands, but a success
                    if (failure := standard_output_failure()) is not None:
                        report_unwritten_standard_output(failure, keep_status=ending.code not in (0, None))
                    raise
                if (failure := standard_output_failure()) is not None:  # what is still buffered
                    report_unwritten_standard_output(failure)
                return result
        except (KeyboardInterrupt, RuntimeError) as error:  # the group's own, or one that lands as the command ends
            if (interruption := interruption_in(error)) is None:
                raise
            report_interruption(interruption)

    def _main_with_one_line_errors(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:  # `dirac` alone, or a group alone: its help
            click.echo(error.ctx.get_help() if error.ctx else str(error))
            sys.exit(EXIT_USER_ERROR)
        except click.UsageError as error:
            given = kwargs.get("args", args[0] if args else None)  # main(args) or main(args=...)
            path = error.ctx.command_path if error.ctx else self._command_path(given, kwargs.get("prog_name"))
            say(one_line(f"dirac: error: {error.format_message()} (see: {path} --help)"))
            sys.exit(EXIT_USER_ERROR)
        except click.ClickException as error:
            say(one_line(f"dirac: error: {error.format_message()}"))
            sys.exit(error.exit_code)
        except click.exceptions.Abort as interruption:  # click's name for Ctrl-C outside a command
            report_interruption(interruption)

    def _command_path(self, args: Sequence[str] | None, prog_name: str | None) -> str:
        """"dirac encode" for an error click's parser raises without its context (an option
        missing its value): the words that name a command and its subcommands, in turn."""
        path, group = [prog_name or "dirac"], self
        for word in sys.argv[1:] if args is None else args:
            command = group.commands.get(word) if isinstance(group, click.Group) else None
            if command is not None:
                path.append(word)
                group = command
        return " ".join(path)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [command.name for command in (*USER_COMMANDS, *RESEARCH_COMMANDS) if command.name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, commands in (("Commands", USER_COMMANDS), ("Research and training", RESEARCH_COMMANDS)):
            rows = [(command.name or "", command.get_short_help_str(limit=formatter.width - 16))
                    for command in commands]
            with formatter.section(title):
                formatter.write_dl(rows)


def print_version(ctx: click.Context, _parameter: click.Parameter, value: bool) -> None:
    """The version, and the devices this machine offers (`--device auto` takes the last)."""
    if not value or ctx.resilient_parsing:
        return
    import torch

    from diraccodec import __version__
    from diraccodec.compute import available_devices, cpu_computes_bfloat16

    cpu_note = " (bfloat16 diffusion)" if cpu_computes_bfloat16() else ""
    click.echo(f"dirac {__version__} (torch {torch.__version__})")
    click.echo("devices: " + ", ".join(available_devices()).replace("cpu", f"cpu{cpu_note}", 1))
    ctx.exit()


@click.group(cls=SectionedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="Show the version, torch's version and the devices available, then exit.")
def main() -> None:
    """diraccodec: a learned image codec whose decoder ends in a diffusion model.

    \b
      dirac encode photo.png -q 3 -o photo.drc
      dirac decode photo.drc --steps 20 -o photo.png
    """
    show_warnings_on_one_line()


for _command in (*USER_COMMANDS, *RESEARCH_COMMANDS):
    main.add_command(_command)
