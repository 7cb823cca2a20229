"""The ablation driver: the four variants really are the paper's four tokenizers, every run shares one budget,
and the table reports every row with the right columns and the seeds' mean and spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.shards import encode_png, sample_key
from dualtoken_lite.tinyworld.teacher import TinySigLIP, save_teacher, teacher_fingerprint
from dualtoken_lite.tools.ablation import (
    COLUMNS,
    VARIANTS,
    aggregate,
    main,
    markdown_table,
    mean_spread,
    run_ablation,
)

# Small, fast runs: 2 steps at batch 4, small codebooks, one thread, no images.
FAST = ["--batch_size", "4", "--threads", "1", "--log_every", "1", "--image_every", "0", "--eval_samples", "8",
        "--model.pixel_quantizer.codebook_size", "32", "--model.semantic_quantizer.codebook_size", "32"]


def _shard(path: Path, split: str, n: int) -> str:
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            image, meta = make_sample(i, split)
            sink.write({"__key__": sample_key(split, i), "png": encode_png(image), "cls": str(meta["label"]).encode()})
    return str(path)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """Four variants x two seeds, 2 steps each, with a (random) teacher folder so accuracy is measured."""
    root = tmp_path_factory.mktemp("ablation")
    torch.manual_seed(0)
    save_teacher(TinySigLIP(), {}, root / "teacher")
    extra = [*FAST, "--train-data", _shard(root / "train.tar", "train", 16),
             "--eval-data", _shard(root / "eval.tar", "eval", 8), "--teacher", str(root / "teacher")]
    table = run_ablation(2, [0, 1], root / "out", extra, log=lambda *_: None)
    return root / "out", table, extra


def test_every_variant_trains_the_model_it_claims(ablation):
    out, _, _ = ablation
    expect = {  # (pixel_layer, shortcut_layer, semantic_layer, shared_quantizer)
        "shared": (5, None, 5, True), "deep": (5, None, None, False),
        "shallow": (0, None, None, False), "dual": (0, None, 5, False),
    }
    for key, taps in expect.items():
        for seed in (0, 1):
            cfg = json.loads((out / key / f"seed{seed}" / "config.json").read_text())
            model = cfg["model"]
            got = (model["pixel_layer"], model["shortcut_layer"], model["semantic_layer"], model["shared_quantizer"])
            assert got == taps, f"{key}: taps {got}, expected {taps}"
            assert cfg["max_steps"] == 2 and cfg["seed"] == seed, "every run has the one budget and its own seed"
            assert model["pixel_quantizer"]["codebook_size"] == 32, "the caller's flags reach every run"
            assert (out / key / f"seed{seed}" / "model" / "model.safetensors").is_file()
            record = json.loads((out / key / f"seed{seed}" / "teacher.json").read_text())  # the teacher it distils
            summary = json.loads((out / key / f"seed{seed}" / "summary.json").read_text())
            assert record["fingerprint"] == summary["teacher_fingerprint"] == teacher_fingerprint(out.parent / "teacher")


def test_table_has_every_row_and_the_right_columns(ablation):
    out, table, _ = ablation
    text = (out / "ablation.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == [v.label for v in VARIANTS.values()]
    for row, variant in zip(rows, VARIANTS.values()):
        assert len(row) == len(COLUMNS)
        assert row[4] == f"{variant.paper_rfid:.2f}" and row[5] == f"{variant.paper_psnr:.1f}"
        assert "±" in row[1] and "±" in row[2], f"{variant.key}: PSNR and SSIM for every variant"
        has_semantic = variant.paper_zero_shot is not None
        assert ("±" in row[3]) == has_semantic, f"{variant.key}: semantic accuracy only with a semantic branch"
        assert (row[6] != "-") == has_semantic


def test_table_figures_are_the_runs_mean_and_spread(ablation):
    out, table, _ = ablation
    record = json.loads((out / "ablation.json").read_text())
    for key in VARIANTS:
        runs = [json.loads((out / key / f"seed{s}" / "summary.json").read_text())["eval"] for s in (0, 1)]
        mean, std = mean_spread([r["psnr"] for r in runs])
        assert table[key]["psnr"]["mean"] == pytest.approx(mean)
        assert table[key]["psnr"]["std"] == pytest.approx(std)
        assert record["variants"][key]["psnr"]["values"] == [r["psnr"] for r in runs]
        assert runs[0]["psnr"] != runs[1]["psnr"], f"{key}: the seeds must give different runs"
        assert ("semantic_accuracy" in table[key]) == (VARIANTS[key].paper_zero_shot is not None)


def test_a_finished_run_is_reused_and_a_changed_one_is_not(ablation, capsys):
    out, table, extra = ablation
    stamp = (out / "dual" / "seed0" / "summary.json").stat().st_mtime_ns
    again = run_ablation(2, [0, 1], out, extra, variants=["dual"], log=lambda *_: None)
    assert (out / "dual" / "seed0" / "summary.json").stat().st_mtime_ns == stamp, "same config: reused"
    assert again["dual"]["psnr"] == table["dual"]["psnr"]
    main(["--steps", "1", "--seeds", "0", "--out", str(out), "--variants", "dual", *extra])
    assert (out / "dual" / "seed0" / "summary.json").stat().st_mtime_ns != stamp, "new budget: retrained"
    assert "| (d) DualToken" in capsys.readouterr().out


def test_spread_of_one_seed_is_zero_and_budget_flags_are_refused(tmp_path):
    assert mean_spread([3.0]) == (3.0, 0.0)
    assert mean_spread([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    with pytest.raises(ValueError, match="one budget"):
        run_ablation(2, [0], tmp_path, ["--max_steps", "9"])
    with pytest.raises(ValueError, match="unknown variant"):
        run_ablation(2, [0], tmp_path, [], variants=["nope"])
    one = aggregate({"deep": {0: {"psnr": 20.0, "ssim": 0.5}}})
    assert "20.00 ± 0.00" in markdown_table(one)
