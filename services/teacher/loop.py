"""Marks -> overlay versions: teach a false alarm, guard it against every confirmed defect, undo a withdrawn one.

Flow step: Kafka ``feedback`` (the dashboard's marks) -> ``Teacher.apply`` -> object store + Redis
(``services._overlays``) -> workers swap to the new version between batches.

The latest mark of an alert wins, as everywhere else:

* ``false_alarm``: the kept frame (``frames/{camera}/{frame}``: a claim check, or the bytes the worker kept because
  the frame was flagged) is scored with the overlay in force and its patches above the image threshold become a
  candidate entry. **Guard**: every confirmed defect of the product is re-scored with the candidate; if any that the
  overlay in force flags would no longer be flagged (or its frame is not kept, so it cannot be checked), the change
  is refused and the refusal, naming those alert ids, is stored for the dashboard. Otherwise the candidate is
  published as the next version. (A confirmed defect below the model's threshold anyway, raised by an alert rule
  set lower, cannot be silenced by a change and blocks none.)
* ``confirm_defect``: the alert joins the guard's set; if it had taught the overlay, its entry is removed.
* ``withdraw`` (the dashboard's "Undo teaching"): takes back the alert's verdict: its overlay entry is removed, it
  leaves the guard's set.
* ``acknowledge`` carries no verdict and changes nothing.

Replays are harmless: an alert already taught is not taught twice, an undo of an entry that is gone changes
nothing, so the consumer commits after applying (at least once).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import TopicPartition
from pydantic import ValidationError

from services import _observability as obs
from services._kafka import commit_offsets
from services._object_store import ObjectStore, stored_frame
from services._outage import DependencyGuard
from services._overlays import OverlayConflict, OverlayStore
from services._serve import run_steps
from services.contracts.feedback import FeedbackRecord

SERVICE = "teacher"


@dataclass(frozen=True)
class Outcome:
    """What one mark did to the overlay."""

    alert_id: str
    result: str  # taught | refused | undone | confirmed | unchanged | other_product
    version: int  # the overlay version in force afterwards
    missed: list[str] = field(default_factory=list)  # refused: the confirmed defects the change would silence
    reason: str = ""


class Teacher:
    """Applies marks of one product to its overlay.

    Args:
        pipe: The product's pipeline (``DDADPipeline`` of the bundle its workers serve).
        overlays: Where versions, confirmed defects and refusals live.
        store: The object store holding the kept frames.
        product_id: The product.
        region: What a false alarm teaches (``mask`` or ``frame``; ``ddad_core.overlay.frame_patches``).
        log: A structlog logger.

    Raises:
        ddad_core.overlay.OverlayError: the overlay in force was taught on another bundle, or cannot be read.
    """

    def __init__(
        self, pipe: Any, overlays: OverlayStore, store: ObjectStore, product_id: str, region: str, log: Any
    ) -> None:
        from ddad_core.overlay import DefectGuard, NominalOverlay

        self.base = pipe.with_overlay(None)
        self.overlays = overlays
        self.store = store
        self.product_id = product_id
        self.region = region
        self.log = log
        self.overlay = overlays.load(product_id) or NominalOverlay(
            product_id=product_id, bundle_hash=pipe.bundle_hash, channels=pipe.patch_knn.bank.shape[1]
        )
        self.pipe = self.base.with_overlay(self.overlay)
        self.guard = DefectGuard(self.base)

    def apply(self, mark: FeedbackRecord) -> Outcome:
        """Apply one mark (see the module docstring); retried by the caller through outages."""
        if mark.product_id != self.product_id:
            return Outcome(mark.alert_id, "other_product", self.overlay.version)
        if mark.action == "acknowledge":
            return Outcome(mark.alert_id, "unchanged", self.overlay.version)
        if mark.action == "confirm_defect":
            self.overlays.confirm(self.product_id, mark.alert_id, mark.camera_id, mark.frame_id)
        else:
            self.overlays.unconfirm(self.product_id, mark.alert_id)
        entry = next((e for e in self.overlay.entries if e.alert_id == mark.alert_id), None)
        if mark.action != "false_alarm":
            self.overlays.clear_refusal(self.product_id, mark.alert_id)
            if entry is None:
                result = "confirmed" if mark.action == "confirm_defect" else "unchanged"
                return Outcome(mark.alert_id, result, self.overlay.version)
            self._publish(self.overlay.without(entry.entry_id), mark, f"undo {mark.alert_id}")
            return Outcome(mark.alert_id, "undone", self.overlay.version)
        if entry is not None:
            return Outcome(mark.alert_id, "unchanged", self.overlay.version)
        return self._teach(mark)

    def _teach(self, mark: FeedbackRecord) -> Outcome:
        from ddad_core.overlay import OverlayEntry, frame_patches

        image = self._kept_image(mark.camera_id, mark.frame_id)
        if image is None:
            return self._refuse(mark, "the frame is not kept in the object store (or not decodable)", [])
        patches, region = frame_patches(self.pipe, image, self.region)
        entry = OverlayEntry(
            entry_id=mark.feedback_id,
            alert_id=mark.alert_id,
            frame_id=mark.frame_id,
            actor=mark.actor,
            at=mark.at.isoformat(),
            region=region,
            patches=len(patches),
        )
        candidate = self.overlay.added(entry, patches)
        unchecked = self._sync_guard()
        already = set(self.guard.missed(self.overlay))  # below the model's threshold anyway (an alert rule's lower one)
        missed = unchecked + [k for k in self.guard.missed(candidate) if k not in already]
        if missed:
            return self._refuse(mark, "the change would silence confirmed defects", missed)
        self._publish(candidate, mark, f"teach {mark.alert_id}")
        return Outcome(mark.alert_id, "taught", self.overlay.version)

    def _kept_image(self, camera_id: str, frame_id: str) -> np.ndarray | None:
        """The pixels of a kept frame, or None (not kept, or not decodable)."""
        from ddad_core.preprocess import ImageDecodeError, decode_image

        data = stored_frame(self.store, camera_id, frame_id)
        try:
            return decode_image(data) if data is not None else None
        except ImageDecodeError:
            return None

    def _sync_guard(self) -> list[str]:
        """Bring the guard to the product's confirmed defects (each prepared once while it stays confirmed); returns
        the ids whose frame is not kept (they cannot be checked, so they count as silenced)."""
        confirmed = self.overlays.confirmed(self.product_id)
        for alert_id in set(self.guard.keys()) - set(confirmed):
            self.guard.remove(alert_id)
        unchecked = []
        for alert_id, where in confirmed.items():
            if alert_id in self.guard:
                continue
            image = self._kept_image(where["camera_id"], where["frame_id"])
            if image is None:
                unchecked.append(alert_id)
            else:
                self.guard.add(alert_id, image)
        return unchecked

    def _refuse(self, mark: FeedbackRecord, reason: str, missed: list[str]) -> Outcome:
        self.overlays.refuse(
            self.product_id, mark.alert_id, actor=mark.actor, reason=reason, missed=missed, version=self.overlay.version
        )
        self.log.warning(
            "overlay_change_refused",
            alert_id=mark.alert_id,
            actor=mark.actor,
            reason=reason,
            missed=missed,
            version=self.overlay.version,
        )
        return Outcome(mark.alert_id, "refused", self.overlay.version, missed, reason)

    def _publish(self, overlay: Any, mark: FeedbackRecord, change: str) -> None:
        try:
            self.overlays.publish(overlay, actor=mark.actor, change=change, alert_id=mark.alert_id)
        except OverlayConflict:
            # Another writer moved the version: pick it up; the mark is applied again on top of it (replayed).
            self.overlay = self.overlays.load(self.product_id) or self.overlay
            self.pipe = self.base.with_overlay(self.overlay)
            raise
        self.overlay = overlay
        self.pipe = self.base.with_overlay(overlay)
        self.log.info(
            "overlay_published",
            version=overlay.version,
            change=change,
            actor=mark.actor,
            entries=len(overlay.entries),
            patches=len(overlay.patches),
        )


class TeacherLoop:
    """Consumes ``feedback``, applies each mark, commits after applying.

    Args:
        consumer: A kafka-python consumer in the teacher's group.
        teacher: Applies the marks.
        topic: The ``feedback`` topic (with prefix).
        log: A structlog logger.
        health: Liveness/readiness state.
    """

    def __init__(self, consumer: Any, teacher: Teacher, topic: str, log: Any, health: obs.Health) -> None:
        self.consumer = consumer
        self.teacher = teacher
        self.topic = topic
        self.log = log
        self.health = health
        self.guard = DependencyGuard(SERVICE, health, log)
        self.outcomes: deque[Outcome] = deque(maxlen=1000)  # the latest, for tests and the demo

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic])

    def run(self, stop: threading.Event) -> None:
        run_steps(self, stop)

    def step(self) -> None:
        self.health.beat()
        for tp, records in self.consumer.poll(timeout_ms=500).items():
            for rec in records:
                self._apply(rec.value)
                commit_offsets(self.consumer, {TopicPartition(tp.topic, tp.partition): rec.offset + 1})

    def _apply(self, value: bytes) -> None:
        try:
            mark = FeedbackRecord.from_bytes(value)
        except (ValidationError, ValueError) as exc:
            self.log.warning("feedback_record_invalid", error=str(exc)[:300])
            return
        start = time.perf_counter()
        while True:
            try:
                outcome = self.guard.until_ok("redis", lambda: self.teacher.apply(mark))
                break
            except OverlayConflict as exc:
                self.log.warning("overlay_conflict", alert_id=mark.alert_id, error=str(exc))
        self.outcomes.append(outcome)
        self.log.info(
            "mark_applied",
            alert_id=mark.alert_id,
            action=mark.action,
            result=outcome.result,
            version=outcome.version,
            missed=outcome.missed,
            seconds=round(time.perf_counter() - start, 3),
        )
