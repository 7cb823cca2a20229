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


@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_published_notebooks_are_the_current_sources_with_outputs(script: Path):
    """docs/notebooks/ holds each notebook executed at default settings (`make publish`): same cells, with outputs."""
    published = ROOT / "docs" / "notebooks" / f"{script.stem}.ipynb"
    assert published.exists(), f"{published.name} is not published: run `make publish`"
    assert _cells(script) == _cells(published), f"{published.name} is stale: run `make publish`"
    code = [c for c in jupytext.read(published).cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code), f"{published.name} has no outputs: run `make publish`"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{published.name} was published with an error: {errors[0].get('ename')}"
    bare = [i for i, c in enumerate(code) for o in c.get("outputs", []) if o.get("output_type") == "execute_result"
            and set(o.get("data", {})) == {"text/plain"}]
    assert not bare, f"{published.name}: code cell(s) {bare} print a bare value (a cell's last expression) under them"
    drawn = [i for i, c in enumerate(code) if re.search(r"^plt\.show\(\)", c.source, re.M)]
    missing = [i for i in drawn if not any("image/png" in o.get("data", {}) for o in code[i].get("outputs", []))]
    assert not missing, (f"{published.name}: code cell(s) {missing} draw a figure (plt.show()) but the published copy "
                         "has no picture: publish with an inline backend (`make publish`, MPLBACKEND unset)")


def test_readme_links_every_published_notebook():
    readme = (ROOT / "README.md").read_text()
    missing = [s.stem for s in NOTEBOOKS if f"docs/notebooks/{s.stem}.ipynb" not in readme]
    assert not missing, f"README does not link the published notebooks {missing}"


def test_ci_runs_the_test_command_that_readme_gives():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)


def test_readme_public_api_snippet_runs():
    """The README's API example is code that works: its python block runs and its shape assertions hold."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("The public API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_package_has_no_import_cycles():
    """No module of the package imports (at any depth) a module that imports it back."""
    import ast

    package = ROOT / "dualtoken_lite"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dualtoken_lite"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")
                       and not (d == "dualtoken_lite")}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(dep):] + [dep])}")
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_pointer_leads_outside_the_repository():
    """Code, notebooks and READMEs cite docs/method.md, never the SPEC notes that live outside the repository."""
    method = (ROOT / "docs" / "method.md").read_text()
    sections = set(re.findall(r"^##+ (§[\d.]+)", method, re.M))
    for path in [*ROOT.glob("dualtoken_lite/**/*.py"), *ROOT.glob("notebooks/*.py"), ROOT / "README.md",
                 ROOT / "data" / "README.md"]:
        text = path.read_text()
        assert not re.search(r"\bSPEC\b", text), f"{path} cites SPEC; cite docs/method.md instead"
        for cited in re.findall(r"docs/method\.md (§\d+(?:\.\d+)?)", text):
            assert cited in sections, f"{path} cites {cited}, which docs/method.md does not have"


def _method_row(field: str) -> list[str]:
    """The cells of docs/method.md's presets table row that starts with ``field``."""
    for line in (ROOT / "docs" / "method.md").read_text().splitlines():
        if line.startswith(f"| {field} |"):
            return [c.strip() for c in line.strip("|").split("|")][1:]
    raise AssertionError(f"docs/method.md has no presets-table row {field!r}")


def test_method_presets_table_says_what_the_presets_are():
    from dualtoken_lite.model.config import model_preset
    from dualtoken_lite.training.presets import preset

    for column, name in enumerate(("tiny", "so400m-384")):
        m = model_preset(name)
        shortcut = "none" if m.shortcut_layer is None else str(m.shortcut_layer)
        taps = _method_row("taps (pixel / shortcut / semantic), shortcut weight")[column]
        assert taps.startswith(f"{m.pixel_layer} / {shortcut} / {m.semantic_layer}"), f"{name}: {taps!r}"
        assert (f", {m.shortcut_weight:g}" in taps) == (m.shortcut_layer is not None), f"{name}: {taps!r}"
        assert _method_row("decoder GroupNorm groups")[column] == str(m.decoder_norm_groups), name
    assert preset("tiny").bf16 and _method_row("bf16 autocast")[0].startswith("on, on the CPU too")
