"""Redis side of the dashboard: operators' feedback (state, outbox) and the filtered, paginated alert history.

Flow step: dashboard actions -> Redis -> (outbox drained by ``consumer.py``) -> Kafka ``feedback``. Alerts themselves
are the alerter's records (``services._redis.AlertStore``: ``alert:{id}`` and ``alerts:{camera}`` by capture time).

Keys (with the shared ``REDIS_KEY_PREFIX``):

* ``feedback:{alert_id}``: hash of the latest action on an alert (``action``, ``actor``, ``at``, ``note``,
  ``feedback_id``, ``json`` = the ``FeedbackRecord``), TTL ``DASHBOARD_FEEDBACK_TTL_S``;
* ``feedback-outbox``: stream of ``FeedbackRecord`` JSON not yet acknowledged by Kafka. An action writes the hash and
  the outbox entry in one transaction, so a mark is never lost between Redis and Kafka: the outbox is published
  (at least once; consumers dedupe by ``feedback_id``) whenever the brokers answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from services._redis import AlertStore
from services.contracts.defects import DefectAlert
from services.contracts.feedback import FeedbackRecord

#: History status filter values: ``open`` = no feedback yet, otherwise the latest action.
STATUSES = ("open", "acknowledge", "false_alarm", "confirm_defect", "withdraw")


class FeedbackStore:
    """Latest feedback per alert plus the Kafka outbox."""

    def __init__(self, client: redis.Redis, ttl_s: int = 90 * 86400, prefix: str = "") -> None:
        self.client = client
        self.ttl_s = int(ttl_s)
        self.prefix = f"{prefix}:" if prefix else ""

    def key(self, alert_id: str) -> str:
        return f"{self.prefix}feedback:{alert_id}"

    @property
    def outbox_key(self) -> str:
        return f"{self.prefix}feedback-outbox"

    def record(self, rec: FeedbackRecord) -> None:
        """Store the action as the alert's state and queue it for Kafka, atomically."""
        key = self.key(rec.alert_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"action": rec.action, "actor": rec.actor, "at": rec.at.isoformat(),
                                "note": rec.note, "feedback_id": rec.feedback_id, "json": rec.model_dump_json()})
        pipe.expire(key, self.ttl_s)
        pipe.xadd(self.outbox_key, {"json": rec.model_dump_json()}, maxlen=100000, approximate=True)
        pipe.execute()

    def get(self, alert_id: str) -> dict[str, str] | None:
        data = self.client.hgetall(self.key(alert_id))
        return {k: v for k, v in data.items() if k != "json"} or None

    def states(self, alert_ids: list[str]) -> list[dict[str, str] | None]:
        """The feedback state of each alert (None = open), in one round trip."""
        if not alert_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for a in alert_ids:
            pipe.hmget(self.key(a), "action", "actor", "at")
        out: list[dict[str, str] | None] = []
        for action, actor, at in pipe.execute():
            out.append({"action": action, "actor": actor or "", "at": at or ""} if action else None)
        return out

    def pending(self, count: int = 100) -> list[tuple[str, FeedbackRecord]]:
        """Oldest outbox entries not yet published."""
        return [(entry_id, FeedbackRecord.model_validate_json(fields["json"]))
                for entry_id, fields in self.client.xrange(self.outbox_key, count=count)]

    def published(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.client.xdel(self.outbox_key, *entry_ids)


@dataclass(frozen=True)
class HistoryPage:
    items: list[dict[str, Any]]
    total: int
    page: int
    page_size: int
    truncated: bool  # more alerts matched the time range than the scan limit: narrow the filters


class AlertHistory:
    """Queries over the alerter's records: newest first, filtered by camera, capture-time range and status.

    Alert ids come from the per-camera sorted sets (score = capture time), so a time range costs one
    ``ZREVRANGEBYSCORE``
    per camera; the status filter needs each candidate's feedback state, so at most ``scan_limit`` candidates are
    looked at (newest first) and ``truncated`` says when more matched.
    """

    def __init__(self, alerts: AlertStore, feedback: FeedbackStore, scan_limit: int = 5000) -> None:
        self.alerts = alerts
        self.feedback = feedback
        self.scan_limit = scan_limit

    @property
    def client(self) -> redis.Redis:
        return self.alerts.client

    def cameras(self) -> list[str]:
        """Every camera with recorded alerts."""
        start = len(self.alerts.index_key(""))
        return sorted(k[start:] for k in self.client.scan_iter(match=self.alerts.index_key("*"), count=500))

    def alerts_since(self, camera_id: str, since_ts: float) -> int:
        return int(self.client.zcount(self.alerts.index_key(camera_id), f"({since_ts}", "+inf"))

    def load(self, alert_ids: list[str]) -> list[DefectAlert | None]:
        if not alert_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for a in alert_ids:
            pipe.hget(self.alerts.alert_key(a), "json")
        return [DefectAlert.model_validate_json(raw) if raw else None for raw in pipe.execute()]

    def query(self, camera: str | None = None, since: float | None = None, until: float | None = None,
              status: str | None = None, page: int = 1, page_size: int = 25) -> HistoryPage:
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
        cams = [camera] if camera else self.cameras()
        hi = "+inf" if until is None else repr(float(until))
        lo = "-inf" if since is None else repr(float(since))
        pipe = self.client.pipeline(transaction=False)
        for cam in cams:
            pipe.zrevrangebyscore(self.alerts.index_key(cam), hi, lo, start=0, num=self.scan_limit, withscores=True)
        candidates = sorted(((ts, aid) for rows in pipe.execute() for aid, ts in rows), reverse=True)
        truncated = len(candidates) > self.scan_limit
        candidates = candidates[: self.scan_limit]
        ids = [aid for _, aid in candidates]
        if status is not None:
            states = self.feedback.states(ids)
            ids = [aid for aid, st in zip(ids, states, strict=True)
                   if (st is None and status == "open") or (st is not None and st["action"] == status)]
        total = len(ids)
        page = max(1, int(page))
        chosen = ids[(page - 1) * page_size: page * page_size]
        states = self.feedback.states(chosen)
        items = [summary(a, st) for a, st in zip(self.load(chosen), states, strict=True) if a is not None]
        return HistoryPage(items, total, page, page_size, truncated)


def summary(alert: DefectAlert, state: dict[str, str] | None) -> dict[str, Any]:
    """What the feed and the history show of one alert (JSON for the page; the page renders it as text)."""
    return {"alert_id": alert.alert_id, "camera_id": alert.camera_id, "line_id": alert.line_id,
            "product_id": alert.product_id, "source": alert.source, "captured_at": alert.captured_at.isoformat(),
            "raised_at": alert.raised_at.isoformat(), "pred_score": alert.pred_score, "threshold": alert.threshold,
            "severity": alert.severity, "has_mask": bool(alert.mask_uri), "has_heatmap": bool(alert.heatmap_uri),
            "status": state["action"] if state else "open", "status_by": state["actor"] if state else "",
            "status_at": state["at"] if state else ""}
