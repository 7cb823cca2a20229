"""The ablation: every compared pair differs in exactly the one setting its row names, `dual` is the main job's
tokenizer, the verdicts follow the seed ranges, and a killed ablation continues its interrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from dualtoken_lite.settings import ConfigError, to_dict
from dualtoken_lite.tinyworld.drawing import make_sample
from dualtoken_lite.tinyworld.shards import encode_png, sample_key
from dualtoken_lite.tinyworld.teacher import TinySigLIP, save_teacher, teacher_fingerprint
from dualtoken_lite.tools.ablation import (
    PAIRS,
    PAPER,
    STEPS,
    VARIANTS,
    aggregate,
    exceeds_spread,
    main,
    markdown,
    parse_part,
    plan,
    run_ablation,
    run_args,
    summarise,
)
from dualtoken_lite.training import loop
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.config import TrainConfig
from dualtoken_lite.training.presets import preset
from dualtoken_lite.training.run_plan import flatten


def _config(key: str, seed: int = 0, extra: tuple[str, ...] = ()) -> dict:
    """A variant's whole trainer config, flattened to dotted fields, without its run folder."""
    flat = flatten(to_dict(parse_args(run_args(VARIANTS[key], seed, STEPS, Path("runs/ablation"), list(extra)))))
    flat.pop("out")
    return flat


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p.question)
def test_each_pair_differs_in_exactly_the_setting_it_names(pair):
    start, to = _config(pair.start), _config(pair.to)
    assert set(start) == set(to)
    differ = sorted(k for k in start if start[k] != to[k])
    assert differ == [pair.field], f"{pair.start} -> {pair.to}: differ in {differ}, the table says {pair.field}"


def test_dual_is_the_main_job_and_every_run_has_its_budget():
    main_job = flatten(to_dict(preset("tiny")))
    dual = _config("dual", seed=2)
    changed = sorted(k for k in dual if dual[k] != main_job[k])
    assert changed == ["eval_every", "image_every", "keep_checkpoints", "save_every", "seed"], changed
    assert STEPS == TrainConfig().max_steps == dual["max_steps"] == 1200
    for key in VARIANTS:
        cfg = _config(key, extra=("--model.pixel_quantizer.codebook_size", "32"))
        assert cfg["model.pixel_quantizer.codebook_size"] == 32, "the caller's flags reach every run"
    assert {v.paper for v in VARIANTS.values()} - {None} == set(PAPER), "every row of the paper has a counterpart"


def test_verdict_is_whether_the_seed_ranges_overlap():
    assert exceeds_spread(summarise([1.0, 2.0, 3.0]), summarise([3.5, 4.0, 5.0]))
    assert not exceeds_spread(summarise([1.0, 2.0, 3.0]), summarise([2.9, 4.0, 5.0]))
    assert not exceeds_spread(summarise([1.0, 9.0]), summarise([4.0, 5.0])), "a range inside the other overlaps"


def _eval(psnr: float, shape: float | None) -> dict:
    out = {"psnr": psnr, "psnr_chroma": psnr + 8, "ssim": 0.5}
    if shape is not None:
        out["semantic"] = {"shape": shape, "colour": 0.5}
        out["teacher_semantic"] = {"shape": 0.99, "colour": 0.9}
    return out


def test_record_has_every_pair_with_its_differences_and_the_paper_beside():
    per_seed = {"shared": {0: _eval(20.0, 0.90), 1: _eval(20.4, 0.94)},
                "two_deep": {0: _eval(21.0, 0.93), 1: _eval(21.2, 0.95)},
                "dual": {0: _eval(25.0, 0.95), 1: _eval(25.5, 0.96)},
                "shared_nosem": {0: _eval(22.0, 0.2), 1: _eval(22.1, 0.3)},
                "dual_nosem": {0: _eval(25.2, 0.2), 1: _eval(25.4, 0.3)}}
    record = aggregate(per_seed)
    shared = record["variants"]["shared"]
    assert shared["psnr"]["mean"] == pytest.approx(20.2) and shared["zero_shot/shape"]["max"] == pytest.approx(94)
    pairs = {(p["from"], p["to"]): p for p in record["pairs"]}
    assert [(p.start, p.to) for p in PAIRS] == list(pairs), "every pair, in the table's order"
    one_to_two = pairs["shared", "two_deep"]["difference"]
    assert one_to_two["psnr"]["delta"] == pytest.approx(0.9) and one_to_two["psnr"]["exceeds_spread"]
    assert not one_to_two["zero_shot/shape"]["exceeds_spread"], "93-95 overlaps 90-94"
    record.update(steps=2, batch_size=4, seeds=[0, 1], teacher_zero_shot={"shape": 0.99})
    text = markdown(record)
    for key, variant in VARIANTS.items():
        assert f"| `{key}`: {variant.label} |" in text
    assert "20.20 (20.00-20.40)" in text and "+0.90 (exceeds the seed spread)" in text
    assert "within the seed spread" in text and "`model.shared_quantizer`" in text
    for row in PAPER.values():
        assert f"| {row.name} {row.label} | {row.rfid:.2f} | {row.psnr:.1f} |" in text
    assert "shape 99.0 %" in text


