"""bf16 autocast is granted only where the device computes bf16 natively; elsewhere runs compute in fp32 and say so."""

from pathlib import Path

import pytest

from dualtoken_lite.training import precision
from dualtoken_lite.training.arguments import parse_args
from dualtoken_lite.training.precision import native_bf16, resolve_bf16
from dualtoken_lite.training.presets import preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_is_granted_only_where_the_cpu_has_bf16_kernels(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: native)
    granted, note = resolve_bf16(True, "cpu")
    assert granted is native
    if native:
        assert note is None
    else:
        assert "fp32" in note and "AVX-512 or AMX" in note  # the reason and what is used instead
    assert resolve_bf16(False, "cpu") == (False, None)  # fp32 asked: fp32, nothing to say
    assert resolve_bf16(None, "cpu") == (False, None)  # unset on the CPU: fp32, as before


def test_unset_means_bf16_on_a_gpu_that_has_it(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: device_type == "cuda")
    assert resolve_bf16(None, "cuda") == (True, None)
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    granted, note = resolve_bf16(None, "cuda")
    assert not granted and "cuda" in note


def test_native_bf16_answers_for_this_cpu():
    assert isinstance(native_bf16("cpu"), bool)
    assert native_bf16("meta") is False


def test_the_tiny_preset_trains_in_fp32_on_a_cpu_without_bf16_kernels(monkeypatch, tmp_path, capsys):
    """The preset asks for bf16; without the kernels the trainer computes in fp32, prints why and records it."""
    from dualtoken_lite.training import distributed as dist_utils
    from dualtoken_lite.training.setup import build_trainer

    assert preset("tiny").bf16 is True
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    cfg = parse_args(["--preset", "tiny", "--teacher", "backbone", "--batch_size", "2", "--threads", "1",
                      "--train-data", str(ROOT / "data/tinyworld/eval-0000.tar"), "--eval-data", "none",
                      "--out", str(tmp_path / "run")])
    tr = build_trainer(cfg, dist_utils.setup(cfg.device))
    assert tr.autocast is False
    assert "computing in fp32" in capsys.readouterr().out
    assert tr.final_summary(0)["precision"] == "fp32"
