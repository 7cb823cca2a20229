"""The notebooks' runtime: the FULL switch, the thread rule, quoted figures checked against JSON, run records."""

import json

import pytest
import torch

from dualtoken_lite import notebook_runtime as nr


@pytest.mark.parametrize("value, full", [(None, False), ("", False), ("0", False), ("false", False),
                                         ("1", True), ("yes", True)])
def test_full_switch(monkeypatch, value, full):
    if value is None:
        monkeypatch.delenv(nr.FULL_ENV, raising=False)
    else:
        monkeypatch.setenv(nr.FULL_ENV, value)
    assert nr.full_budget() is full


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (4, 3), (16, 8)])
def test_threads_leave_one_core_free(monkeypatch, cores, threads):
    monkeypatch.delenv(nr.THREADS_ENV, raising=False)
    monkeypatch.setattr(nr, "available_cores", lambda: cores)
    assert nr.choose_threads() == threads


def test_threads_override_and_its_errors(monkeypatch):
    monkeypatch.setenv(nr.THREADS_ENV, "3")
    assert nr.choose_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(nr.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=nr.THREADS_ENV):
            nr.choose_threads()


def test_start_sets_threads_and_seed(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(nr.THREADS_ENV, "1")
    monkeypatch.delenv(nr.FULL_ENV, raising=False)
    try:
        assert nr.start(seed=3) is False and torch.get_num_threads() == 1
        a = torch.rand(3)
        nr.start(seed=3)
        assert torch.equal(a, torch.rand(3)), "start seeds torch"
    finally:
        torch.set_num_threads(before)


def test_figures_check_records_and_refuses_drift(tmp_path, monkeypatch):
    monkeypatch.setenv(nr.WRITE_ENV, "1")
    figures = nr.Figures("nb", root=tmp_path)
    figures.check("default/psnr", 25.0, tol=0.3)
    figures.save()
    assert json.loads((tmp_path / "nb.json").read_text()) == {"default/psnr": 25.0}
    monkeypatch.delenv(nr.WRITE_ENV)
    figures = nr.Figures("nb", root=tmp_path)
    assert figures.check("default/psnr", 25.2, tol=0.3) is None, "nothing to print under a cell"
    assert figures.measured == {"default/psnr": 25.2}
    with pytest.raises(AssertionError, match="the prose quotes 25"):
        figures.check("default/psnr", 26.0, tol=0.3)
    with pytest.raises(KeyError, match="no figure 'full/psnr'"):
        figures.check("full/psnr", 26.0, tol=0.3)
    figures.save()  # not writing: the file is left as it was
    assert json.loads((tmp_path / "nb.json").read_text()) == {"default/psnr": 25.0}


def test_run_record_round_trip(tmp_path):
    images = torch.rand(8, 3, 64, 64) * 2 - 1
    metrics = [{"step": 2, "psnr": 20.0, "loss/recon": 0.1, "lr": 1e-3}]
    nr.RunRecord({"eval": {"psnr": 25.0}}, metrics, images).save(tmp_path / "run")
    back = nr.RunRecord.load(tmp_path / "run")
    assert back.eval == {"psnr": 25.0}
    assert back.metrics == [{"step": 2, "psnr": 20.0, "loss/recon": 0.1}], "only the plotted fields are kept"
    assert back.reconstructions.shape == images.shape
    assert (back.reconstructions - images).abs().max() <= 1 / 127.5 + 1e-6, "8-bit on disk"
    with pytest.raises(FileNotFoundError, match=nr.FULL_ENV):
        nr.RunRecord.load(tmp_path / "missing")
