"""The lowest version of each dependency that pyproject.toml allows, as pip constraints.

    python scripts/oldest_requirements.py > oldest.txt

What `make test-oldest` installs, so that the stated floors are tested rather than assumed:
the package's dependencies and its extras (all but `dev`, the tools) at their floors, torch
too (the package index's build of it, made for CUDA, runs on a CPU: about 3 GB with its CUDA
libraries, downloaded once).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def oldest_requirements(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    extras = [requirement for extra, requirements in project["optional-dependencies"].items() if extra != "dev"
              for requirement in requirements]
    floors: dict[str, str] = {}
    for requirement in [*project["dependencies"], *extras]:
        match = FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"no floor (>=) in {requirement!r}: state one")
        name, floor = match.groups()
        floors[name] = floor
    return [f"{name}=={floor}" for name, floor in floors.items()]


def main() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sys.stdout.write("".join(f"{line}\n" for line in oldest_requirements(pyproject)))


if __name__ == "__main__":
    main()
