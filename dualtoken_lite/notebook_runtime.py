"""How a notebook chooses its budget and its CPU threads: the one switch and the one thread rule.

    from dualtoken_lite.notebook_runtime import start
    FULL = start(seed=0)   # seeds torch, sets the threads, prints what it chose; True under DUALTOKEN_LITE_FULL=1

* **Budget.** A notebook's default path is what a learner runs and what CI tests: a few minutes on a 2-core CPU,
  loading the shipped trained tokenizer (``data/tokenizer/``) and shipped run summaries where training would
  take long. ``DUALTOKEN_LITE_FULL=1`` is the one switch to the full budget: the notebook retrains what it
  loaded and asserts that it gets the figures the prose quotes.
* **Threads.** torch uses every core by default. On a small machine that is the wrong choice as soon as anything
  else runs (JupyterLab, a browser, a second kernel): two threads on two busy cores were 6-10x slower than one
  thread here. So a notebook leaves one core free: ``threads = cores - 1`` (at least 1, at most 8), where cores is
  what this process may use (its CPU affinity). ``DUALTOKEN_LITE_THREADS=N`` overrides it; the trainer's
  ``--threads`` flag is the same knob for ``python -m dualtoken_lite.train``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualtoken_lite.datasets.images import make_grid_image

FULL_ENV = "DUALTOKEN_LITE_FULL"  # 1: retrain at the full budget and assert the quoted figures
THREADS_ENV = "DUALTOKEN_LITE_THREADS"  # N: use N torch threads instead of cores - 1
MAX_THREADS = 8  # beyond this the tiny models gain nothing


def _truthy(value: str | None) -> bool:
    """An environment flag's value as a bool: '', '0', 'false' and 'no' are off, anything else is on."""
    return (value or "0").strip().lower() not in ("", "0", "false", "no")


def full_budget() -> bool:
    """True when ``DUALTOKEN_LITE_FULL`` asks for the full budget (retrain instead of loading shipped results)."""
    return _truthy(os.environ.get(FULL_ENV))


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads() -> int:
    """torch threads for a notebook: ``DUALTOKEN_LITE_THREADS`` if set, else cores - 1 (1..8): one core stays free."""
    given = os.environ.get(THREADS_ENV)
    if given:
        if not given.strip().isdigit() or int(given) < 1:
            raise ValueError(f"{THREADS_ENV}={given!r}: give a whole number of threads >= 1, or unset it")
        return int(given)
    return max(1, min(MAX_THREADS, available_cores() - 1))


def start(seed: int = 0) -> bool:
    """A notebook's first line of work: seed torch, set the threads, say which budget runs; returns full_budget()."""
    torch.manual_seed(seed)
    threads = choose_threads()
    torch.set_num_threads(threads)
    full = full_budget()
    budget = "full budget (retrains, asserts the quoted figures)" if full else "default (minutes; set " \
        f"{FULL_ENV}=1 for the full budget)"
    print(f"seed {seed}, {threads} torch thread(s) of {available_cores()} core(s), {budget}")
    return full


FIGURES_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "figures"  # one JSON per notebook
WRITE_ENV = "DUALTOKEN_LITE_WRITE_FIGURES"  # 1: record the figures this run measures instead of checking them


class Figures:
    """The numbers a notebook's prose quotes, kept in ``notebooks/figures/<notebook>.json`` and checked on every run.

        figures = Figures("05_losses")
        figures.check("full/psnr_dual", psnr, tol=0.3)   # asserts |psnr - recorded| <= tol ...
        figures.save()                                    # ... and, under DUALTOKEN_LITE_WRITE_FIGURES=1, records it

    Keys say which budget measured them ("default/..." or "full/..."): the default path checks its own figures on
    every run (CI included), the full budget checks the full-budget ones. A tolerance is the spread the figure
    has between seeds or thread counts, never zero for a trained result.
    """

    def __init__(self, notebook: str, root: Path = FIGURES_DIR):
        self.path = Path(root) / f"{notebook}.json"
        self.recorded: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.write = _truthy(os.environ.get(WRITE_ENV))
        self.measured: dict[str, float] = {}

    def __getitem__(self, key: str) -> float:
        """A recorded figure (e.g. a full-budget one that the default path shows without retraining)."""
        if key not in self.recorded:
            raise KeyError(f"{self.path} has no figure {key!r}: run the notebook with {WRITE_ENV}=1 (and "
                           f"{FULL_ENV}=1 for full/... keys) to record it")
        return self.recorded[key]

    def check(self, key: str, value: float, tol: float) -> None:
        """Assert that ``value`` is the recorded figure within ``tol`` (or record it when writing).

        Returns nothing, so a check ending a cell prints no stray value under it."""
        value = float(value)
        self.measured[key] = value
        if not self.write:
            expected = self[key]
            assert abs(value - expected) <= tol, (
                f"{key}: measured {value:.4g}, the prose quotes {expected:.4g} (tolerance {tol:g}); if the change "
                f"is intended, rerun with {WRITE_ENV}=1 and update the prose")

    def save(self) -> None:
        """Under ``DUALTOKEN_LITE_WRITE_FIGURES=1``: merge this run's figures into the JSON (others are kept)."""
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self.recorded, **self.measured}
        self.path.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
        print(f"recorded {len(self.measured)} figure(s) in {self.path}")


RECORD_KEYS = ("step", "psnr", "loss/recon", "loss/commit_pixel", "loss/gan_weight", "loss/gan_adaptive_weight",
               "disc/logits_real", "disc/logits_fake")  # the metric-line fields a notebook plots


@dataclass
class RunRecord:
    """What a notebook shows of one training run, small enough to ship: its summary (held-out figures), the metric
    lines it plots (``RECORD_KEYS``) and a few held-out reconstructions, (B, 3, H, W) in [-1, 1] (8-bit on disk)."""

    summary: dict
    metrics: list[dict]
    reconstructions: torch.Tensor

    @property
    def eval(self) -> dict:
        """The held-out evaluation of the run (``summary["eval"]``)."""
        return self.summary["eval"]

    def save(self, folder: str | Path) -> Path:
        """Write summary.json, metrics.jsonl (plotted fields only) and reconstructions.png under ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")
        lines = [{k: m[k] for k in RECORD_KEYS if k in m} for m in self.metrics]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        make_grid_image(self.reconstructions, nrow=len(self.reconstructions)).save(folder / "reconstructions.png")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RunRecord:
        """Read a record written by ``save``; the reconstructions come back as (B, 3, H, W) in [-1, 1]."""
        folder = Path(folder)
        if not (folder / "summary.json").is_file():
            raise FileNotFoundError(f"no run record in {folder}: run the notebook with {FULL_ENV}=1 {WRITE_ENV}=1 "
                                    "to train the runs and record them")
        summary = json.loads((folder / "summary.json").read_text())
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        return cls(summary, metrics, split_grid(Image.open(folder / "reconstructions.png")))


def split_grid(grid: Image.Image, size: int = 64, padding: int = 2) -> torch.Tensor:
    """A one-row grid from ``make_grid_image`` back into its images: (B, 3, size, size) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(grid.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    count = (pixels.shape[-1] - padding) // (size + padding)
    tiles = [pixels[:, padding:padding + size, padding + i * (size + padding):padding + i * (size + padding) + size]
             for i in range(count)]
    return torch.stack(tiles)
