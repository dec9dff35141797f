"""The pictures a quality engineer reads: a heatmap blended over the part, outlines, a colour bar (report and predict).

One style everywhere (``ddad eval --report`` and ``ddad predict``):

* the heatmap (JET, on the normalised score scale where 0.5 is the pixel threshold) is alpha-blended over the image
  like anomalib's visualiser, but with a per-pixel opacity that rises with the score: where the part is normal it
  stays visible, where the score is high the colour covers it (``MAX_ALPHA`` at and above ``FULL_AT``);
* the predicted defect outline is magenta (``PRED_COLOR``), the true one (evaluation only) white (``TRUE_COLOR``), each
  with a dark edge so it stays visible on bright and dark parts;
* a colour bar on the right gives the score scale, with the threshold marked.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "FULL_AT",
    "MAX_ALPHA",
    "PRED_COLOR",
    "TRUE_COLOR",
    "blend_heatmap",
    "colorbar",
    "colorbar_width",
    "draw_outline",
    "jet",
    "render_overlay",
    "to_rgb",
]

#: Outline colours (RGB): magenta is not in the JET colour map; white with a dark edge reads on any part.
PRED_COLOR = (255, 0, 255)
TRUE_COLOR = (255, 255, 255)
#: Heatmap opacity: 0 below ``FADE_FROM``, rising linearly to ``MAX_ALPHA`` at ``FULL_AT`` (normalised score).
FADE_FROM, FULL_AT, MAX_ALPHA = 0.2, 0.7, 0.65


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` gray or ``(H, W, 1|3)`` uint8 as a C-contiguous ``(H, W, 3)`` RGB array (OpenCV draws only on
    those; a channels-last view of a tensor is not one)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected a gray or RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def jet(values: np.ndarray) -> np.ndarray:
    """RGB uint8 colours ``values.shape + (3,)`` of the JET colour map for ``values`` in [0, 1] (OpenCV's table).

    Example:
        >>> jet(np.array([0.0, 1.0])).tolist()
        [[0, 0, 128], [128, 0, 0]]
    """
    values = np.asarray(values, dtype=np.float64)
    codes = (np.clip(values, 0, 1) * 255).round().astype(np.uint8).reshape(1, -1)
    colored = cv2.cvtColor(cv2.applyColorMap(codes, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return colored.reshape(values.shape + (3,))


def blend_heatmap(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """JET heatmap of ``heat`` (normalised score in [0, 1]) over ``image`` with an opacity that rises with the score.

    Example:
        >>> image = np.full((2, 2, 3), 100, np.uint8)
        >>> out = blend_heatmap(image, np.array([[0.0, 0.1], [0.9, 1.0]]))
        >>> bool((out[0] == 100).all()), bool((out[1] != 100).any())
        (True, True)
    """
    image = to_rgb(image)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat {heat.shape} and image {image.shape[:2]} differ in size")
    alpha = MAX_ALPHA * np.clip((heat - FADE_FROM) / (FULL_AT - FADE_FROM), 0.0, 1.0)[..., None]
    out = image.astype(np.float32) * (1 - alpha) + jet(heat).astype(np.float32) * alpha
    return np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))


def draw_outline(image: np.ndarray, mask: np.ndarray | None, color: tuple[int, int, int]) -> np.ndarray:
    """Draw the outer outline of ``mask`` on ``image`` (in place, and returned) with a 1 px dark edge."""
    if mask is None or not mask.any():
        return image
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    width = max(1, round(min(image.shape[:2]) / 128))
    cv2.drawContours(image, contours, -1, (0, 0, 0), width + 2)
    cv2.drawContours(image, contours, -1, color, width)
    return image


def colorbar_width(height: int, width: int | None = None) -> int:
    """Width of the colour bar strip drawn beside an image of ``height`` x ``width`` pixels (its text is sized by
    the shorter side, so a tall narrow part does not get a bar as wide as itself)."""
    return max(48, round(0.24 * min(height, width or height)))


def colorbar(height: int, threshold: float | None = 0.5, image_width: int | None = None) -> np.ndarray:
    """A vertical colour bar ``(height, colorbar_width(height, image_width), 3)``: score 1 at the top, 0 at the
    bottom, numbered ticks, and the threshold (normalised scale) as a black line labelled ``thr``."""
    width = colorbar_width(height, image_width)
    ref = min(height, image_width or height)
    strip = np.full((height, width, 3), 255, np.uint8)
    pad = max(6, height // 32)
    top, bottom = pad, height - pad
    bar_x0, bar_x1 = max(3, width // 12), max(3, width // 12) + max(8, width // 5)
    values = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(bar_x1 - bar_x0, axis=1)
    strip[top:bottom, bar_x0:bar_x1] = jet(values)
    cv2.rectangle(strip, (bar_x0, top), (bar_x1 - 1, bottom - 1), (80, 80, 80), 1)
    scale = max(0.3, ref / 700)
    thick = 1 if ref < 600 else 2

    def y_of(value: float) -> int:
        return int(round(top + (1.0 - value) * (bottom - 1 - top)))

    def label(text: str, value: float, color=(30, 30, 30)) -> None:
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y = min(max(y_of(value) + th // 2, th + 1), height - 2)
        cv2.putText(strip, text, (bar_x1 + 4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)

    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        if threshold is not None and abs(value - threshold) < 0.09:
            continue  # the threshold's label takes this place
        cv2.line(strip, (bar_x1, y_of(value)), (bar_x1 + 2, y_of(value)), (30, 30, 30), 1)
        label(f"{value:g}", value)
    if threshold is not None and 0.0 <= threshold <= 1.0:
        y = y_of(threshold)
        cv2.line(strip, (bar_x0 - 2, y), (bar_x1 + 2, y), (0, 0, 0), max(2, thick + 1))
        label("thr", threshold, (0, 0, 0))
    return strip


def render_overlay(
    image: np.ndarray,
    heat: np.ndarray,
    pred_mask: np.ndarray | None = None,
    true_mask: np.ndarray | None = None,
    threshold: float | None = 0.5,
    size: int | tuple[int, int] | None = None,
    with_colorbar: bool = True,
) -> np.ndarray:
    """The overlay picture: heatmap blended over the image, predicted and true outlines, colour bar on the right.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` uint8.
        heat: ``(h, w)`` normalised score in [0, 1] (0.5 = pixel threshold); resized bilinearly to the image.
        pred_mask: ``(h, w)`` bool predicted mask (nearest-resized), outlined in ``PRED_COLOR``.
        true_mask: ``(h, w)`` bool ground truth, outlined in ``TRUE_COLOR``.
        threshold: Where the colour bar marks the threshold (normalised scale), None for no mark.
        size: Output side ``S`` or ``(width, height)`` of the picture part (default: the image's own size); the
            outlines are drawn after resizing, so they stay one line wide.
        with_colorbar: Append the colour bar strip.

    Returns:
        ``(H', W' + colorbar_width(H', W'), 3)`` uint8 RGB (without the bar: ``(H', W', 3)``).
    """
    image = to_rgb(image)
    if size is not None:
        width, height = (size, size) if isinstance(size, int) else size
        if (width, height) != (image.shape[1], image.shape[0]):
            shrink = width < image.shape[1]
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    height, width = image.shape[:2]

    def fit(mask):
        if mask is None or mask.shape == (height, width):
            return mask
        return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)

    if heat.shape != (height, width):
        heat = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    out = blend_heatmap(image, heat)
    draw_outline(out, fit(true_mask), TRUE_COLOR)
    draw_outline(out, fit(pred_mask), PRED_COLOR)
    if with_colorbar:
        out = np.concatenate([out, colorbar(height, threshold, image_width=width)], axis=1)
    return out
