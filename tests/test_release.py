"""The release converter: a small random checkpoint in the release layout -> convert -> strict load -> the same
codes and reconstructions as the same tensors put in by hand; at paper size every released key is accounted for.

The small checkpoints come from tests/release_layout.py (the layout written from its description, and the
tensors put into our modules by attribute, independently of the converter's renames).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from release_layout import load_by_hand, random_release_state, release_shapes, small_cfg

from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.release import (
    ReleaseFormatError,
    convert_release_state,
    model_from_release,
    read_release_checkpoint,
    release_model_config,
)
from dualtoken_lite.tools.convert import REPORT_JSON, REPORT_MD, convert

ROOT = Path(__file__).resolve().parents[1]
RELEASE_KEYS = ROOT / "tests" / "data" / "release_state_dict_dim32.json"  # key -> shape of the released checkpoint


# code dim 32: 4 heads of 32 (the released dim-32 layout); 48: 2 heads of 64 pooled to 48 (as its dim-256 model)
@pytest.mark.parametrize("code_dim", [32, 48])
def test_converted_model_equals_the_tensors_loaded_by_hand(tmp_path, code_dim):
    state = random_release_state(small_cfg(code_dim))
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "release.pt")
    report = convert(tmp_path / "release.pt", tmp_path / "out", model_name="tiny")
    converted = DualToken.from_pretrained(tmp_path / "out")
    cfg, _ = release_model_config(state, "tiny")
    assert converted.cfg == cfg and cfg.proj_pool_heads == (code_dim == 48)
    by_hand = load_by_hand(DualToken(cfg), state)
    assert all(bool(cb.initialised) for q in (converted.pixel_quantizer, converted.semantic_quantizer)
               for cb in q.codebooks)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        got, want = converted(x), by_hand(x)
    assert torch.equal(got.pixel_codes, want.pixel_codes) and torch.equal(got.semantic_codes, want.semantic_codes)
    assert got.pixel_codes.unique().numel() > 3, "a degenerate test: every position chose the same code"
    torch.testing.assert_close(got.reconstruction, want.reconstruction, rtol=0, atol=0)
    torch.testing.assert_close(got.pooled, want.pooled, rtol=0, atol=0)
    read = {s for e in report["entries"] for s in e["sources"]}
    assert read == set(state) and report["source_keys"] == len(state)
    dropped = {s for e in report["entries"] if e["kind"] == "dropped" for s in e["sources"]}
    assert {"siglip_model.logit_scale", "prequant_pix.attn.zero_k_bias", "quantizer_pix.codebooks.2.weight"} <= dropped
    assert (tmp_path / "out" / REPORT_MD).read_text().startswith("# Conversion of `release.pt`")
    assert json.loads((tmp_path / "out" / REPORT_JSON).read_text())["counts"] == report["counts"]


def test_every_released_key_is_accounted_for_at_paper_size():
    """The real key list (code dim 32) on the meta device: every key mapped or dropped, the result loads strictly."""
    shapes = json.loads(RELEASE_KEYS.read_text())
    assert len(shapes) == 812
    assert shapes == {k: list(v) for k, v in release_shapes(model_preset("so400m-384")).items()}, \
        "the test's layout description disagrees with the released key list"
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    model, log, _ = model_from_release(state, "model_config_siglip_384_rvq8")
    assert {s for e in log for s in e.sources} == set(shapes)
    assert {e.target for e in log if e.target} == set(model.state_dict())
    trainable = {n: p.numel() for n, p in model.named_parameters()}
    released = sum(v.numel() for k, v in state.items() if not any(t in k for t in (".codebooks.", "zero_k_bias",
                                                                                     "logit_")))
    assert sum(trainable.values()) == released  # non-codebook totals agree exactly


@pytest.mark.parametrize("name, code_dim, preset", [("model_config_siglip_256_rvq4", 32, "so400m-256"),
                                                    ("model_config_siglip_384_rvq8_256d", 256, "so400m-384")])
def test_the_other_released_configs_convert_at_paper_size(name, code_dim, preset):
    """The 256 px depth-4 config and the model zoo's code dim 256 (4 heads of 288 pooled to 256), shapes only."""
    cfg = model_preset(preset)
    for q in (cfg.pixel_quantizer, cfg.semantic_quantizer):
        q.code_dim = code_dim
        q.depth = 4 if "rvq4" in name else 8
    cfg.proj_head_dim, cfg.proj_pool_heads = 1152 // (1152 // code_dim), code_dim == 256
    state = {k: torch.empty(v, device="meta") for k, v in release_shapes(cfg).items()}
    model, log, _ = model_from_release(state, name)
    assert model.cfg.pixel_quantizer.depth == model.cfg.semantic_quantizer.depth == cfg.pixel_quantizer.depth
    assert model.cfg.pixel_quantizer.code_dim == code_dim and model.cfg.proj_head_dim == cfg.proj_head_dim
    assert {s for e in log for s in e.sources} == set(state)


