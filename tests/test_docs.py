"""The reference pages name every option of every command, in the command's own section."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest

from diraccodec.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs"


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


# The training commands whose options training.md's options table lists for all of them.
TABLED = ("base", "entropy", "restoration", "diffusion")


def training_section_of(name: str) -> str:
    """training.md's text for `dirac train NAME`: in its Options section, the shared table (for
    the commands it covers), the paragraph that begins with the command, and the sentence that
    names the command among those that "also take" an option."""
    options = re.search(r"^## Options\n.*?(?=^## |\Z)", (DOCS / "training.md").read_text(), re.M | re.S).group(0)
    shared = options[: options.index("`train base`")] if name in TABLED else ""
    own = re.search(rf"^`(?:dirac )?train {re.escape(name)}(?: [A-Z]+)*`.*?(?=^`(?:dirac )?train |^`entropy`|\n\n|\Z)",
                    options, re.M | re.S)
    also = [line for line in options.splitlines() if "also take" in line and f"`{name}`" in line]
    return "\n".join([shared, own.group(0) if own else "", *also])


def section_of(path: tuple[str, ...]) -> str:
    """The text that documents the command: its section of the user guide or of measuring.md
    (a heading, or a bold paragraph), or of training.md's options for the training commands."""
    if path[0] == "train":
        return training_section_of(path[1])
    for page in ("user-guide.md", "measuring.md"):
        text = (DOCS / page).read_text()
        paragraph = re.search(rf"^\*\*`dirac {path[0]}\b.*?(?=\n\n|\Z)", text, re.M | re.S)
        heading = re.search(rf"^## dirac {path[0]}\n.*?(?=^## |\Z)", text, re.M | re.S)
        if paragraph or heading:
            return (paragraph or heading).group(0)
    raise AssertionError(f"dirac {' '.join(path)} has no section in user-guide.md or measuring.md")


@pytest.mark.parametrize(("path", "command"), commands(main), ids=lambda value: " ".join(value)
                         if isinstance(value, tuple) else "")
def test_every_option_is_in_the_command_s_reference(path: tuple[str, ...], command: click.Command) -> None:
    section = section_of(path)

    def named(option: str) -> bool:  # the whole name: "-e" is not found inside "--exact"
        return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section) is not None

    missing = [max(parameter.opts, key=len) for parameter in command.params if isinstance(parameter, click.Option)
               and not any(named(option) for option in parameter.opts + parameter.secondary_opts)]
    assert not missing, f"dirac {' '.join(path)}: {', '.join(missing)} not in its reference"


def documented_commands() -> list[tuple[str, str]]:
    """Every `dirac ...` command line in the docs' and the README's shell code blocks (a line's
    continuations joined, commands after `&&`, `|` or `;` apart), with its page; synopsis
    lines (`[OPTIONS]`, `(-q LEVEL | ...)`, `...`) left out."""
    found = []
    for page in [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]:
        for language, block in re.findall(r"^```(\w*)\n(.*?)^```[ \t]*$", page.read_text(), re.M | re.S):
            if language not in ("", "sh", "bash", "console"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                if re.search(r"\[[A-Z.]+\]|\(-|\.\.\.(\s|$)", line):
                    continue
                for command in re.split(r"\s*(?:&&|\|\|?|;)\s*", line.strip().removeprefix("$ ")):
                    if command.startswith("dirac "):
                        found.append((page.name, command))
    return found


@pytest.mark.parametrize(("page", "command"), documented_commands())
def test_every_documented_command_line_parses(page: str, command: str, monkeypatch) -> None:
    """Its command, options and values as the parser takes them: an option renamed or dropped
    would leave a command in the docs that fails. Files the line names need not exist here."""
    for _, leaf in commands(main):
        for parameter in leaf.params:
            if isinstance(parameter.type, click.Path):
                monkeypatch.setattr(parameter.type, "exists", False)
    words = shlex.split(command, comments=True)[1:]
    context = main.make_context("dirac", words)
    group: click.Command = main
    rest = unparsed(context)
    while isinstance(group, click.Group):
        name, group, rest = group.resolve_command(context, rest)
        assert group is not None, command
        context = group.make_context(name, rest, parent=context)
        rest = unparsed(context)
    assert not rest, f"{page}: {command}: {rest} left over"


def unparsed(context: click.Context) -> list[str]:
    """What a group's parse leaves for its command (click 9 keeps it all in `args`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*getattr(context, "protected_args", []), *context.args]
