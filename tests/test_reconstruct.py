"""The reconstruct command: any image mode and size in, original / reconstruction / token maps out, bad files
reported by name; run folders resolve to their weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from cli_helpers import saved_model, tiny_images
from PIL import Image

from dualtoken_lite.datasets.images import load_image, preprocess, to_pil
from dualtoken_lite.model.pretrained import CheckpointError
from dualtoken_lite.tools.common import resolve_checkpoint
from dualtoken_lite.tools.reconstruct import code_colours, code_map_image, main


def odd_inputs(root):
    """Images of several PIL modes and sizes, two sharing a file name, plus a corrupt file."""
    base = Image.fromarray(tiny_images(1)[0][0]).resize((96, 50))
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    files = {
        "a/rgba.png": base.convert("RGBA"),
        "a/grey.png": base.convert("L").resize((30, 80)),
        "b/rgba.png": base.convert("P"),  # same file name as a/rgba.png
        "a/cmyk.jpg": base.convert("CMYK"),
        "a/deep.png": Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257),
    }
    for name, image in files.items():
        image.save(root / name)
    (root / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return [root / name for name in files], root / "a" / "bad.png"


def test_any_mode_and_size_and_bad_files(tmp_path, capsys):
    model, ckpt = saved_model(tmp_path / "model")
    good, bad = odd_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main([str(ckpt), *map(str, good[:2]), str(bad), *map(str, good[2:]), "--out", str(out),
                 "--device", "cpu", "--upscale", "2", "--batch-size", "2"])
    assert code == 1  # one file failed
    captured = capsys.readouterr()
    assert "bad.png" in captured.err and "PSNR" in captured.out
    stems = ["rgba", "grey", "rgba_2", "cmyk", "deep"]  # the second rgba.png does not overwrite the first
    for path, stem in zip(good, stems):
        original = Image.open(out / f"{stem}_original.png")
        x = preprocess(load_image(path), 64)
        assert original.size == (64, 64) and np.array_equal(np.asarray(original), np.asarray(to_pil(x)))
        with torch.no_grad():
            want = model(x[None]).reconstruction[0]
        recon = np.asarray(Image.open(out / f"{stem}_recon.png")).astype(int)
        assert np.abs(recon - np.asarray(to_pil(want)).astype(int)).max() <= 1  # batch-size float noise only
        assert Image.open(out / f"{stem}_tokens.png").size == (64 * 2 + 2, 64)  # pixel | semantic maps
        assert Image.open(out / f"{stem}_compare.png").size == (2 * (64 * 4 + 2) + 2 * 2, 128)
    assert not list(out.glob("bad_*"))


def test_token_map_shows_first_depth_codes():
    codes = torch.tensor([[0, 1], [5, 1]])
    picture = np.asarray(code_map_image(codes, 32))  # 16 px cells with a dark grid line at their edges
    colours = code_colours(codes).numpy()
    for r in range(2):
        for c in range(2):
            assert np.array_equal(picture[r * 16 + 8, c * 16 + 8], colours[r, c])
    assert np.array_equal(colours[0, 1], colours[1, 1])  # one code, one colour
    many = code_colours(torch.arange(64).reshape(8, 8)).reshape(-1, 3).numpy()
    assert len({tuple(c) for c in many}) == 64  # distinct codes get distinct colours


def test_run_folder_resolves_to_model_then_latest_step(tmp_path):
    _, ckpt = saved_model(tmp_path / "weights")
    run = tmp_path / "run"
    for step in ("step_00000002", "step_00000010"):
        shutil.copytree(ckpt, run / "checkpoints" / step)
        (run / "checkpoints" / step / "training_state.pt").write_bytes(b"")
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_00000010"
    shutil.copytree(ckpt, run / "model")
    assert resolve_checkpoint(run) == run / "model"
    assert resolve_checkpoint(run / "model") == run / "model"
    with pytest.raises(CheckpointError, match="neither a model folder"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
