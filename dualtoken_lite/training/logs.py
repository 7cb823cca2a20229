"""What a run writes while it trains: metrics as JSON lines, optional TensorBoard, reconstruction grids as PNG.

Only rank 0 writes. Each metrics line is one flat JSON object: `{"step": 100, "loss/total": ..., ...}`, so
`pandas.read_json(path, lines=True)` or a few lines of Python plot any curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from dualtoken_lite.datasets.images import make_grid_image


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{'pixel': {'perplexity': tensor([a, b])}} -> {'pixel/perplexity/d1': a, 'pixel/perplexity/d2': b}."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, torch.Tensor) and value.numel() > 1:
            for i, v in enumerate(value.detach().flatten().tolist()):
                flat[f"{name}/d{i + 1}"] = float(v)
        elif isinstance(value, (torch.Tensor, int, float, bool)):
            flat[name] = float(value.item() if isinstance(value, torch.Tensor) else value)
        elif isinstance(value, str):
            flat[name] = value  # type: ignore[assignment]  # labels such as the LPIPS backbone
    return flat


class MetricsLogger:
    """Appends one JSON object per call to ``metrics.jsonl``; mirrors numbers to TensorBoard if asked."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is optional
                raise RuntimeError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from err
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict) -> dict[str, float]:
        flat = flatten_metrics(metrics)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **flat}) + "\n")
            if self.tb is not None:
                for key, value in flat.items():
                    if isinstance(value, float) and math.isfinite(value):
                        self.tb.add_scalar(key, value, step)
        return flat

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All lines of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, after_step: int) -> None:
    """Drop lines logged after ``after_step`` (a resumed run re-logs the steps it repeats)."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
        path.write_text("".join(line + "\n" for line in keep))


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, max_images: int = 8) -> Image.Image:
    """Two rows: originals above, reconstructions below. Inputs (B, 3, h, w) in [-1, 1]."""
    n = min(max_images, originals.shape[0])
    return make_grid_image(torch.cat([originals[:n], reconstructions[:n]]), nrow=n)