def test_codebook_copies_that_disagree_are_refused_or_chosen_with_a_warning():
    cfg = small_cfg(32)
    state = random_release_state(cfg)
    state["quantizer_sem.codebooks.2.weight"] = state["quantizer_sem.codebooks.2.weight"] + 1
    ours, _ = release_model_config(state, "tiny")
    with pytest.raises(ReleaseFormatError, match=r"copies \[2\] differ from copy 0.*--codebook-copy"):
        convert_release_state(state, ours)
    with pytest.warns(UserWarning, match=r"copies \[0, 1\] differ from the chosen copy 2"):
        tensors, _, notes = convert_release_state(state, ours, codebook_copy=2)
    assert torch.equal(tensors["semantic_quantizer.codebooks.0.embed"], state["quantizer_sem.codebooks.2.weight"][:-1])


def test_unknown_keys_and_unsafe_pickles_are_refused(tmp_path):
    state = random_release_state(small_cfg(32))
    cfg, _ = release_model_config(state, "tiny")
    with pytest.raises(ReleaseFormatError, match="discriminator.weight .* no place"):
        convert_release_state({**state, "discriminator.weight": torch.zeros(2)}, cfg)
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1)}, tmp_path / "with_args.pt")
    with pytest.raises(ReleaseFormatError, match="weights_only=True.*--trust-pickle"):
        read_release_checkpoint(tmp_path / "with_args.pt")
    with pytest.warns(UserWarning, match="runs any code stored in the file"):
        assert read_release_checkpoint(tmp_path / "with_args.pt", trust_pickle=True).keys() == state.keys()


def test_command_line_converts_and_reports(tmp_path):
    state = random_release_state(small_cfg(32), seed=1)
    torch.save(state, tmp_path / "release.pt")
    cmd = [sys.executable, "-m", "dualtoken_lite", "convert", str(tmp_path / "release.pt"), "--out", str(tmp_path / "m"),
           "--model", "tiny"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mapped" in result.stdout and (tmp_path / "m" / "model.safetensors").is_file()
    bad = subprocess.run([*cmd[:4], str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such release checkpoint" in bad.stderr


def test_zero_shot_of_a_transformers_tower_says_it_is_not_built_here():
    """open_clip's text tower would pair SigLIP v1 text with SigLIP2 images: refused with the reason, not scored."""
    from dualtoken_lite.evaluation.external import MetricUnavailable
    from dualtoken_lite.tools.evaluate import semantic_head

    model = DualToken(small_cfg(32))
    model.cfg.backbone.pretrained = "hf:google/siglip2-so400m-patch14-384"
    args = argparse.Namespace(zero_shot=True, teacher="auto", text_weights="webli", classnames="imagenet",
                              templates="openai")
    with pytest.raises(MetricUnavailable, match="zero-shot needs that model's own text tower"):
        semantic_head(model, args, "cpu")
