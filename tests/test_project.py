"""Project hygiene: declared dependencies agree, notebooks are paired, CI runs README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """'open_clip_torch>=3.0' -> 'open-clip-torch' (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0]).lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    pip_lines = re.findall(r"^\s+- (\S.*)$", (ROOT / "environment.yml").read_text().split("- pip:")[1], re.M)
    conda_pip = {_name(r) for r in pip_lines if not r.startswith("-e")}
    assert conda_pip == declared, (
        f"only in environment.yml: {sorted(conda_pip - declared)}; only in pyproject: {sorted(declared - conda_pip)}"
    )


def _cells(path: Path) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_twins_hold_the_same_cells(script: Path):
    twin = script.with_suffix(".ipynb")
    assert twin.exists(), f"{script.name} has no paired {twin.name}: run `jupytext --sync {script}`"
    assert _cells(script) == _cells(twin), f"{script.name} and {twin.name} differ: run `jupytext --sync {script}`"
    outputs = [c for c in jupytext.read(twin).cells if c.cell_type == "code" and c.get("outputs")]
    assert not outputs, f"{twin.name} is committed with outputs: strip them (pre-commit does)"


def test_ci_runs_the_test_command_that_readme_gives():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)
