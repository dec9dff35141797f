"""Synthetic defects on good images (fit time, setting selection): a user has good parts only, so to choose among
sampler / map settings without retraining we damage held-out good images and keep the setting that best separates
them from the untouched ones.

1. **Perlin noise** (:func:`perlin_noise`): 2-D gradient noise on a lattice of ``scale`` cells per axis, quintic
   fade, scaled by sqrt(2) so values lie in about [-1, 1]; rotation samples the noise at rotated coordinates (no
   interpolation).
2. **Perlin mask** (:func:`perlin_mask`, DRAEM): noise at a random power-of-two scale per axis (cells at least 4 px),
   randomly rotated, thresholded at 0.5; redrawn until its area fraction is within bounds, after ``max_tries`` an
   ellipse, so the mask is never empty.
3. **Perlin paste** (:func:`perlin_paste`, DRAEM): inside the mask, ``(1 - o) * x + o * source`` with texture opacity
   o ~ U(0.2, 1) (DRAEM's beta = 1 - o in [0, 0.8]); the source (default: half the time a crop of the same image,
   otherwise fractal Perlin colour noise) gets 3 random strong augmentations (gamma, brightness, flip, rotation,
   posterize, invert, solarize, autocontrast, channel gain), as DRAEM does with its DTD textures.
4. **CutPaste** (:func:`cutpaste`): a rectangle of 2-15 % of the image area, aspect ratio 0.3-3.3 (log-uniform),
   colour-jittered (brightness, contrast, saturation, hue 0.1 as in the paper) and pasted elsewhere; ``scar=True``:
   a thin patch (width 2-16 px, at most half the length; length 10-25 % of the shorter side) at any angle.
5. **Visible, local.** Pixels outside the mask are exactly the input; the mean absolute change inside the mask is
   at least ``MIN_MEAN_CHANGE`` = 0.1 in [-1, 1] units (13 grey levels): a weaker draw is redone with stronger
   jitter / opacity, and after 4 draws the masked pixels are shifted by 0.6 away from the nearer end of the range.
   Grayscale images (equal channels) are processed as one channel and stay grayscale.
6. **Batch** (:func:`make_synthetic_defects`): one defect per image, kinds cycled, ``np.random.default_rng((seed,
   index))`` per image, so a defect depends only on the seed, its index and its image.

References: Zavrtanik, Kristan, Skocaj, "DRAEM -- a discriminatively trained reconstruction embedding for surface
anomaly detection", ICCV 2021; Li, Sohn, Yoon, Pfister, "CutPaste: self-supervised learning for anomaly detection
and localization", CVPR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "KINDS",
    "SUBTLE_KINDS",
    "MIN_MEAN_CHANGE",
    "SyntheticDefects",
    "cutpaste",
    "make_synthetic_defects",
    "perlin_mask",
    "perlin_noise",
    "perlin_paste",
]

#: Defect kinds of :func:`make_synthetic_defects`, in cycling order: the large, high-contrast pastes of DRAEM and
#: CutPaste ...
KINDS = ("perlin", "cutpaste", "scar")
#: ... and small, thin, low-contrast defects in the part's own texture (:func:`subtle_defect`).
SUBTLE_KINDS = ("pit", "scratch", "stain")
#: Minimum mean absolute change inside a mask, in [-1, 1] units (half of it in [0, 1] units).
MIN_MEAN_CHANGE = 0.1
_DRAWS = 4


def perlin_noise(shape: tuple[int, int], scale, rng: np.random.Generator, angle: float = 0.0) -> np.ndarray:
    """2-D Perlin noise.

    Args:
        shape: ``(H, W)``.
        scale: Lattice cells along each axis, an int or ``(cells_y, cells_x)`` (1: one smooth blob per image).
        rng: Random generator (draws the unit gradients).
        angle: Rotation of the noise field in radians.

    Returns:
        float32 ``(H, W)``, values in about [-1, 1], zero at lattice points.
    """
    h, w = shape
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    py, px = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * py - s * px) * (sy / h), (s * py + c * px) * (sx / w)
    u, v = u - u.min(), v - v.min()
    i0, j0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fy, fx = u - i0, v - j0
    theta = rng.uniform(0.0, 2 * math.pi, size=(int(i0.max()) + 2, int(j0.max()) + 2))
    gy, gx = np.sin(theta), np.cos(theta)

    def corner(di: int, dj: int) -> np.ndarray:
        return gy[i0 + di, j0 + dj] * (fy - di) + gx[i0 + di, j0 + dj] * (fx - dj)

    wy, wx = fy**3 * (fy * (fy * 6 - 15) + 10), fx**3 * (fx * (fx * 6 - 15) + 10)
    top = corner(0, 0) + wx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + wx * (corner(1, 1) - corner(1, 0))
    return (math.sqrt(2) * (top + wy * (bottom - top))).astype(np.float32)


def _ellipse(shape: tuple[int, int], rng: np.random.Generator, fraction: float) -> np.ndarray:
    h, w = shape
    r = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    a = min(math.sqrt(fraction * h * w * r / math.pi), h / 2 - 0.5)
    b = min(math.sqrt(fraction * h * w / (r * math.pi)), w / 2 - 0.5)
    cy = rng.uniform(a, h - 1 - a) if h - 1 > 2 * a else (h - 1) / 2
    cx = rng.uniform(b, w - 1 - b) if w - 1 > 2 * b else (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - cy) / max(a, 0.5)) ** 2 + ((xx - cx) / max(b, 0.5)) ** 2 <= 1.0
    mask[int(round(cy)), int(round(cx))] = True
    return mask


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    min_scale: int = 2,
    max_scale: int = 32,
    threshold: float = 0.5,
    min_area_fraction: float = 0.01,
    max_area_fraction: float = 0.4,
    rotate: bool = True,
    max_tries: int = 20,
) -> np.ndarray:
    """DRAEM-style blob mask: thresholded Perlin noise (scales ``2**k`` in [min_scale, max_scale] per axis, capped
    at ``side // 4`` cells), redrawn until its area fraction is within bounds; then an ellipse of the bounds'
    geometric-mean area.

    Returns:
        bool ``(H, W)``, never empty.
    """
    h, w = shape
    lo = max(0, math.ceil(math.log2(max(min_scale, 1))))
    his = [max(lo, int(math.floor(math.log2(max(1, min(max_scale, side // 4)))))) for side in (h, w)]
    for _ in range(max_tries):
        scale = (2 ** int(rng.integers(lo, his[0] + 1)), 2 ** int(rng.integers(lo, his[1] + 1)))
        angle = rng.uniform(-math.pi / 2, math.pi / 2) if rotate else 0.0
        mask = perlin_noise(shape, scale, rng, angle) > threshold
        if min_area_fraction <= mask.mean() <= max_area_fraction and mask.any():
            return mask
    return _ellipse(shape, rng, math.sqrt(max(min_area_fraction, 1e-4) * max_area_fraction))


# ---------------------------------------------------------------------------------------------------------------
# pixel helpers: work on float32 (H, W, C) in [0, 1], C = 1 for grayscale images


def _to_unit(image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        x = np.clip(a.astype(np.float32), 0.0, 1.0)
    else:
        raise TypeError(f"image: expected uint8 or float in [0, 1], got {a.dtype}")
    x = x[..., None] if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise ValueError(f"image: expected shape (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    if x.shape[-1] == 3 and np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2]):
        x = x[..., :1]
    return x


def _from_unit(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    y = np.clip(y, 0.0, 1.0)
    if like.ndim == 2:
        y = y[..., 0]
    elif y.shape[-1] != like.shape[-1]:
        y = np.repeat(y, like.shape[-1], axis=-1)
    return np.rint(y * 255).astype(np.uint8) if like.dtype == np.uint8 else y.astype(like.dtype)


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if x.shape[:2] == tuple(shape):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).numpy()


def _visible(image, rng: np.random.Generator, draw) -> tuple[np.ndarray, np.ndarray]:
    """Run ``draw(x, rng, attempt) -> (y, mask)`` until the defect is visible; compose outside-mask pixels exactly."""
    orig = np.asarray(image)
    x = _to_unit(orig)
    unit = 255.0 if orig.dtype == np.uint8 else 1.0
    for attempt in range(_DRAWS + 1):
        if attempt < _DRAWS:
            y, mask = draw(x, rng, attempt)
        else:  # fallback: a plain shift of 0.3 ([0, 1] units) away from the nearer end of the range
            y = np.where(x < 0.5, x + 0.3, x - 0.3)
        keep = mask if orig.ndim == 2 else mask[..., None]
        out = np.where(keep, _from_unit(y, orig), orig)
        diff = np.abs(out.astype(np.float64) - orig.astype(np.float64))[mask] / unit
        if diff.mean() >= 1.05 * MIN_MEAN_CHANGE / 2:
            break
    return out, mask


def _augment(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Three distinct strong augmentations, DRAEM-like."""
    square = src.shape[0] == src.shape[1]
    ops = [
        lambda x: x ** rng.uniform(0.5, 2.0),
        lambda x: x * rng.uniform(0.8, 1.2) + rng.uniform(-0.3, 0.3),
        lambda x: x[::-1] if rng.random() < 0.5 else x[:, ::-1],
        lambda x: np.rot90(x, int(rng.integers(1, 4)) if square else 2),
        lambda x: np.floor(x * (b := 2 ** int(rng.integers(1, 4)))) / b,
        lambda x: 1.0 - x,
        lambda x: np.where(x > rng.uniform(0.3, 0.7), 1.0 - x, x),
        lambda x: (x - x.min()) / max(float(x.max() - x.min()), 1e-6),
        lambda x: x * rng.uniform(0.5, 1.5, size=x.shape[-1]),
    ]
    for k in rng.choice(len(ops), size=3, replace=False):
        src = np.clip(ops[k](src), 0.0, 1.0)
    return np.ascontiguousarray(src, dtype=np.float32)


def _default_source(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w, c = x.shape
    if rng.random() < 0.5:  # another region of the same image, resized to full size
        ch, cw = max(2, round(h * rng.uniform(0.25, 0.75))), max(2, round(w * rng.uniform(0.25, 0.75)))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return _resize(x[top : top + ch, left : left + cw], (h, w))
    base = int(rng.integers(1, 4))  # fractal Perlin noise, one field per channel
    tex = np.stack([sum(0.5**o * perlin_noise((h, w), 2 ** (base + o), rng) for o in range(3)) for _ in range(c)], -1)
    lo, hi = tex.min(axis=(0, 1)), tex.max(axis=(0, 1))
    return (tex - lo) / np.maximum(hi - lo, 1e-6)


def perlin_paste(image, rng: np.random.Generator, source=None) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style anomaly: a strongly augmented texture blended into a Perlin mask.

    Args:
        image: uint8 or float in [0, 1], ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
        rng: Random generator.
        source: Optional texture (same conventions as ``image``, any size: resized), augmented like the default.

    Returns:
        ``(defect_image, mask)``: same dtype and shape as ``image``; bool ``(H, W)``.
    """
    x = _to_unit(image)
    mask = perlin_mask(x.shape[:2], rng)
    src = None
    if source is not None:
        src = _resize(_to_unit(source), x.shape[:2])
        src = src.mean(-1, keepdims=True) if x.shape[-1] == 1 else np.broadcast_to(src, x.shape)

    def draw(x, rng, attempt):
        tex = _augment(_default_source(x, rng) if src is None else src, rng)
        opacity = rng.uniform(min(0.2 + 0.25 * attempt, 0.9), 1.0)
        return (1.0 - opacity) * x + opacity * tex, mask

    return _visible(image, rng, draw)


def _jitter(p: np.ndarray, rng: np.random.Generator, a: float) -> np.ndarray:
    """torchvision-ColorJitter-like brightness, contrast, saturation, hue (the last two on colour only)."""
    p = p * rng.uniform(1 - a, 1 + a)
    m = p.mean()
    p = (p - m) * rng.uniform(1 - a, 1 + a) + m
    if p.shape[-1] == 3:
        g = p.mean(-1, keepdims=True)
        p = (p - g) * rng.uniform(1 - a, 1 + a) + g
        t, k = 2 * math.pi * rng.uniform(-a, a), np.full(3, 1 / math.sqrt(3))
        cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rot = math.cos(t) * np.eye(3) + math.sin(t) * cross + (1 - math.cos(t)) * np.outer(k, k)
        p = p @ rot.T.astype(np.float32)
    return np.clip(p, 0.0, 1.0)


def _paste(x: np.ndarray, rng: np.random.Generator, ph: int, pw: int, angle: float, jitter: float):
    """Cut an axis-aligned ``ph x pw`` patch, jitter it, paste it rotated by ``angle`` at a random place."""
    h, w, _ = x.shape
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = _jitter(x[sy : sy + ph, sx : sx + pw], rng, jitter)
    c, s = math.cos(angle), math.sin(angle)
    ey, ex = (abs(c) * ph + abs(s) * pw) / 2, (abs(s) * ph + abs(c) * pw) / 2
    if angle == 0.0:  # integer placement
        dy, dx = rng.integers(0, h - ph + 1) + ph / 2, rng.integers(0, w - pw + 1) + pw / 2
    else:
        dy = rng.uniform(ey, h - ey) if h > 2 * ey else h / 2
        dx = rng.uniform(ex, w - ex) if w > 2 * ex else w / 2
    oy, ox = np.mgrid[0:h, 0:w].astype(np.float64)
    oy, ox = oy - dy, ox - dx
    pr = np.floor(c * oy + s * ox + ph / 2).astype(np.int64)
    pc = np.floor(-s * oy + c * ox + pw / 2).astype(np.int64)
    mask = (pr >= 0) & (pr < ph) & (pc >= 0) & (pc < pw)
    y = x.copy()
    y[mask] = patch[pr[mask], pc[mask]]
    return y, mask


def cutpaste(image, rng: np.random.Generator, scar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste (rectangle) or CutPaste-scar defect.

    Args:
        image: uint8 or float in [0, 1], ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
        rng: Random generator.
        scar: Thin long rotated patch instead of a rectangle.

    Returns:
        ``(defect_image, mask)``: same dtype and shape as ``image``; bool ``(H, W)``.
    """
    h, w = np.asarray(image).shape[:2]

    def draw(x, rng, attempt):
        if scar:
            length = min(max(2, round(rng.uniform(0.10, 0.25) * min(h, w))), w)
            width = min(int(rng.integers(2, 17)), max(1, length // 2), h)
            angle = rng.uniform(-math.pi / 2, math.pi / 2)
            return _paste(x, rng, width, length, angle, 0.1 * (1 + attempt))
        area = rng.uniform(0.02, 0.15) * h * w
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        ph = int(np.clip(round(math.sqrt(area * ratio)), 1, h))
        pw = int(np.clip(round(math.sqrt(area / ratio)), 1, w))
        return _paste(x, rng, ph, pw, 0.0, 0.1 * (1 + attempt))

    return _visible(image, rng, draw)


def _soft_blob(shape: tuple[int, int], rng: np.random.Generator, area: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged irregular spot of about ``area`` (fraction of the image): ``(weight in [0, 1], mask)``."""
    h, w = shape
    radius = max(1.5, math.sqrt(area * h * w / math.pi))
    cy, cx = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wobble = 1 + 0.35 * perlin_noise(shape, max(2, int(min(h, w) / (2 * radius))), rng)
    r = np.hypot((yy - cy) / wobble, (xx - cx) / wobble) / radius
    weight = np.clip(1.5 - r, 0.0, 1.0) ** 2
    return weight, weight > 0.25


def _thin_line(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin, slightly curved line (1-3 px, 5-25 % of the shorter side): ``(weight, mask)``."""
    h, w = shape
    length = rng.uniform(0.05, 0.25) * min(h, w)
    width = rng.uniform(1.0, 3.0)
    cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
    angle, bend = rng.uniform(0, math.pi), rng.uniform(-0.3, 0.3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle) - bend * u**2 / max(length, 1.0)
    along = np.clip(1.0 - np.abs(u) / (length / 2), 0.0, 1.0) > 0
    weight = np.where(along, np.clip(1.0 - np.abs(v) / width, 0.0, 1.0), 0.0).astype(np.float32)
    return weight, weight > 0.25


def subtle_defect(image, rng: np.random.Generator, kind: str = "pit") -> tuple[np.ndarray, np.ndarray]:
    """Defects like real ones on machined and rolled surfaces: small, thin, low-contrast, in the part's own texture.

    * ``pit``: a soft-edged spot of 0.05-0.5 % of the image, darker (or brighter) by a factor 0.7-0.88 (1.12-1.3)
      of the local intensity, so the texture shows through;
    * ``scratch``: a thin, slightly curved line, shifted by 6-15 % of the range, bright or dark;
    * ``stain``: a soft spot of 0.5-3 % of the image, 6-15 % lighter or darker, slightly tinted on colour images.

    The mask is where the change reaches a quarter of its full strength; pixels outside are unchanged.
    """
    x = _to_unit(image)
    h, w, c = x.shape
    if kind == "pit":
        weight, mask = _soft_blob((h, w), rng, rng.uniform(0.0005, 0.005))
        factor = rng.uniform(0.7, 0.88) if rng.random() < 0.7 else rng.uniform(1.12, 1.3)
        y = x * (1 + (factor - 1) * weight[..., None])
    elif kind == "scratch":
        weight, mask = _thin_line((h, w), rng)
        y = x + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.06, 0.15) * weight[..., None]
    elif kind == "stain":
        weight, mask = _soft_blob((h, w), rng, rng.uniform(0.005, 0.03))
        direction = (1 if rng.random() < 0.5 else -1) + 0.3 * rng.uniform(-1, 1, size=c).astype(np.float32)
        y = x + rng.uniform(0.06, 0.15) * weight[..., None] * direction
    else:
        raise ValueError(f"unknown subtle defect kind {kind!r}; choose pit, scratch or stain")
    orig = np.asarray(image)
    keep = mask if orig.ndim == 2 else mask[..., None]
    return np.where(keep, _from_unit(y, orig), orig), mask


_MAKERS = {
    "perlin": perlin_paste,
    "cutpaste": cutpaste,
    "scar": lambda im, rng: cutpaste(im, rng, scar=True),
    "pit": lambda im, rng: subtle_defect(im, rng, "pit"),
    "scratch": lambda im, rng: subtle_defect(im, rng, "scratch"),
    "stain": lambda im, rng: subtle_defect(im, rng, "stain"),
}


@dataclass
class SyntheticDefects:
    """Damaged copies of good images.

    Attributes:
        images: Same type, shape and dtype as the input (tensor in [-1, 1], or a list of uint8 arrays).
        masks: bool ``(N, H, W)`` tensor (tensor input, on its device) or a list of bool ``(H, W)`` arrays.
        kinds: The defect kind of each image.
    """

    images: torch.Tensor | list[np.ndarray]
    masks: torch.Tensor | list[np.ndarray]
    kinds: list[str]


def make_synthetic_defects(images, seed: int, kinds: Sequence[str] = KINDS) -> SyntheticDefects:
    """One synthetic defect per image, kinds cycled in order.

    Args:
        images: Float tensor ``(N, 3, S, S)`` in [-1, 1] (``ddad_core.preprocess.preprocess`` output) or a list
            of uint8 ``(H, W)`` / ``(H, W, 3)`` arrays.
        seed: Non-negative int; image ``i`` uses ``np.random.default_rng((seed, i))``.
        kinds: Subset of :data:`KINDS` + :data:`SUBTLE_KINDS`, in cycling order.

    Returns:
        :class:`SyntheticDefects`.
    """
    kinds = list(kinds)
    if not kinds or any(k not in _MAKERS for k in kinds):
        raise ValueError(f"kinds: expected a non-empty subset of {KINDS + SUBTLE_KINDS}, got {kinds}")
    is_tensor = isinstance(images, torch.Tensor)
    if is_tensor:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images: expected a float tensor (N, 3, S, S), got {images.dtype} {tuple(images.shape)}")
        items = list(((images.detach().cpu().float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy())
    elif isinstance(images, Sequence) and not isinstance(images, str | bytes):
        items = list(images)
        for i, img in enumerate(items):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                raise TypeError(f"image {i}: expected a uint8 numpy array")
    else:
        raise TypeError(f"images: expected a float tensor or a list of uint8 arrays, got {type(images).__name__}")
    if not items:
        raise ValueError("images: empty batch")
    used = [kinds[i % len(kinds)] for i in range(len(items))]
    made = [_MAKERS[k](x, np.random.default_rng((seed, i))) for i, (k, x) in enumerate(zip(used, items, strict=True))]
    outs, masks = [y for y, _ in made], [m for _, m in made]
    if not is_tensor:
        return SyntheticDefects(outs, masks, used)
    y = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).mul(2).sub(1).to(images.device, images.dtype)
    m = torch.from_numpy(np.stack(masks)).to(images.device)
    return SyntheticDefects(torch.where(m[:, None], y, images), m, used)
