"""Images of an alert, read from the object store and rendered for the page (the browser never sees a bucket URL).

Flow step: object store (``services._object_store``) -> dashboard -> browser. Layers of the detail view, all PNG:

* ``frame``: the captured frame, when the object store has it (claim-check frames ``frames/{camera}/{frame}.jpg``);
  otherwise a neutral grey canvas of the mask's size, and the page says the frame was not stored;
* ``heatmap``: the worker's colour anomaly map, unchanged;
* ``outline``: the mask's region outlines on transparent pixels, drawn at display scale in the style of the reports
  (``ddad_core.evaluation.visualize.draw_outline``: magenta with a dark edge);
* ``thumb``: frame + heatmap blend + outline in one small image, for the feed.

Pixels are RGB here (the visualiser's convention) and converted once, when encoded.
"""

from __future__ import annotations

import cv2
import numpy as np

from ddad_core.evaluation.visualize import PRED_COLOR, draw_outline
from services._object_store import ObjectNotFoundError, ObjectStore, stored_frame
from services.contracts.defects import DefectAlert

LAYERS = ("frame", "heatmap", "outline", "thumb")
_MIN_DISPLAY = 256
_UNDRAWN = (1, 1, 1)  # background of the outline canvas: neither the outline's colour nor its black edge


class ImageMissing(LookupError):
    """The alert has no such image (never written, expired, or not this store's)."""


def _decode(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ImageMissing("stored image is not decodable")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img


def _png(img: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _get(store: ObjectStore, uri: str | None) -> bytes:
    if not uri:
        raise ImageMissing("no URI in the alert")
    try:
        return store.get(uri)
    except (ObjectNotFoundError, ValueError) as exc:  # ValueError: ObjectRefusedError, not a URI of this store
        raise ImageMissing(str(exc)) from None


def _display_size(alert: DefectAlert, frame: np.ndarray | None, mask: np.ndarray | None) -> tuple[int, int]:
    if frame is not None:
        h, w = frame.shape[:2]
    elif mask is not None:
        h, w = mask.shape[:2]
    else:
        h = w = _MIN_DISPLAY
    scale = max(1.0, _MIN_DISPLAY / max(h, w))
    return int(round(w * scale)), int(round(h * scale))


def _big_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize((mask > 127).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def _outline(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGBA: the mask's outlines (the reports' style), transparent elsewhere."""
    canvas = np.full((size[1], size[0], 3), _UNDRAWN, np.uint8)
    canvas = draw_outline(canvas, _big_mask(mask, size), PRED_COLOR)
    drawn = (canvas != _UNDRAWN).any(axis=2)
    return np.dstack([canvas, np.where(drawn, 255, 0).astype(np.uint8)])


def render(store: ObjectStore, alert: DefectAlert, layer: str) -> bytes:
    """PNG bytes of one layer.

    Raises:
        ValueError: unknown layer. ImageMissing: the image the layer needs is not there.
        ObjectStoreUnavailable: the store failed (the caller answers 503).
    """
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r} (one of {', '.join(LAYERS)})")
    if layer == "heatmap":
        return _get(store, alert.heatmap_uri)
    frame_bytes = stored_frame(store, alert.camera_id, alert.frame_id)
    frame = _decode(frame_bytes) if frame_bytes is not None else None
    mask = _decode(_get(store, alert.mask_uri), cv2.IMREAD_GRAYSCALE) if alert.mask_uri else None
    size = _display_size(alert, frame, mask)
    base = (cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR) if frame is not None
            else np.full((size[1], size[0], 3), 128, np.uint8))
    if layer == "frame":
        return _png(base)
    if layer == "outline":
        if mask is None:
            raise ImageMissing("the alert has no mask")
        return _png(_outline(mask, size))
    # thumb: blend the heatmap in, draw the outline, shrink to 128 px wide
    img = base.copy()
    if alert.heatmap_uri:
        try:
            heat = cv2.resize(_decode(_get(store, alert.heatmap_uri)), size, interpolation=cv2.INTER_LINEAR)
            img = cv2.addWeighted(img, 0.55, heat, 0.45, 0)
        except ImageMissing:
            pass
    if mask is not None:
        img = draw_outline(np.ascontiguousarray(img), _big_mask(mask, size), PRED_COLOR)
    w = 128
    return _png(cv2.resize(img, (w, max(1, int(round(size[1] * w / size[0])))), interpolation=cv2.INTER_AREA))
