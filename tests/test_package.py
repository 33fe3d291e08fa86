"""The package as users get it: a wheel with the weights inside that works away from the checkout,
while the tests themselves keep testing the checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import diraccodec
from tests.conftest import ROOT, load_script

USER_COMMAND = ("import diraccodec; from PIL import Image; "
                "Image.open('x.png').save('x.drc', quality=3); print(Image.open('x.drc').size)")
WHERE_COMMAND = "import diraccodec.modelfiles as m; print(m.__file__); print(m.shipped_weights_folder())"


def test_the_tests_import_the_checkout():
    """The set-up installs a copy into .venv; an edited module must be what the tests run."""
    assert Path(diraccodec.__file__).resolve() == ROOT / "diraccodec" / "__init__.py"


def test_the_package_list_names_every_package():
    """pyproject.toml lists the packages (to map weights/ into the package): a new one must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {path.parent.relative_to(ROOT) for path in (ROOT / "diraccodec").rglob("*.py")}
    assert listed == {".".join(folder.parts) for folder in folders} | {"diraccodec.weights"}


NO_TORCH_COMMAND = """
import os
import sys
from diraccodec.cli import main
def run(*arguments, **completion):
    os.environ.update(completion)
    try:
        main(list(arguments), prog_name="dirac")
    except SystemExit:
        pass
run("--help")
run("encode", "--help")
run("decode", "--steps", "500", "x.drc")
run(_DIRAC_COMPLETE="bash_complete", COMP_WORDS="dirac batch --format ", COMP_CWORD="3")  # a shell's TAB
from PIL import Image
with Image.open(sys.argv[1]) as image:  # a .drc file's size, mode and info come from its header
    print("opened:", image.format, image.size, image.mode, image.info["recommended_steps"])
print("torch loaded:", sorted(name for name in sys.modules if name.split(".")[0] == "torch"))
"""


def test_the_package_and_the_command_s_entry_import_nothing_heavy():
    """The console script imports diraccodec.cli.entry before any code of ours can catch Ctrl-C:
    NumPy, click, rich and torch load later, inside `run`'s guard (or, for a Pillow user, with
    the first .drc file), so that window stays about as short as the interpreter's start."""
    script = ("import sys, diraccodec.cli.entry\n"
              "print(sorted({name.split('.')[0] for name in sys.modules} & {'numpy', 'click', 'rich', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout == "[]\n", result.stderr


def test_the_command_line_answers_help_and_usage_errors_without_torch(tmp_path: Path, small_image: Image.Image):
    """torch takes seconds to import: `dirac --help`, a mistyped option or a shell's completion
    must not wait for it, and nor must a program that opens a .drc file with Pillow to read its
    size, or imports diraccodec for the plugin and never uses it."""
    path = tmp_path / "small.drc"
    path.write_bytes(diraccodec.encode(small_image.convert("LA"), 2, effort=1, steps=7))
    result = subprocess.run([sys.executable, "-c", NO_TORCH_COMMAND, path], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: dirac encode" in result.stdout
    assert result.stderr.startswith("dirac: error: Invalid value for '--steps': 500")
    assert "plain,.png\nplain,.webp\nplain,.tif\nplain,.tiff\nplain,.bmp\nplain,.jpg\nplain,.jpeg\n" in result.stdout
    assert result.stdout.splitlines()[-2:] == [f"opened: DRC {small_image.size} LA 7", "torch loaded: []"]


@pytest.mark.parametrize("module", ["diraccodec", "diraccodec.cli"])
def test_python_dash_m_runs_the_command(module: str):
    assert run([sys.executable, "-m", module, "--help"], cwd=ROOT).startswith("Usage: dirac [OPTIONS] COMMAND")


def test_the_api_functions_and_modules_load_on_first_use():
    from diraccodec import decode

    command = "import diraccodec; print(diraccodec.api.stream_bytes.__name__, diraccodec.modelfiles.__name__)"
    assert run([sys.executable, "-c", command], cwd=ROOT).split() == ["stream_bytes", "diraccodec.modelfiles"]
    assert decode is diraccodec.api.decode and diraccodec.encode is diraccodec.api.encode
    assert {"encode", "decode", "inspect", "DiracError"} <= set(dir(diraccodec))
    with pytest.raises(AttributeError, match="no attribute 'encoder'"):
        diraccodec.encoder  # noqa: B018 (the attribute access is the test)


def run(command: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_the_wheel_works_in_a_fresh_environment(tmp_path: Path, small_image: Image.Image):
    # sdist, then the wheel built from it: nothing stale from the checkout's build/ can slip in;
    # with this environment's setuptools (a dev requirement), not one fetched from the index
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", ROOT], cwd=ROOT)
    (wheel,) = (tmp_path / "dist").glob("diraccodec-*.whl")
    assert wheel.name.startswith(f"diraccodec-{diraccodec.__version__}-")  # pyproject.toml reads it from the package
    (sdist,) = (tmp_path / "dist").glob("diraccodec-*.tar.gz")
    with tarfile.open(sdist) as source, zipfile.ZipFile(wheel) as built:
        top = f"diraccodec-{diraccodec.__version__}"
        shipped = {name.removeprefix(f"{top}/") for name in source.getnames()}
        tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
        # all that git tracks but its own file; outside a checkout (an unpacked sdist) what the tests need
        assert not tracked - {".gitignore"} - shipped if tracked else {"LICENSE", "tests/conftest.py"} <= shipped
        assert f"{top}.dist-info/licenses/LICENSE" in built.namelist()  # MIT's notice travels with every copy
        assert "diraccodec/py.typed" in built.namelist()  # type checkers read the annotations (PEP 561)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project["dynamic"] and "version" not in project  # stated once, in the package
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    # no PYTHONPATH and no user site from here on: pip would take a checkout on either for the
    # installed package, and install nothing
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH" and not name.startswith("DIRAC_")}
    env["PYTHONNOUSERSITE"] = "1"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], tmp_path, env)
    # the dependencies come from this environment (quick, no downloads), added after the install so
    # that pip does not take a copy of the package installed here for the wheel's; it comes later on sys.path
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    ours = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))

    outside = tmp_path / "outside"  # away from the checkout, so that it cannot be imported
    outside.mkdir()
    small_image.save(outside / "x.png")
    assert run([python, "-c", USER_COMMAND], outside, env).strip() == str(small_image.size)
    where = run([python, "-c", WHERE_COMMAND], outside, env).split()
    assert all(Path(path).is_relative_to(site_packages) for path in where), where
    assert Path(where[1]).name == "weights" and (Path(where[1]) / "manifest.json").exists()
    assert "96x80" in run([venv / "bin" / "dirac", "info", "x.drc"], outside, env)  # the console script


def test_the_oldest_requirements_are_each_dependencys_floor_torchs_too():
    script = load_script("oldest_requirements")
    project = {"dependencies": ["torch>=2.4,<3", "numpy>=1.26"],
               "optional-dependencies": {"dev": ["pytest>=8"], "uris": ["pyarrow[s3]>=14"]}}
    assert script.oldest_requirements({"project": project}) == [
        "torch==2.4", "numpy==1.26", "pyarrow==14"]  # the tools of dev are not the package's
    project["dependencies"].append("click")
    with pytest.raises(SystemExit, match="no floor"):  # a dependency without one could not be tested
        script.oldest_requirements({"project": project})
    stated = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {pin.split("==")[0] for pin in script.oldest_requirements(stated)}
    assert {"torch", "pillow", "numpy", "matplotlib", "ray", "pyarrow"} <= names and "pytest" not in names
