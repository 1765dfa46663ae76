"""What `pip install flwr-flag` gets: the library alone, with ranges a user's project can
live with, for every Python Flower supports."""

from __future__ import annotations

import email
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).parents[1]
LIBRARY_IMPORTS = {"flwr", "torch", "numpy"}
APP_ONLY = {"scikit-learn", "flwr-datasets", "torchvision", "matplotlib", "seaborn"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("flwr_flag-*.whl")
    return built


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_the_wheel_ships_only_the_library_and_its_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"flwr_flag"}
    assert "flwr_flag/attacks/mod.py" in names
    assert "flwr_flag/py.typed" in names


def test_requirements_are_ranges_of_what_the_library_imports(wheel):
    """Before: torch==2.14.1, torchvision==0.29.1, flwr[simulation]==1.42.*, and the app's
    scikit-learn and flwr-datasets were requirements of the library."""
    required = [Requirement(r) for r in metadata(wheel).get_all("Requires-Dist")]
    base = [r for r in required if r.marker is None]
    assert {r.name for r in base} == LIBRARY_IMPORTS
    for requirement in base:
        assert not requirement.extras, requirement  # no Ray: flwr, not flwr[simulation]
        assert all(s.operator not in ("==", "===", "~=") for s in requirement.specifier), (
            requirement
        )
    extras = {r.name for r in required if r.marker is not None}
    assert APP_ONLY <= extras


def test_every_python_flower_supports_is_admitted(wheel):
    """Before: Requires-Python >=3.11,<3.12."""
    admitted = SpecifierSet(metadata(wheel)["Requires-Python"])
    assert all(v in admitted for v in ("3.10", "3.11", "3.12", "3.13"))


def test_the_version_comes_from_one_place(wheel):
    import flwr_flag

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert metadata(wheel)["Version"] == declared == flwr_flag.__version__


def test_twine_accepts_the_wheel(wheel):
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
