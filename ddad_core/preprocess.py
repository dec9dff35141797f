"""Flow step 1, batch -> tensor: the one and only image preprocessing of the detector (docs/method.md section 2).

Training, evaluation and serving all call :func:`preprocess`, so a model never sees pixels prepared differently
from the ones it was fitted on (the "preprocess parity" requirement). The reference code resizes with PIL's
bilinear filter with antialiasing (torchvision ``Resize`` on PIL images) and keeps the result as uint8 before
``ToTensor``; we resize with ``F.interpolate(mode="bilinear", antialias=True)`` -- the same filter -- and round to
uint8 levels as PIL does, then map ``[0, 255] -> [-1, 1]``. The input is square (S x S, as in the reference, aspect
ratio not kept) unless a bundle was fitted with ``ddad fit --aspect keep``: then every image is resized to the
bundle's ``(H, W)``, whose ratio is the good images' typical one.

File and byte decoding (:func:`load_image`, :func:`decode_image`) share one decoder so that an image read from
disk during fitting and the same image arriving as a PNG/JPEG frame on the stream give identical tensors.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGENET_MEAN",
    "as_shape",
    "IMAGENET_STD",
    "ImageDecodeError",
    "decode_image",
    "load_image",
    "preprocess",
    "to_feature_input",
]

#: ImageNet statistics of the feature extractor (docs/method.md section 2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(ValueError):
    """An image file or byte string could not be decoded.

    Args:
        path: The file path, or a short description such as ``"<bytes>"`` for in-memory data.
        reason: What went wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")


# ---------------------------------------------------------------------------------------------------------------
# decoding


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image to uint8 ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB)."""
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit gray (some industrial datasets): scale to 8 bit instead of PIL's clipping "L" conversion.
        arr = np.asarray(img, dtype=np.int64)
        top = 65535 if img.mode.startswith("I;16") else max(int(arr.max()), 1)
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if img.mode == "LA":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    # P, RGBA, CMYK, YCbCr, ...: RGB (alpha is dropped, as torchvision's loader does).
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _decode(source, name: str) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.load()  # force the full decode here so truncated files fail now, not later
            return _pil_to_array(img)
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(name, "is a directory") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(name, f"{type(exc).__name__}: {exc}") from exc


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 pixels.

    Args:
        path: Any format PIL reads (PNG, JPEG, BMP, TIFF, ...).

    Returns:
        ``np.ndarray`` uint8, ``(H, W)`` for gray images or ``(H, W, 3)`` RGB otherwise.

    Raises:
        ImageDecodeError: The file is missing, not an image, or corrupt.
    """
    return _decode(Path(path), str(path))


def decode_image(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode an encoded image (PNG/JPEG/... bytes, e.g. a stream frame) exactly as :func:`load_image` does.

    Args:
        data: The encoded file content.

    Returns:
        ``np.ndarray`` uint8, ``(H, W)`` or ``(H, W, 3)``.

    Raises:
        ImageDecodeError: The bytes are empty or not a decodable image.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("<bytes>", "empty data")
    return _decode(io.BytesIO(bytes(data)), "<bytes>")


# ---------------------------------------------------------------------------------------------------------------
# tensor conversion


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    # Decoded/frombuffer arrays can be read-only; torch needs a writable buffer to share memory safely.
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")
    return torch.from_numpy(arr)


def _as_hwc_tensor(img, index: int | None) -> torch.Tensor:
    """Validate one image and return it as a uint8 ``(H, W, 3)`` torch tensor (gray expanded to 3 channels)."""
    where = "image" if index is None else f"image {index}"
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"{where}: expected dtype uint8, got numpy {img.dtype}")
        t = _from_numpy(img)
    elif isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8:
            raise TypeError(f"{where}: expected dtype uint8, got torch {img.dtype}")
        t = img
    else:
        raise TypeError(f"{where}: expected a numpy array or torch tensor, got {type(img).__name__}")
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    if t.ndim != 3 or t.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: expected shape (H, W), (H, W, 1) or (H, W, 3), got {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{where}: empty image of shape {tuple(t.shape)}")
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    return t


def _split_batch(images) -> list[torch.Tensor] | torch.Tensor:
    """Return either a uint8 ``(B, H, W, 3)`` tensor (same-size batch) or a list of ``(H, W, 3)`` tensors."""
    if isinstance(images, np.ndarray | torch.Tensor):
        is_np = isinstance(images, np.ndarray)
        dtype_ok = images.dtype == (np.uint8 if is_np else torch.uint8)
        if not dtype_ok:
            raise TypeError(f"images: expected dtype uint8, got {'numpy' if is_np else 'torch'} {images.dtype}")
        t = _from_numpy(images) if is_np else images
        if t.ndim == 4:
            if t.shape[-1] not in (1, 3):
                raise ValueError(
                    f"images: expected a batch of shape (B, H, W, 3) or (B, H, W, 1), got {tuple(t.shape)}"
                )
            if t.shape[0] == 0:
                raise ValueError("images: empty batch")
            return t.expand(-1, -1, -1, 3) if t.shape[-1] == 1 else t
        if not is_np and t.ndim == 3 and t.shape[-1] not in (1, 3, 4):
            # A 3-D torch tensor is a (B, H, W) gray batch unless its last axis looks like channels; a 3-D numpy
            # array is always one (H, W, C) image.
            if t.shape[0] == 0:
                raise ValueError("images: empty batch")
            return t.unsqueeze(-1).expand(-1, -1, -1, 3)
        return _as_hwc_tensor(t, None).unsqueeze(0)
    if isinstance(images, Sequence) and not isinstance(images, str | bytes):
        if len(images) == 0:
            raise ValueError("images: empty batch")
        return [_as_hwc_tensor(img, i) for i, img in enumerate(images)]
    raise TypeError(
        f"images: expected a uint8 numpy array, torch tensor, or a list of them, got {type(images).__name__}"
    )


def as_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """A model input size as ``(height, width)``: ``S`` means ``(S, S)``.

    Example:
        >>> as_shape(256), as_shape((416, 160))
        ((256, 256), (416, 160))
    """
    shape = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"image size must be a positive S or (H, W), got {size!r}")
    return shape


