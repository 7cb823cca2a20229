"""The release converter: small checkpoints in each published layout, written from the release's documented keys
(tests/release_layout.py), converted by the command's code, give the numbers the release's forward pass computes
from the same tensors by key (tests/release_reference.py); at paper size every released key is accounted for;
what the converter cannot build exactly is refused with the reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from release_layout import TEXT_KEYS, random_release_state, release_config, release_shapes, small_cfg
from release_reference import release_forward

from dualtoken_lite.model.config import model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.model.release import model_from_release
from dualtoken_lite.model.release_config import release_model_config
from dualtoken_lite.model.release_files import ReleaseFormatError, read_release_checkpoint
from dualtoken_lite.settings import ConfigError
from dualtoken_lite.tools.convert import REPORT_JSON, REPORT_MD, convert

ROOT = Path(__file__).resolve().parents[1]
RELEASE_KEYS = ROOT / "tests" / "data" / "release_state_dict_dim32.json"  # key -> shape of the released checkpoint
HEADS = 4  # the tiny tower's attention heads (SigLIP's head count is in its own config, not in the checkpoint)

LAYOUTS = {  # name -> the small release config it stands for
    "current, shared codebooks": small_cfg(32),
    "current, per-depth codebooks": small_cfg(32, shared=False),
    "current, semantic code dim 64": small_cfg(32, semantic_code_dim=64),
    "early, ResNet-block projections": small_cfg(32, conv=True),
}


def save_release_run(folder: Path, cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """What the release's training leaves: epoch_N.pt ({"epoch", "name", "state_dict", "optimizer"}) + config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = random_release_state(cfg, seed)
    torch.save({"epoch": 3, "name": "run", "state_dict": state, "optimizer": {}}, folder / "epoch_3.pt")
    (folder / "config.json").write_text(json.dumps(release_config(cfg), indent=2))
    return state


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_converted_model_gives_the_release_forward_pass(tmp_path, layout):
    cfg = LAYOUTS[layout]
    state = save_release_run(tmp_path / "run", cfg)
    report = convert(tmp_path / "run" / "epoch_3.pt", tmp_path / "out", model_name="tiny")  # config.json beside it
    model = DualToken.from_pretrained(tmp_path / "out")
    got_cfg = model.cfg
    assert got_cfg.backbone.activation == "gelu_tanh" and got_cfg.decoder_norm_groups == 32  # the release's, not tiny's
    assert got_cfg.semantic_proj_head_dim == (64 if "64" in layout else None)
    assert got_cfg.projection == ("conv" if "early" in layout else "attention")
    for quantizer in (model.pixel_quantizer, model.semantic_quantizer):
        assert len(quantizer.codebooks) == (3 if "per-depth" in layout else 1)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    settings = release_config(cfg)["rqvaesiglip"]
    want = release_forward(state, settings, x, HEADS)
    with torch.no_grad():
        got = model(x)
    assert torch.equal(got.pixel_codes, want["codes_pix"]) and torch.equal(got.semantic_codes, want["codes_sem"])
    assert got.pixel_codes.unique().numel() > 3, "a degenerate test: every position chose the same code"
    # float tolerance: the same sums in another order agree to ~3e-6 of the output's scale here; the tower with
    # exact GELU instead of tanh misses the pooled embedding by ~1.4e-4 of its scale
    for ours, theirs in ((got.reconstruction, want["recon"]), (got.pooled, want["pooled"])):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))
    read = {s for e in report["entries"] for s in e["sources"]}
    assert read == set(state) and report["source_keys"] == len(state)
    dropped = {s for e in report["entries"] if e["kind"] == "dropped" for s in e["sources"]}
    assert {"siglip_model.logit_scale", *TEXT_KEYS} <= dropped
    semantic = "quantizer_semantic" if "early" in layout else "quantizer_sem"
    assert (f"{semantic}.codebooks.2.weight" in dropped) == ("per-depth" not in layout)  # copies of a shared one
    assert (tmp_path / "out" / REPORT_MD).read_text().startswith("# Conversion of `epoch_3.pt`")
    assert json.loads((tmp_path / "out" / REPORT_JSON).read_text())["counts"] == report["counts"]


def test_per_depth_codebooks_keep_each_depths_codes():
    cfg = small_cfg(32, shared=False)
    state = random_release_state(cfg)
    model, _, notes = model_from_release(state, "tiny", release_config(cfg)["rqvaesiglip"])
    for d, codebook in enumerate(model.semantic_quantizer.codebooks):
        assert torch.equal(codebook.embed, state[f"quantizer_sem.codebooks.{d}.weight"][:-1])
        assert torch.equal(codebook.embed_avg, state[f"quantizer_sem.codebooks.{d}.embed_ema"])
    assert any("one per depth" in note for note in notes)


def test_every_released_key_is_accounted_for_at_paper_size():
    """The key list of the current release (code dim 32) on the meta device: every key mapped or dropped.

    The list is every key its RQVAESiglipModel's state dict holds besides the text tower's (built from the release's
    own code on the meta device, outside this repository), and equals the layout described in release_layout.py.
    """
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
    assert model.cfg.backbone.activation == "gelu_tanh" and model.cfg.proj_head_dim == 32


@pytest.mark.parametrize("name, preset", [("model_config_siglip_256_rvq4", "so400m-256"),
                                          ("model_config", "so400m-384-dim256")])
