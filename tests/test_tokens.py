"""The language-model token layout and the codes files: exact round trips, ids that never collide, decode from a
file equal to the reconstruction, bad inputs skipped by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import saved_model, shard, small_model, tiny_images
from PIL import Image

from dualtoken_lite.datasets.images import preprocess, to_pil
from dualtoken_lite.model.token_layout import TokenLayout, from_lm_sequence, to_lm_sequence
from dualtoken_lite.tinyworld.shards import sample_key
from dualtoken_lite.tools.tokens import decode_codes, load_codes, main


def random_codes(layout: TokenLayout, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grid = (batch, layout.grid, layout.grid)
    pixel = torch.randint(0, layout.pixel_codebook_size, (*grid, layout.pixel_depth), generator=g)
    semantic = None
    if layout.semantic_depth:
        semantic = torch.randint(0, layout.semantic_codebook_size, (*grid, layout.semantic_depth), generator=g)
    return pixel, semantic


LAYOUTS = {
    "shared": TokenLayout(4, 2, 16, True, 3, 32, True),
    "per_depth": TokenLayout(4, 2, 16, False, 3, 32, False),
    "specials": TokenLayout(4, 2, 16, True, 3, 32, True, specials=True),
    "pixel_only": TokenLayout(4, 2, 16, True),
    "paper": TokenLayout(27, 8, 16384, True, 8, 16384, True, specials=True),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_lm_sequence_round_trip_and_order(name):
    layout = LAYOUTS[name]
    pixel, semantic = random_codes(layout)
    tokens = to_lm_sequence(pixel, semantic, layout)
    assert tokens.shape == (3, layout.length) and tokens.dtype == torch.long
    back_pixel, back_semantic = from_lm_sequence(tokens, layout)
    assert torch.equal(back_pixel, pixel)
    assert (back_semantic is None) == (semantic is None)
    if semantic is not None:
        assert torch.equal(back_semantic, semantic)
    # the documented order: raster over the grid, per position pixel depths then semantic depths
    body = tokens[:, 1:-1] if layout.specials else tokens
    per = layout.pixel_depth + layout.semantic_depth
    r, c, d = layout.grid - 1, 1, layout.pixel_depth - 1
    step = 0 if layout.pixel_shared else layout.pixel_codebook_size
    assert body[1, (r * layout.grid + c) * per + d] == pixel[1, r, c, d] + d * step
    if semantic is not None:
        s_step = 0 if layout.semantic_shared else layout.semantic_codebook_size
        got = body[2, (r * layout.grid + c) * per + layout.pixel_depth + 2]
        assert got == semantic[2, r, c, 2] + layout.semantic_offset + 2 * s_step
    # pixel ids, semantic ids and specials occupy disjoint ranges
    slots = body.reshape(3, layout.grid**2, per)
    assert slots[..., : layout.pixel_depth].max() < layout.pixel_vocab
    if semantic is not None:
        assert slots[..., layout.pixel_depth :].min() >= layout.pixel_vocab
        assert slots[..., layout.pixel_depth :].max() < layout.boi
    if layout.specials:
        assert (tokens[:, 0] == layout.boi).all() and (tokens[:, -1] == layout.eoi).all()
        assert layout.vocab_size == layout.eoi + 1


def test_paper_layout_numbers():
    layout = LAYOUTS["paper"]
    assert (layout.semantic_offset, layout.boi, layout.eoi, layout.length) == (16384, 32768, 32769, 11666)


def test_bad_sequences_are_refused_by_position():
    layout = LAYOUTS["shared"]
    tokens = to_lm_sequence(*random_codes(layout), layout)
    wrong = tokens.clone()
    wrong[0, 2] = 3  # slot 2 is position (0, 0), semantic depth 1: a pixel id there
    with pytest.raises(ValueError, match="row 0, column 0, semantic depth 1"):
        from_lm_sequence(wrong, layout)
    with pytest.raises(ValueError, match=r"shape \(B, 80\)"):
        from_lm_sequence(tokens[:, :-1], layout)
    with pytest.raises(ValueError, match="<boi>"):
        from_lm_sequence(torch.cat([tokens[:, :1], tokens, tokens[:, :1]], 1), LAYOUTS["specials"])
    pixel, semantic = random_codes(layout)
    with pytest.raises(ValueError, match=r"pixel_codes must be integer codes in \[0, 16\)"):
        to_lm_sequence(pixel + 16, semantic, layout)


@pytest.mark.parametrize("suffix", [".safetensors", ".npy", ".tar", "-%02d.tar"])
def test_encode_file_decode_equals_reconstruction(tmp_path, suffix):
    model, ckpt = saved_model(tmp_path / "model")
    images, _ = tiny_images(5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"im{i}.png")
    out = tmp_path / f"codes{suffix}"
    extra = ["--shard-size", "2"] if "%" in suffix else []
    assert main(["encode", str(ckpt), str(inputs), "--out", str(out), "--device", "cpu", "--batch-size", "2",
                 *extra]) == 0
    x = torch.stack([preprocess(im, 64) for im in images])  # (5, 3, 64, 64)
    with torch.no_grad():
        forward = model(x)
    layout = TokenLayout.from_config(model.cfg)
    stored = str(tmp_path / "codes-{00..02}.tar") if "%" in suffix else out
    names, pixel, semantic = load_codes(stored, layout)
    assert torch.equal(pixel, forward.pixel_codes) and torch.equal(semantic, forward.semantic_codes)
    if suffix != ".npy":
        assert [n.rsplit("/", 1)[-1] for n in names] == [f"im{i}.png" for i in range(5)]
    decoded = decode_codes(model, pixel)  # one batch of 5, as model.decode below (float sums vary with B)
    with torch.no_grad():
        assert torch.equal(decoded, model.decode(forward.pixel_codes))  # exactly the codes API
    torch.testing.assert_close(decoded, forward.reconstruction, atol=1e-5, rtol=0)
    assert main(["decode", str(ckpt), str(stored), "--out", str(tmp_path / "recon"), "--device", "cpu"]) == 0
    stem = "im3" if suffix != ".npy" else "00000003"
    written = np.asarray(Image.open(tmp_path / "recon" / f"{stem}.png"))
    assert np.array_equal(written, np.asarray(to_pil(decoded[3])))


def test_shards_in_bad_files_skipped_and_exit_code(tmp_path, capsys):
    model, ckpt = saved_model(tmp_path / "model")
    data = shard(tmp_path / "data.tar", count=4)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "codes.safetensors"
    code = main(["encode", str(ckpt), str(data), str(bad), str(tmp_path / "missing.png"), "--out", str(out),
                 "--device", "cpu", "--specials"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "missing.png" in err
    layout = TokenLayout.from_config(model.cfg, specials=True)
    names, pixel, _ = load_codes(out, layout)
    assert names == [f"{data}:{sample_key('eval', i)}" for i in range(4)]
    with torch.no_grad():
        want, _ = model.encode(torch.stack([preprocess(im, 64) for im in tiny_images(4)[0]]))
    assert torch.equal(pixel, want)


@pytest.mark.parametrize("kind", ["shared", "no_semantic", "per_depth"])
def test_variants_have_consistent_layouts(kind):
    model = small_model(kind)
    layout = TokenLayout.from_config(model.cfg)
    x = torch.stack([preprocess(im, 64) for im in tiny_images(2)[0]])
    with torch.no_grad():
        pixel, semantic = model.encode(x)
    if kind in ("shared", "no_semantic"):
        assert layout.semantic_depth == 0  # the shared ablation's semantic codes are its pixel codes
        semantic = None
    tokens = to_lm_sequence(pixel, semantic, layout)
    assert int(tokens.max()) < layout.vocab_size
    assert torch.equal(from_lm_sequence(tokens, layout)[0], pixel)


def test_decode_with_another_checkpoint_is_refused(tmp_path):
    _, ckpt = saved_model(tmp_path / "model")
    other, other_ckpt = saved_model(tmp_path / "other", kind="per_depth")
    out = tmp_path / "codes.safetensors"
    assert main(["encode", str(ckpt), *map(str, [shard(tmp_path / "d.tar", 2)]), "--out", str(out),
                 "--device", "cpu"]) == 0
    with pytest.raises(ValueError, match="decode it with the checkpoint that encoded it"):
        load_codes(out, TokenLayout.from_config(other.cfg))
