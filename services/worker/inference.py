"""Frames -> pixels -> one batched ddad_core call -> per-frame values the sinks write.

Flow step: batch -> tensor (decode here, resize/normalise only in ``ddad_core.preprocess``) and the per-frame
post-processing the services need: PNG masks/heatmaps and bounding boxes of the defect regions (connected
components of the mask above a minimum area).
Decoding uses ``ddad_core.preprocess.decode_image``, the same decoder as fitting, so train and serve see the same
pixels (a preprocessing mismatch between training and serving is the classic failure).
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from services._config import StartupError
from services._object_store import ObjectNotFoundError, ObjectRefusedError, ObjectStore
from services.contracts.frames import Frame
from services.contracts.results import BoundingBox


class InvalidFrameError(ValueError):
    """A frame that parsed but cannot be inferred; ``reason`` goes into the DLQ header."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Detector(Protocol):
    """What the worker needs from ``ddad_core.pipeline.DDADPipeline``."""

    model_version: str
    bundle_hash: str

    def __call__(self, images: list[np.ndarray]) -> Any: ...


def compiled_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, and ``max_batch_size`` itself (each compiles once)."""
    sizes, size = {max_batch_size}, 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def load_detector(bundle_path: str, device: str = "auto", dtype: str | None = None, compile: bool = False,
                  max_batch_size: int = 8) -> Any:
    """Load the pipeline from a bundle (imported lazily: the ingestor and alerter never import torch).

    Raises:
        StartupError: the bundle is missing or broken, or the device is not there.
    """
    import torch

    from ddad_core.bundle import BundleError
    from ddad_core.pipeline import DDADPipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise StartupError(f"device {device!r} asked for, but torch sees no CUDA device here")
    kwargs: dict[str, Any] = {"device": device}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        pipe = DDADPipeline.from_bundle(bundle_path, **kwargs)
    except (BundleError, OSError) as exc:
        raise StartupError(str(exc)) from None
    if compile:
        pipe.optimize(compile=True, batch_sizes=compiled_batch_sizes(max_batch_size))
    return pipe


def warm_up(detector: Any, batch_size: int, image_size: int | None = None) -> float:
    """Run one batch at ``batch_size`` so kernels, allocator pools and lazy init are paid before readiness.

    Returns:
        Its wall time in seconds (the worker derives the "auto" frame-age limit from it).
    """
    compiled = bool(getattr(detector, "compiled_batch_sizes", ()))
    if compiled:
        detector.warmup(batch_size)  # compiles every batch size (untimed); the timed batch below is one plain batch
    start = time.perf_counter()
    if hasattr(detector, "warmup") and not compiled:
        detector.warmup(batch_size)
    else:
        size = image_size or int(getattr(detector, "image_size", 64))
        detector([np.zeros((size, size, 3), np.uint8)] * batch_size)
    return time.perf_counter() - start


def raw_threshold(detector: Any) -> float:
    """The calibrated raw image-score threshold (the raw score that normalises to 0.5; the heatmaps' mid-scale)."""
    thr = getattr(detector, "threshold", None)
    for candidate in (thr, getattr(thr, "image", None), getattr(thr, "image_threshold", None),
                      thr.get("image") if isinstance(thr, dict) else None,
                      thr.get("image_threshold") if isinstance(thr, dict) else None,
                      getattr(detector, "image_threshold", None)):
        if isinstance(candidate, int | float):
            return float(candidate)
        if hasattr(candidate, "item") and getattr(candidate, "numel", lambda: 1)() == 1:
            return float(candidate.item())
    return float("nan")


def decision_thresholds(detector: Any) -> tuple[float, float]:
    """``(threshold, threshold_raw)``: where the model's ``pred_label`` flips, on the normalised and the raw score.

    ``threshold`` is ``1 - sensitivity`` of the calibration (0.5 unless the bundle was calibrated at another
    sensitivity); ``threshold_raw`` is the same point on the raw scale (ddad_core.scoring.decision_threshold).
    """
    thr = getattr(detector, "threshold", None)
    if isinstance(thr, dict) and {"image_threshold", "image_min", "image_max"} <= thr.keys():
        from ddad_core.scoring import decision_threshold

        sensitivity = float(thr.get("sensitivity", 0.5))
        raw = decision_threshold(thr["image_threshold"], thr["image_min"], thr["image_max"], sensitivity)
        return round(1.0 - sensitivity, 6), float(raw)
    return 0.5, raw_threshold(detector)


def _image_size(data: bytes, encoding: str) -> tuple[int, int]:
    """``(width, height)`` from the image's own header, without decoding its pixels (PIL opens lazily).

    Raises:
        InvalidFrameError: ``undecodable`` (not an image, or not the header's encoding), ``too_large`` (PIL's own
            decompression-bomb guard fired).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked next
            with Image.open(io.BytesIO(data)) as img:
                fmt, size = img.format, img.size
    except Image.DecompressionBombError as exc:
        raise InvalidFrameError("too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as exc:
        raise InvalidFrameError("undecodable", f"not a readable image ({type(exc).__name__})") from None
    if fmt != _FORMATS[encoding]:
        raise InvalidFrameError("undecodable", f"frame says {encoding}, the bytes are {fmt or 'unknown'}")
    return size


_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def decode_frame(frame: Frame, store: ObjectStore | None, max_pixels: int) -> np.ndarray:
    """Fetch (claim check) and decode one frame, and check it against its own header.

    The pixel count is checked twice before anything is decoded: the header's, and the one in the image's own
    header (a 30000 x 30000 JPEG or PNG "bomb" is a few kB on the wire and gigabytes decoded).

    Raises:
        InvalidFrameError: reasons ``claim_check_missing``, ``claim_check_refused`` (a URI outside the configured
            store: another scheme, bucket, prefix or a local path), ``undecodable``, ``shape_mismatch``,
            ``too_large``.
        ObjectStoreUnavailable: the claim check could not be read now (the caller retries; not the frame's fault).
    """
    from ddad_core.preprocess import ImageDecodeError, decode_image

    if frame.width * frame.height > max_pixels:
        raise InvalidFrameError("too_large", f"{frame.width}x{frame.height} exceeds {max_pixels} pixels")
    data = frame.image
    if data is None:
        if store is None:
            raise InvalidFrameError("claim_check_missing", f"no object store configured for {frame.image_uri}")
        try:
            data = store.get(frame.image_uri)
        except ObjectRefusedError as exc:
            raise InvalidFrameError("claim_check_refused", str(exc)) from None
        except ObjectNotFoundError as exc:
            raise InvalidFrameError("claim_check_missing", f"{frame.image_uri}: no such object") from exc
    width, height = _image_size(data, frame.encoding)
    if width * height > max_pixels:
        raise InvalidFrameError("too_large", f"image is {width}x{height} (header says {frame.width}x"
                                             f"{frame.height}), over {max_pixels} pixels")
    if (width, height) != (frame.width, frame.height):
        raise InvalidFrameError("shape_mismatch", f"header says {frame.width}x{frame.height}, image is "
                                                  f"{width}x{height}")
    try:
        pixels = decode_image(data)
    except ImageDecodeError as exc:
        raise InvalidFrameError("undecodable", exc.reason) from exc
    # Never silently resize a frame that disagrees with its header: that is a broken camera or ingestor.
    if pixels.shape[:2] != (frame.height, frame.width):
        raise InvalidFrameError("shape_mismatch", f"header says {frame.width}x{frame.height}, image is "
                                                  f"{pixels.shape[1]}x{pixels.shape[0]}")
    return pixels


@dataclass
class FrameOutput:
    """Host-side values of one frame's result."""

    pred_score: float
    pred_score_raw: float
    pred_label: bool
    noise_step: int
    anomaly_map: np.ndarray  # (S, S) float32
    pred_mask: np.ndarray  # (S, S) bool


def split_output(output: Any) -> list[FrameOutput]:
    """Turn a batched ``InspectionOutput`` into per-frame host values (one device->host copy per tensor)."""
    arrays = output.to_numpy()
    return [FrameOutput(float(arrays["pred_score"][i]), float(arrays["pred_score_raw"][i]),
                        bool(arrays["pred_label"][i]), int(arrays["noise_step"][i]),
                        arrays["anomaly_map"][i].astype(np.float32), arrays["pred_mask"][i].astype(bool))
            for i in range(len(output))]


def encode_mask_png(mask: np.ndarray) -> bytes:
    """``(S, S)`` bool mask -> 8-bit PNG (0 / 255)."""
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding of the mask failed")
    return buf.tobytes()


def encode_heatmap_png(anomaly_map: np.ndarray, threshold: float) -> bytes:
    """Colour PNG of the raw map on a fixed scale: the calibrated threshold sits mid-scale (like pred_score's 0.5).

    A fixed scale, not per-image min-max, so a good frame looks cold and a defect looks hot.
    """
    scale = 2.0 * threshold if np.isfinite(threshold) and threshold > 0 else float(anomaly_map.max() or 1.0)
    gray = np.clip(anomaly_map / scale * 255.0, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.applyColorMap(gray, cv2.COLORMAP_JET))
    if not ok:
        raise RuntimeError("PNG encoding of the heatmap failed")
    return buf.tobytes()


def mask_to_boxes(mask: np.ndarray, width: int, height: int, min_area_fraction: float = 0.001,
                  max_regions: int = 16) -> list[BoundingBox]:
    """Bounding boxes of the connected regions (8-connectivity) of a ``(S, S)`` mask, in the frame's pixels.

    Regions covering less than ``min_area_fraction`` of the mask (specks of a noisy map) get no box; the rest,
    largest first and at most ``max_regions`` (a speckled mask must not produce a huge message), are scaled to
    ``width x height``.

    Example:
        >>> m = np.zeros((8, 8), bool); m[2:4, 4:8] = True; m[7, 0] = True
        >>> [b.model_dump() for b in mask_to_boxes(m, 16, 16, min_area_fraction=0.05)]
        [{'x': 8, 'y': 4, 'width': 8, 'height': 4, 'area_fraction': 0.125}]
    """
    if not mask.any():
        return []
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    total = float(mask.size)
    min_area = max(1.0, min_area_fraction * total)
    boxes = []
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        if area < min_area or len(boxes) == max_regions:
            break  # sorted by area: every later region is smaller
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = min(width, int(np.ceil((x + w) * sx))), min(height, int(np.ceil((y + h) * sy)))
        boxes.append(BoundingBox(x=x0, y=y0, width=max(1, x1 - x0), height=max(1, y1 - y0),
                                 area_fraction=round(area / total, 6)))
    return boxes