def test_the_other_published_configs_convert_at_paper_size(name, preset):
    """The 256 px depth-4 config and the early release's dim-256 model (its model zoo's), shapes only."""
    cfg = model_preset(preset)
    state = {k: torch.empty(v, device="meta") for k, v in release_shapes(cfg).items()}
    for model_name in (name, None):  # named, or recognised from the layout and the grid
        model, log, _ = model_from_release(state, model_name, release_config(cfg)["rqvaesiglip"])
        assert {s for e in log for s in e.sources} == set(state)
        got = model.cfg
        assert (got.projection, got.shortcut_layer, got.pixel_quantizer.code_dim, got.pixel_quantizer.depth,
                got.pixel_quantizer.codebook_size) == (cfg.projection, cfg.shortcut_layer, cfg.pixel_quantizer.code_dim,
                                                       cfg.pixel_quantizer.depth, cfg.pixel_quantizer.codebook_size)


def test_a_config_that_disagrees_with_the_preset_or_the_tensors_is_refused():
    cfg = model_preset("so400m-384")
    state = {k: torch.empty(v, device="meta") for k, v in release_shapes(cfg).items()}
    settings = release_config(cfg)["rqvaesiglip"]
    with pytest.raises(ConfigError, match=r"disagrees with preset 'so400m-384': pixel_layer 5 \(ours 6\)"):
        release_model_config(state, "model_config_siglip_384_rvq8", {**settings, "layer_recon": 5})
    with pytest.raises(ReleaseFormatError, match="decoder attends at its 24 x 24 input only"):
        release_model_config(state, None, {**settings, "decoder_latent_shape": [27, 27]})
    small = small_cfg(32)
    small_settings = release_config(small)["rqvaesiglip"]
    wrong_dim = {**small_settings, "vq_sem": {**small_settings["vq_sem"], "embed_dim": 16}}
    with pytest.raises(ConfigError, match=r"disagrees with the checkpoint's tensors: semantic_quantizer.code_dim 16"):
        release_model_config(random_release_state(small), "tiny", wrong_dim)
    with pytest.raises(ConfigError, match="not a release config.*--config"):  # tiny's taps are not the release's
        release_model_config(random_release_state(small), "tiny", None)


def test_a_run_whose_model_is_not_the_releases_architecture_is_refused():
    """--load_from converts into the run's own model: its GroupNorm groups and GELU must be the release's."""
    cfg = small_cfg(32)
    state = random_release_state(cfg)
    run_model = model_preset("tiny")
    run_model.pixel_layer, run_model.shortcut_layer = 2, 1
    with pytest.raises(ConfigError, match=r"backbone.activation 'gelu_tanh' \(ours 'gelu'\).*decoder_norm_groups 32 "
                                          r"\(ours 8\)"):
        model_from_release(state, model_cfg=run_model)


def test_unpublished_layouts_unknown_keys_and_unsafe_pickles_are_refused(tmp_path):
    state = random_release_state(small_cfg(32))
    march = {k.replace("prequant_sem", "prequant_semantic_gone"): v for k, v in state.items()
             if not k.startswith("prequant_sem.")}
    with pytest.raises(ReleaseFormatError, match="March 2026 layout.*41be90e"):
        release_model_config(march, "tiny", release_config(small_cfg(32))["rqvaesiglip"])
    with pytest.raises(ReleaseFormatError, match="discriminator.weight .* no place"):
        model_from_release({**state, "discriminator.weight": torch.zeros(2)}, "tiny",
                           release_config(small_cfg(32))["rqvaesiglip"])
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1)}, tmp_path / "with_args.pt")
    with pytest.raises(ReleaseFormatError, match="weights_only=True.*--trust-pickle"):
        read_release_checkpoint(tmp_path / "with_args.pt")
    with pytest.warns(UserWarning, match="runs any code stored in the file"):
        assert read_release_checkpoint(tmp_path / "with_args.pt", trust_pickle=True).keys() == state.keys()


def run_convert(*args: str) -> subprocess.CompletedProcess:
    """``python -m dualtoken_lite convert ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "dualtoken_lite", "convert", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_command_line_converts_and_reports(tmp_path):
    cfg = small_cfg(32)
    save_release_run(tmp_path / "run", cfg, seed=1)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").unlink()  # given with --config instead
    result = run_convert(str(tmp_path / "run" / "epoch_3.pt"), "--out", str(tmp_path / "m"), "--model", "tiny",
                         "--config", str(tmp_path / "config"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mapped" in result.stdout and (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.parametrize("name, content, says", [
    ("missing.pt", None, "no such release checkpoint"),
    ("empty.pt", b"", "is empty"),
    ("notes.pt", b"hello, this is text\n", "is not a readable torch checkpoint"),
    ("notes.safetensors", b"hello, this is text\n", "cannot be read as safetensors"),
])
def test_bad_files_give_one_line_and_exit_2(tmp_path, name, content, says):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    result = run_convert(str(tmp_path / name), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and says in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_zero_shot_of_a_transformers_tower_says_it_is_not_built_here():
    """open_clip's text tower would pair SigLIP v1 text with SigLIP2 images: refused with the reason, not scored."""
    from dualtoken_lite.evaluation.external import MetricUnavailable
    from dualtoken_lite.tools.evaluate import semantic_score

    model = DualToken(small_cfg(32))
    model.cfg.backbone.pretrained = "hf:google/siglip2-so400m-patch14-384"
    args = argparse.Namespace(zero_shot=True, teacher="auto", text_weights="webli", classnames="imagenet",
                              templates="openai")
    with pytest.raises(MetricUnavailable, match="zero-shot needs that model's own text tower"):
        semantic_score(model, args, "cpu")
