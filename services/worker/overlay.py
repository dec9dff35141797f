"""The worker follows its product's nominal overlay: a new version is loaded and swapped in between two batches.

Flow step: Redis change record ``overlay:{product}`` (``services._overlays``) -> object store blob -> the
detector's ``with_overlay`` -> the next batch scores with the bundle's bank plus the overlay, and its records carry
``overlay_version``. No restart and no reload of the bundle: the networks and the bank are shared, only the taught
patches are new.

The check costs one ``HGET`` per ``WORKER_OVERLAY_REFRESH_S`` (1 s), so a mark takes effect within about a second
plus one batch once the teacher has published it. A version that cannot be used (blob missing or altered, taught on
another bundle) is logged once and skipped: the worker keeps scoring with the version it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from services._interval import Interval
from services._object_store import ObjectStoreUnavailable
from services._overlays import OverlayStore


class OverlayFollower:
    """Keeps a detector on the overlay version in force for one product.

    Args:
        overlays: Where the versions are published.
        product_id: The product the worker's bundle inspects.
        refresh_s: Least time between two checks of the version.
        log: A structlog logger.
        clock: Monotonic seconds (injectable).
    """

    def __init__(
        self,
        overlays: OverlayStore,
        product_id: str,
        refresh_s: float,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.overlays = overlays
        self.product_id = product_id
        self.log = log
        self._check = Interval(refresh_s, clock)
        self.version: int | None = None  # in force in the detector last returned
        self._rejected: int | None = None

    def reset(self) -> None:
        """After a bundle swap: apply the version in force to the new detector at the next check."""
        self.version, self._rejected = None, None
        self._check.reset()

    def follow(self, detector: Any) -> Any | None:
        """The detector with the new overlay if the version in force changed since the last swap, else None."""
        from ddad_core.overlay import OverlayError

        if not self._check.due():
            return None
        try:
            version = self.overlays.version(self.product_id)
            if version in (self.version, self._rejected):
                return None
            overlay = self.overlays.load(self.product_id)
            swapped = detector.with_overlay(overlay)
        except (redis.RedisError, ObjectStoreUnavailable) as exc:
            self.log.warning("overlay_check_failed", product_id=self.product_id, error=repr(exc))
            return None
        except OverlayError as exc:
            self._rejected = version
            self.log.error(
                "overlay_rejected", product_id=self.product_id, version=version, error=str(exc), kept=self.version
            )
            return None
        self.version = swapped.overlay_version
        self.log.info(
            "overlay_swapped",
            product_id=self.product_id,
            version=self.version,
            entries=len(overlay.entries) if overlay is not None else 0,
            patches=len(overlay.patches) if overlay is not None else 0,
        )
        return swapped
