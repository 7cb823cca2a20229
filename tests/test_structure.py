"""The package's structure: imports point down the chapters, and every pointer in code and docs resolves.

The layering is one ordered list, bottom first. A module may import from its own layer and the layers below it,
never from one above: the notebooks' reading order (quantizers, model, losses, data, ...) is also the order in
which the code can be understood. Every import counts, those inside functions included.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dualtoken_lite"

# Bottom first. A name is a subpackage, or a top-level module of the package.
LAYERS = [
    "settings",  # plumbing: config round trips, user errors, atomic files
    "quantizers",
    "model",
    "losses",
    "datasets",
    "tinyworld",
    "evaluation",
    "training",  # the training loop, and the presets (named run configurations)
    "tools",  # the command-line tools of the tokenizer
    "unified",
    "notebook_runtime",  # what every notebook starts with
    "__main__",  # the command table
    "train",  # `python -m dualtoken_lite.train`
    "__init__",  # the public API
]


def module_name(path: Path) -> str:
    """dualtoken_lite/model/backbone.py -> dualtoken_lite.model.backbone (a package's __init__ -> the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to: its first component below the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, dotted module) of every dualtoken_lite import in a file (or in ``text`` placed at ``path``), at any
    depth (inside functions too)."""
    module = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "dualtoken_lite"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dualtoken_lite":
                continue
            if target == "dualtoken_lite":  # `from dualtoken_lite import tinyworld` names a subpackage
                found += [(node.lineno, f"dualtoken_lite.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


PACKAGE_FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unknown = sorted({layer_of(module_name(p)) for p in PACKAGE_FILES} - set(LAYERS))
    assert not unknown, f"modules outside the layering list {unknown}: give them a place in LAYERS"


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path):
    here = LAYERS.index(layer_of(module_name(path)))
    upward = []
    for line, target in imported_modules(path):
        there = layer_of(target)
        if there not in LAYERS:  # `from dualtoken_lite import DualToken` names the public API
            there = "__init__"
        if LAYERS.index(there) > here:
            upward.append(f"line {line}: {target} ({there} is above {LAYERS[here]})")
    assert not upward, f"{path.relative_to(ROOT)} imports upward:\n" + "\n".join(upward)


def test_only_entry_points_and_plumbing_beside_the_chapters():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "notebook_runtime", "settings", "train"]


def test_the_layering_test_sees_an_upward_import():
    """The check itself can fail: a quantizer importing the model, even inside a function, is upward."""
    probe = PACKAGE / "quantizers" / "probe.py"
    imports = imported_modules(probe, "def f():\n    from dualtoken_lite.model.config import ModelConfig\n")
    assert imports == [(2, "dualtoken_lite.model.config")]
    assert LAYERS.index(layer_of(imports[0][1])) > LAYERS.index(layer_of(module_name(probe)))


# ---------------------------------------------------------------------------------------------------------------
# Pointers: dotted names and repository paths quoted anywhere a reader follows them.

TEXT_FILES = sorted(
    [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "notebooks").glob("*.py"),
     ROOT / "README.md", ROOT / "data" / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "Makefile",
     *(ROOT / "data").glob("*.py")]
)
DOTTED = re.compile(r"(?<![\w.])dualtoken_lite(?:\.[A-Za-z_]\w*)+")
# a chapter-relative dotted name in backticks: ``tinyworld.make_sample``, `training.loop`
CHAPTER_DOTTED = re.compile(r"`+([a-z_]+(?:\.[A-Za-z_]\w*)+)(?:\(\))?`+")
# a relative path with at least one folder and a file name or a trailing slash
PATH = re.compile(r"(?<![\w./~$-])((?:[A-Za-z_][\w.{}*<>-]*/)+(?:[\w.{}*<>-]*[\w}>-])?/?)")
REPO_TOPS = ("dualtoken_lite", "docs", "data", "notebooks", "benchmarks", "tests", ".ci")
NAMES_OF_VARIABLES = ("model", "losses")  # ``model.encode``, ``model.safetensors`` name a model, not the chapter
SUBPACKAGES = tuple(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
PLACEHOLDER = re.compile(r"[*{}<>]|NNNN|NN_|\.\.\.")


def resolves_dotted(name: str) -> bool:
    """``dualtoken_lite.a.b.c``: the longest importable module prefix, then attributes for the rest."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def resolves_path(path: str) -> bool:
    """A repository path names a file or folder of the repository, or of the package for chapter paths like
    ``training/loop.py``; ``training/checkpoints`` names a module and ``training/optim.decay_groups`` one of its
    attributes. A pattern (``train-*.tar``, ``notebooks/NN_name.py``) is checked by its fixed folders."""
    if PLACEHOLDER.search(path):
        path = path[: PLACEHOLDER.search(path).start()].rsplit("/", 1)[0]
    path = path.rstrip("/.")
    for base in (ROOT, PACKAGE):
        if (base / path).exists() or (base / f"{path}.py").exists():
            return True
        folder, _, name = path.rpartition("/")
        module, _, attribute = name.partition(".")
        if attribute and (base / folder / f"{module}.py").is_file():
            dotted = module_name(base / folder / f"{module}.py")
            return resolves_dotted(f"{dotted}.{attribute}")
    return False


def is_repository_path(path: str) -> bool:
    first = path.split("/")[0]
    return first in REPO_TOPS or first in SUBPACKAGES


def pointers(file: Path) -> list[tuple[int, str, str]]:
    """(line, kind, text) of every dotted name and repository path in a file."""
    found = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        for m in DOTTED.finditer(line):
            found.append((number, "name", m.group(0)))
        for m in CHAPTER_DOTTED.finditer(line):
            if m.group(1).split(".")[0] in SUBPACKAGES and m.group(1).split(".")[0] not in NAMES_OF_VARIABLES:
                found.append((number, "name", f"dualtoken_lite.{m.group(1)}"))
        for m in PATH.finditer(line):
            if is_repository_path(m.group(1)):
                found.append((number, "path", m.group(1)))
    return found


@pytest.mark.parametrize("file", TEXT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pointer_resolves(file: Path):
    broken = [f"line {n}: {kind} {text}" for n, kind, text in pointers(file)
              if not (resolves_dotted(text) if kind == "name" else resolves_path(text))]
    assert not broken, f"{file.relative_to(ROOT)} points at what does not exist:\n" + "\n".join(broken)


SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)")


def test_every_section_sign_names_a_section_of_method_md():
    sections = set(re.findall(r"^#+ §(\d+(?:\.\d+)?) ", (ROOT / "docs" / "method.md").read_text(), re.M))
    broken = [f"{f.relative_to(ROOT)}:{n}: §{s}" for f in TEXT_FILES
              for n, line in enumerate(f.read_text().splitlines(), 1) for s in SECTION.findall(line)
              if s not in sections]
    assert not broken, "section signs that docs/method.md does not have:\n" + "\n".join(broken)


def test_the_pointer_check_sees_a_broken_pointer():
    assert resolves_dotted("dualtoken_lite.model.dualtoken.DualToken")
    assert not resolves_dotted("dualtoken_lite.images")
    assert resolves_path("training/checkpoints.py") and resolves_path("docs/method.md")
    assert not resolves_path("dualtoken_lite/tinyworld.py")


def test_no_comment_points_outside_the_repository():
    """Code says what it is and why: no "issue 12", no "STYLE habit 5" (those live in commits and docs/)."""
    outside = re.compile(r"\b(?:issue|STYLE(?:\.md)?(?: habit)?)\s*#?\d+", re.I)
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in TEXT_FILES if f.suffix == ".py"
            for n, line in enumerate(f.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, "\n".join(hits)


def test_star_import_of_every_package_works():
    """``__all__`` names only what a package defines (a stale name makes ``from pkg import *`` raise)."""
    names = [module_name(init) for init in sorted(PACKAGE.rglob("__init__.py"))]
    # one interpreter for all of them (each would pay torch's import again): every star import runs in its own
    # namespace, and each failure is reported with its package
    code = ("import sys\nbad = []\nfor name in sys.argv[1:]:\n    try:\n        exec(f'from {name} import *', {})\n"
            "    except Exception as err:\n        bad.append(f'from {name} import *: {err!r}')\nprint('\\n'.join(bad))\n"
            "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT)
    assert len(names) > 5 and result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_the_trainer_starts_without_importing_torchmetrics():
    """torchmetrics loads every metric it has (transformers, torchvision) on import: the trainer imports it only
    where PSNR / SSIM are computed (evaluation/metrics.py), and a PSNR still computes."""
    code = ("import sys, torch\nimport dualtoken_lite.training.loop\nfrom dualtoken_lite.evaluation.metrics import psnr\n"
            "print('torchmetrics' in sys.modules)\nx = torch.zeros(1, 3, 8, 8)\nprint(round(float(psnr(x + 0.1, x)), 2))\n"
            "print('torchmetrics' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    before, value, after = result.stdout.split()
    assert before == "False" and after == "True" and value == "26.02"  # 0.1 in [-1, 1] is 0.05 in [0, 1]: 26.02 dB


# ---------------------------------------------------------------------------------------------------------------
# The command table.


def test_the_command_table_lists_every_command():
    """``python -m dualtoken_lite --help`` prints one line per command."""
    from dualtoken_lite.__main__ import COMMANDS

    result = subprocess.run([sys.executable, "-m", "dualtoken_lite", "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)


@pytest.mark.parametrize("name", __import__("dualtoken_lite.__main__").__main__.COMMANDS)
def test_every_command_answers_help(name, capsys):
    from dualtoken_lite.__main__ import run

    try:
        code = run([name, "--help"])
    except SystemExit as stop:  # argparse ends --help with SystemExit(0)
        code = stop.code
    assert code in (0, None)
    assert "usage" in capsys.readouterr().out.lower()


def test_an_unknown_command_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "dualtoken_lite", "evaluat"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 2 and "unknown command 'evaluat'" in result.stderr
    assert "Traceback" not in result.stderr
