"""The reference pages name every option of every command, in the command's own section."""

from __future__ import annotations

import re
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


def section_of(path: tuple[str, ...]) -> str:
    """The text that documents the command: its section of the user guide or of measuring.md
    (a heading, or a bold paragraph), or training.md for the training commands."""
    if path[0] == "train":
        return (DOCS / "training.md").read_text()
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
