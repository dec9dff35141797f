"""The worker follows a bundle alias: a new version is loaded, verified and warmed beside the old one, then swapped in
between two batches.

Flow step: Redis alias record (``services._registry``) -> fetch from the object store (hash-checked) -> load and warm
up on a background thread while the loop keeps inferring with the model in force -> the loop swaps between batches
(``WorkerLoop._follow``). No frame waits for the load, none is lost; every record carries the ``model_version`` and
``bundle_hash`` that inferred it. Moving the alias back is the rollback (the old version is still in the cache). A
version that fails to load or verify is logged once and skipped; the worker keeps the model it has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from services._config import StartupError
from services._interval import Interval
from services._object_store import ObjectStoreUnavailable
from services._registry import BundleRegistry, RegistryError, split_alias


class BundleFollower:
    """Keeps a worker on the version its alias points at.

    Args:
        registry: Where aliases and bundles live.
        alias: ``NAME/ALIAS``.
        cache_dir: Where fetched bundles are kept.
        load: ``bundle_dir -> warmed-up detector`` (runs on the background thread).
        version: The version loaded at start-up.
        refresh_s: Least time between two checks of the alias.
        log: A structlog logger.
    """

    def __init__(
        self,
        registry: BundleRegistry,
        alias: str,
        cache_dir: str | Path,
        load: Callable[[Path], Any],
        version: str,
        refresh_s: float,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.alias = alias
        self.name, _ = split_alias(alias)
        self.cache_dir = Path(cache_dir)
        self.load = load
        self.version = version
        self.log = log
        self._check = Interval(refresh_s, clock)
        self._loading: threading.Thread | None = None
        self._ready: tuple[str, Any] | None = None
        self._failed: str | None = None
        self._lock = threading.Lock()

    def poll(self) -> tuple[str, Any] | None:
        """``(version, detector)`` once a new version is loaded and warm (take it between batches), else None.

        Starts the background load when the alias has moved; never blocks on it.
        """
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self.version = ready[0]
            return ready
        if self._loading is not None or not self._check.due():
            return None
        try:
            wanted = self.registry.alias_version(self.alias)
        except redis.RedisError as exc:
            self.log.warning("bundle_alias_check_failed", alias=self.alias, error=repr(exc))
            return None
        if wanted is None or wanted in (self.version, self._failed):
            return None
        self.log.info("bundle_loading", alias=self.alias, version=wanted, previous=self.version)
        self._loading = threading.Thread(target=self._load, args=(wanted,), name="bundle-load", daemon=True)
        self._loading.start()
        return None

    def _load(self, version: str) -> None:
        start = time.perf_counter()
        try:
            path = self.registry.fetch(self.name, version, self.cache_dir)
            detector = self.load(path)
        except (RegistryError, StartupError, ObjectStoreUnavailable, redis.RedisError, OSError, ValueError) as exc:
            self._failed = version
            self.log.error("bundle_rejected", alias=self.alias, version=version, error=str(exc), kept=self.version)
        else:
            self.log.info(
                "bundle_ready",
                alias=self.alias,
                version=version,
                model_version=detector.model_version,
                seconds=round(time.perf_counter() - start, 2),
            )
            with self._lock:
                self._ready = (version, detector)
        finally:
            self._loading = None
