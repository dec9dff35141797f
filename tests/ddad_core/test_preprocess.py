"""Preprocessing: one function for training, evaluation and serving (parity), PIL equivalence, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ddad_core.preprocess import ImageDecodeError, decode_image, load_image, preprocess, to_feature_input


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_output_shape_range_dtype(rgb_images):
    x = preprocess(rgb_images, image_size=32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def test_parity_file_bytes_array_tensor(tmp_path, rgb_images):
    """Training (file path), serving (encoded frame bytes) and in-memory arrays give identical tensors."""
    img = rgb_images[0]
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    from_file = preprocess(load_image(path), image_size=40)
    from_bytes = preprocess(decode_image(path.read_bytes()), image_size=40)
    from_array = preprocess(img, image_size=40)
    from_tensor = preprocess(torch.from_numpy(img), image_size=40)
    from_batch = preprocess(torch.from_numpy(img)[None], image_size=40)
    from_list = preprocess([img, rgb_images[1]], image_size=40)[:1]
    for other in (from_bytes, from_array, from_tensor, from_batch, from_list):
        assert torch.equal(from_file, other)


def test_gray_parity_and_expansion(tmp_path):
    gray = (np.arange(30 * 50) % 251).astype(np.uint8).reshape(30, 50)
    path = tmp_path / "g.png"
    Image.fromarray(gray).save(path)
    loaded = load_image(path)
    assert loaded.shape == (30, 50) and np.array_equal(loaded, gray)
    a = preprocess(gray, image_size=24)
    b = preprocess(gray[..., None], image_size=24)
    c = preprocess(np.repeat(gray[..., None], 3, -1), image_size=24)
    d = preprocess(decode_image(_png_bytes(gray)), image_size=24)
    assert a.shape == (1, 3, 24, 24)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])


def test_matches_pil_bilinear_antialias(rgb_images):
    """Same filter as the reference (PIL bilinear with antialias): within one grey level."""
    img = rgb_images[1]
    for size in (32, 96):
        ours = preprocess(img, image_size=size)[0]
        pil = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), dtype=np.float32)
        ref = torch.from_numpy(pil).permute(2, 0, 1) / 255 * 2 - 1
        assert (ours - ref).abs().max() <= 2 / 255 + 1e-6


def test_no_resize_is_exact(rgb_images):
    img = rgb_images[1]  # 64 x 64
    x = preprocess(img, image_size=64)[0]
    assert torch.allclose(x, torch.from_numpy(img).permute(2, 0, 1).float() / 255 * 2 - 1, atol=1e-6)


def test_device_argument(rgb_images):
    assert preprocess(rgb_images[0], image_size=16, device="cpu").device.type == "cpu"


@pytest.mark.parametrize(
    "bad, exc, word",
    [
        (np.zeros((8, 8, 3), np.float32), TypeError, "uint8"),
        (torch.zeros(8, 8, 3), TypeError, "uint8"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, "shape"),
        (np.zeros((8,), np.uint8), ValueError, "shape"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)], ValueError, "image 1"),
        ([], ValueError, "empty"),
        ("not an image", TypeError, "expected"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty"),
    ],
)
def test_bad_input(bad, exc, word):
    with pytest.raises(exc, match=word):
        preprocess(bad, image_size=16)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError, match="bad.png"):
        load_image(bad)
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "missing.png")
    truncated = _png_bytes(np.zeros((64, 64, 3), np.uint8) + 7)[:60]
    with pytest.raises(ImageDecodeError):
        decode_image(truncated)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    assert issubclass(ImageDecodeError, ValueError)


def test_rgba_and_16bit(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    assert decode_image(_png_bytes(rgba)).shape == (10, 12, 3)
    gray16 = (np.arange(100, dtype=np.uint16) * 600).reshape(10, 10)
    path = tmp_path / "g16.png"
    Image.fromarray(gray16).save(path)
    arr = load_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (10, 10) and arr.max() > 200


def test_to_feature_input():
    x = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    y = to_feature_input(x)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(y[0, :, 0, 0], (0 - mean) / std)
    assert torch.allclose(y[1, :, 0, 0], (1 - mean) / std)
    with pytest.raises(ValueError):
        to_feature_input(torch.zeros(1, 1, 2, 2))
