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


def dependency_closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions these requirements pull in, transitively, extras and
    markers evaluated as pip would for this interpreter (no extras requested)."""
    from importlib import metadata as md

    seen: set[str] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for text in md.requires(name) or []:
            nested = Requirement(text)
            wanted = requirement.extras
            if nested.marker is None or any(
                nested.marker.evaluate({"extra": e}) for e in (wanted or {""})
            ):
                todo.append(nested)
    return seen


def test_the_wheel_alone_installs_in_a_fresh_venv_and_aggregates(wheel, tmp_path):
    """A fresh venv gets the wheel (pip, no extras) and exactly the distributions its
    requirements pull in (linked from this environment: no download), nothing of the
    app's: flwr_flag imports, a strategy aggregates a round, and the app's packages are
    not importable there (so the library cannot lean on them)."""
    import venv
    from importlib import metadata as md

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    required = [Requirement(r) for r in metadata(wheel).get_all("Requires-Dist")]
    deps = tmp_path / "deps"
    deps.mkdir()
    for name in dependency_closure(required):
        distribution = md.distribution(name)
        for top in {Path(str(f)).parts[0] for f in distribution.files or []}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (deps / top).exists() and top not in ("..", "bin"):
                (deps / top).symlink_to(source)
    (site,) = (fresh / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(str(deps) + "\n")
    script = (
        "import importlib.util, numpy as np, flwr_flag\n"
        "from collections import OrderedDict\n"
        "from flwr_flag.strategy.replies import Reply\n"
        "core = flwr_flag.Median(num_byzantine=1, device='cpu').core\n"
        "model = OrderedDict(w=np.zeros(3, np.float32))\n"
        "replies = [Reply(i, {'w': np.full(3, float(i), np.float32)}, 1) for i in range(1, 6)]\n"
        "print(core.round(1, model, replies, 0).arrays['w'].tolist())\n"
        "print([m for m in ('sklearn', 'ray', 'torchvision', 'matplotlib', 'flwr_datasets',"
        " 'clients', 'server_app') if importlib.util.find_spec(m)])\n"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[3.0, 3.0, 3.0]", "[]"]
