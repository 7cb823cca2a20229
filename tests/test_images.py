"""Image pre-/post-processing: every PIL mode and tensor layout to [-1, 1], transforms, decoding errors."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dualtoken_lite.datasets.images import (
    BadImageError,
    EvalTransform,
    TrainTransform,
    decode_image,
    load_image,
    preprocess,
    random_resized_crop_box,
    to_pil,
    to_uint8,
)

H, W = 6, 10


def rgb_array(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def image_of_mode(mode: str) -> Image.Image:
    """A random image of the given PIL mode (made from RGB data where PIL can convert, else from arrays)."""
    rng = np.random.default_rng(1)
    if mode in ("I;16", "I;16B"):
        return Image.fromarray(rng.integers(0, 65536, (H, W)).astype("<u2" if mode == "I;16" else ">u2"))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (H, W)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((H, W)).astype(np.float32))
    if mode == "P+transparency":
        p = Image.fromarray(rgb_array()).convert("P")
        p.info["transparency"] = 0
        return p
    base = Image.fromarray(rgb_array())
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = base.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, (H, W)).astype(np.uint8)))
        return rgba.convert(mode)
    return base.convert(mode)


MODES = ["1", "L", "P", "P+transparency", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr",
         "LAB", "HSV", "I", "I;16", "I;16B", "F"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_becomes_rgb_in_range(mode):
    x = preprocess(image_of_mode(mode))
    assert x.shape == (3, H, W) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.05  # the content survived (not a constant image)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("train", [False, True])
def test_every_pil_mode_through_transforms(mode, train):
    x = preprocess(image_of_mode(mode), size=8, train=train)
    assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("mode,value,expected", [
    ("I;16", 65535, 1.0), ("I;16", 0, -1.0), ("I;16", 128 * 257, 128 / 127.5 - 1), ("I;16B", 65535, 1.0),
    ("I", 65535, 1.0), ("I", 200, 200 / 127.5 - 1),  # I: 16-bit scale only when values exceed 255
    ("F", 1.0, 1.0), ("F", 0.5, 128 / 127.5 - 1), ("F", 255.0, 1.0), ("F", 51.0, 51 / 127.5 - 1),
])
def test_high_bit_depth_scaling(mode, value, expected):
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.full((4, 4), value, dtype=dtype))
    assert image.mode == mode
    assert torch.allclose(preprocess(image), torch.full((3, 4, 4), float(expected)), atol=1e-6)


@pytest.mark.parametrize("background,expected", [(None, 1.0), ((0, 0, 0), -1.0)])
def test_transparent_pixels_take_the_background(background, expected):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    x = preprocess(image) if background is None else preprocess(image, background=background)
    assert torch.allclose(x, torch.full((3, 4, 4), expected))
    half = Image.new("LA", (4, 4), (0, 128))  # half-transparent black on white -> mid grey
    assert torch.allclose(preprocess(half), torch.full((3, 4, 4), 127 / 127.5 - 1), atol=1 / 127.5)


def pil_and_tensors(a: np.ndarray):
    """The same RGB image as PIL, numpy HWC, torch uint8 HWC / CHW and float CHW in [0, 1]."""
    t = torch.from_numpy(a)
    return {"pil": Image.fromarray(a), "numpy_hwc": a, "uint8_hwc": t, "uint8_chw": t.permute(2, 0, 1),
            "float_chw": t.permute(2, 0, 1).float() / 255}


@pytest.mark.parametrize("kind", ["pil", "numpy_hwc", "uint8_hwc", "uint8_chw", "float_chw"])
@pytest.mark.parametrize("size", [None, "exact"])
def test_round_trip_is_exact_within_one_level(kind, size):
    a = rgb_array(3, 16, 16)
    x = pil_and_tensors(a)[kind]
    y = preprocess(x) if size is None else EvalTransform(16)(x)
    back = to_uint8(y).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(back - a.astype(int)).max() <= 1
    assert np.array_equal(np.asarray(to_pil(y)), back)


def test_tensor_layouts_and_channels_agree_with_pil():
    a = rgb_array(4)
    ref = preprocess(Image.fromarray(a))
    for x in pil_and_tensors(a).values():
        assert torch.allclose(preprocess(x), ref, atol=1e-6)
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    assert torch.allclose(preprocess(torch.from_numpy(grey)), preprocess(Image.fromarray(grey)), atol=1e-6)
    rgba = np.concatenate([a, np.random.default_rng(5).integers(0, 256, (H, W, 1), dtype=np.uint8)], axis=2)
    assert torch.allclose(preprocess(rgba), preprocess(Image.fromarray(rgba)), atol=1 / 127.5 + 1e-6)


@pytest.mark.parametrize("bad,match", [
    (torch.full((3, 4, 4), 2.0), r"\[0, 1\]"), (torch.full((3, 4, 4), -0.5), r"\[0, 1\]"),
    (torch.zeros(3, 4, 4, dtype=torch.int64), "dtype"), (torch.zeros(2, 3, 4, 4), "one image"),
    (torch.zeros(7, 9, 8), "channel axis"), ("not an image", "PIL image"),
])
def test_bad_tensor_inputs_are_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        preprocess(bad)


def test_eval_transform_resizes_shorter_side_and_crops_the_centre():
    a = rgb_array(6, 20, 40)  # h=20, w=40: the shorter side already equals the size, so only the crop acts
    x = EvalTransform(20)(Image.fromarray(a))
    assert x.shape == (3, 20, 20)
    assert np.array_equal(to_uint8(x).permute(1, 2, 0).numpy(), a[:, 10:30])
    tall = Image.new("RGB", (30, 90), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 20, 30, 70))  # white band around the middle third, the centre crop
    y = EvalTransform(10)(tall)
    assert y.shape == (3, 10, 10) and y.min() > 0.95
    assert EvalTransform(10)(torch.from_numpy(np.array(tall)).permute(2, 0, 1)).min() > 0.95


def test_train_transform_is_reproducible_per_rng_and_varies_across_rngs():
    image = Image.fromarray(rgb_array(7, 48, 64))
    t = TrainTransform(32)
    a, b = t(image, np.random.default_rng(1)), t(image, np.random.default_rng(1))
    c = t(image, np.random.default_rng(2))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    d = t(image)
    torch.manual_seed(0)
    assert torch.equal(d, t(image))


@pytest.mark.parametrize("h,w", [(50, 50), (30, 90), (90, 30), (7, 300)])
def test_random_resized_crop_box_keeps_scale_and_fits(h, w):
    for seed in range(50):
        top, left, ch, cw = random_resized_crop_box(h, w, np.random.default_rng(seed), scale=(0.9, 1.0))
        assert 0 <= top and 0 <= left and top + ch <= h and left + cw <= w and ch > 0 and cw > 0
        if 3 / 4 <= w / h <= 4 / 3:
            assert ch * cw >= 0.9 * h * w * 0.97  # rounding of the sides aside, at least 90 % of the area


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (PIL refuses it before decoding anything)."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8  # after the signature, the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    chunk = bytes(data[ihdr - 4 : ihdr + 13])
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


BAD_FILES = {
    "corrupt": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "decode"),
    "truncated": (jpeg_bytes(rgb_array(8, 64, 64))[:400], "decode"),
    "not_an_image": (b"a caption, not an image\n", "decode"),
    "bomb": (bomb_png(), "bomb"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_load_image_names_the_file_it_cannot_decode(tmp_path, name):
    data, kind = BAD_FILES[name]
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(data)
    with pytest.raises(BadImageError, match=name) as info:
        load_image(path)
    assert info.value.kind == kind and str(path) in str(info.value)


def test_load_image_decodes_good_files_and_refuses_missing_ones(tmp_path):
    a = rgb_array(9)
    (tmp_path / "ok.png").write_bytes(png_bytes(a))
    assert np.array_equal(np.asarray(load_image(tmp_path / "ok.png")), a)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_max_pixels_guard_is_configurable():
    data = png_bytes(rgb_array(10, 20, 20))
    assert decode_image(data).size == (20, 20)
    with pytest.raises(BadImageError) as info:
        decode_image(data, "sample-7", max_pixels=399)
    assert info.value.kind == "bomb" and "sample-7" in str(info.value)


def test_to_pil_handles_batches_and_rejects_bad_shapes():
    x = torch.rand(2, 3, 5, 7) * 2 - 1
    images = to_pil(x)
    assert len(images) == 2 and images[0].size == (7, 5) and images[0].mode == "RGB"
    assert to_uint8(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="shape"):
        to_pil(torch.zeros(1, 5, 5))