def test_parts_share_the_runs_out_between_processes():
    keys, seeds = list(VARIANTS), [0, 1, 2]
    parts = [plan(keys, seeds, (k, 2)) for k in (1, 2)]
    assert sorted(parts[0] + parts[1]) == sorted(plan(keys, seeds, (1, 1))) and not set(parts[0]) & set(parts[1])
    assert parse_part("2/3") == (2, 3)
    for bad in ("3/2", "0/1", "x", "1/2/3"):
        with pytest.raises(ConfigError, match="--part"):
            parse_part(bad)


def test_budget_flags_and_unknown_variants_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="one budget"):
        run_ablation(2, [0], tmp_path, ["--max_steps", "9"])
    with pytest.raises(ConfigError, match="unknown variant"):
        run_ablation(2, [0], tmp_path, [], variants=["nope"])


# ------------------------------------------------------------------------------------------ a real, tiny ablation
FAST = ["--batch_size", "4", "--threads", "1", "--log_every", "1", "--eval_samples", "8",
        "--model.pixel_quantizer.codebook_size", "32", "--model.semantic_quantizer.codebook_size", "32"]


def _shard(path: Path, split: str, n: int) -> str:
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            image, meta = make_sample(i, split)
            sink.write({"__key__": sample_key(split, i), "png": encode_png(image), "cls": str(meta["label"]).encode()})
    return str(path)


class Interrupted(Exception):
    """Stands for a killed process: raised inside the trainer after a given step."""


def test_a_killed_ablation_continues_its_run_and_writes_the_table_when_all_are_done(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_teacher(TinySigLIP(), {}, tmp_path / "t")  # a random tiny SigLIP: zero-shot is measured, near chance
    extra = [*FAST, "--train-data", _shard(tmp_path / "train.tar", "train", 16),
             "--eval-data", _shard(tmp_path / "eval.tar", "eval", 8), "--teacher", str(tmp_path / "t")]
    out, real_run, first_steps = tmp_path / "out", loop.run, []

    def kill_after(step: int):
        def spy(cfg, hooks=None, given=None):
            seen = []

            def after_step(current: int) -> None:
                seen.append(current)
                if current == step:
                    raise Interrupted

            try:
                return real_run(cfg, loop.RunHooks(after_step=after_step), given)
            finally:
                first_steps.append(seen[0] if seen else None)
        return spy

    monkeypatch.setattr(loop, "run", kill_after(3))
    with pytest.raises(Interrupted):
        run_ablation(4, [0, 1], out, extra, variants=["dual", "dual_nosem"], log=lambda *_: None)
    monkeypatch.setattr(loop, "run", kill_after(-1))
    # the second of two processes: its share is dual seed 1 and dual_nosem seed 1; dual seed 0 is not done
    assert run_ablation(4, [0, 1], out, extra, variants=["dual", "dual_nosem"], log=lambda *_: None,
                        part=(2, 2)) is None and not (out / "ablation.json").exists()
    record = run_ablation(4, [0, 1], out, extra, variants=["dual", "dual_nosem"], log=lambda *_: None)
    assert first_steps[0] == 1 and first_steps[3] == 3, "killed in step 3: continued from the step-2 checkpoint"
    assert first_steps[1:3] == [1, 1] and first_steps[4] is None, "fresh runs start at 1; a finished one is reused"
    assert json.loads((out / "ablation.json").read_text()) == json.loads(json.dumps(record))
    for key in ("dual", "dual_nosem"):
        for seed in (0, 1):
            run_dir = out / key / f"seed{seed}"
            assert json.loads((run_dir / "summary.json").read_text())["step"] == 4
            assert json.loads((run_dir / "ablation_seconds.json").read_text())["seconds"] > 0
            record_file = json.loads((run_dir / "teacher.json").read_text())  # every run records its teacher
            assert record_file["fingerprint"] == teacher_fingerprint(tmp_path / "t")
    assert [(p["from"], p["to"]) for p in record["pairs"]] == [("dual_nosem", "dual")]
    assert record["variants"]["dual"]["psnr"]["values"] != record["variants"]["dual_nosem"]["psnr"]["values"]
    # a changed budget is a different run: retrained, not reused
    stamp = (out / "dual" / "seed0" / "summary.json").stat().st_mtime_ns
    main(["--steps", "2", "--seeds", "0", "--out", str(out), "--variants", "dual", *extra])
    assert (out / "dual" / "seed0" / "summary.json").stat().st_mtime_ns != stamp
    assert json.loads((out / "dual" / "seed0" / "summary.json").read_text())["step"] == 2
