"""The package's layers: every import points down the data path (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diraccodec"

# Lowest first. A module may import from its own layer and the layers before it, never after.
LAYERS = [
    ("errors", "options", "console", "compute"),
    ("image",),
    ("transforms",),
    ("entropy",),
    ("codec",),
    ("container",),
    ("restoration",),
    ("diffusion",),
    ("modelfiles",),
    ("api",),
    ("plugin", "batch"),
    ("perceptual", "evaluation", "training", "bench"),
    ("cli", "__main__"),
]


def layer_of(module: str) -> int:
    """The layer of a dotted module name under diraccodec (the package itself is the API)."""
    parts = module.split(".")
    if parts == ["diraccodec"]:
        return layer_of("diraccodec.api")
    top = parts[1]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/design.md")


def is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def imports_of(path: Path) -> list[str]:
    """Every diraccodec module `path` imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        assert not (isinstance(node, ast.ImportFrom) and node.level), \
            f"{path}:{node.lineno}: a relative import, which this check cannot place: write it absolute"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diraccodec"):
            if node.module == "diraccodec":  # a submodule, or a name the package's front door exports
                found += [f"diraccodec.{alias.name}" if is_module(alias.name) else "diraccodec" for alias in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("diraccodec")]
    return found


def test_every_import_points_down_the_data_path() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        if module == "diraccodec":
            continue  # the package's front door re-exports the API
        own = layer_of(module)
        for imported in imports_of(path):
            if layer_of(imported) > own:
                upward.append(f"{module} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_layer_list_names_every_top_level_module() -> None:
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.stem != "__init__"}
    listed = {name for layer in LAYERS for name in layer}
    assert names <= listed, names - listed