def _resize_normalise(batch: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, *shape)`` in [-1, 1]."""
    x = batch.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != shape:
        x = F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True)
        # PIL hands back uint8: rounding here keeps us within one grey level of the reference pipeline.
        x = x.round_().clamp_(0, 255)
    return x.mul_(2.0 / 255.0).sub_(1.0).contiguous()


def preprocess(
    images, image_size: int | tuple[int, int] = 256, device: torch.device | str | None = None
) -> torch.Tensor:
    """Turn uint8 images into the model's input tensor.

    Args:
        images: One uint8 image as ``np.ndarray``/``torch.Tensor`` of shape ``(H, W)``, ``(H, W, 1)`` or
            ``(H, W, 3)`` (RGB); a list/tuple of those (sizes may differ); or a uint8 batch ``(B, H, W, 3)``,
            ``(B, H, W, 1)`` or ``(B, H, W)``. Gray images are expanded to 3 channels.
        image_size: Output side S (every image is resized to S x S) or ``(H, W)`` (bilinear, antialiased).
        device: Where the result lives. The uint8 data is moved first (4x less to copy than floats).

    Returns:
        Float32 tensor ``(B, 3, S, S)`` (or ``(B, 3, H, W)``) with values in [-1, 1].

    Raises:
        TypeError: Not uint8, or not an array/tensor/list.
        ValueError: Wrong shape (e.g. 4 channels) or an empty batch.

    Example:
        >>> import numpy as np
        >>> preprocess(np.zeros((10, 20), np.uint8), image_size=32).shape
        torch.Size([1, 3, 32, 32])
        >>> float(preprocess(np.full((8, 8, 3), 255, np.uint8), image_size=8).min())
        1.0
    """
    shape = as_shape(image_size)
    batch = _split_batch(images)
    if isinstance(batch, torch.Tensor):
        return _resize_normalise(batch.to(device), shape)
    # Mixed sizes: resize one by one (outside any hot loop; the worker receives same-size frames).
    return torch.cat([_resize_normalise(img.to(device).unsqueeze(0), shape) for img in batch])


def to_feature_input(images: torch.Tensor) -> torch.Tensor:
    """Map model-space images in [-1, 1] to ImageNet-normalised feature-extractor input (docs/method.md section 2).

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1] (any float dtype/device).

    Returns:
        ``((images + 1) / 2 - mean) / std`` with ImageNet mean/std, same shape, dtype and device.

    Example:
        >>> x = to_feature_input(torch.zeros(1, 3, 2, 2))
        >>> round(float(x[0, 0, 0, 0]), 4)
        0.0655
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return ((images + 1) * 0.5 - mean) / std
