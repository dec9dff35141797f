"""Redis side of the product: the result hash, per-camera result streams, alert records and runtime overrides.

Flow step: worker -> Redis (``InspectionStore``); alerter -> Redis (``AlertStore``, ``OverrideStore``).
Kafka stays the system of record; Redis is the fast "latest state" view for dashboards and operators.

Keys (all with an optional prefix):

* ``insp:{camera_id}:{frame_id}``: hash of one ``InspectionResult`` (TTL). Keyed by frame id, so a replay after a
  worker restart overwrites the same hash.
* ``results:{camera_id}``: capped stream (``MAXLEN ~``) of recent results, TTL refreshed on write. Entry ids are
  ``{captured_ms}-{sequence}``, so Redis itself rejects a replayed entry ("ID equal or smaller") instead of
  duplicating it.
* ``camera:{camera_id}:latest``: hash of the newest result of the camera (only moves forward in capture time).
* ``alert:{alert_id}`` hash and ``alerts:{camera_id}`` sorted set (score = capture time) of raised alerts.
* ``override:{camera_id}[:{product_id}]``: runtime alerter overrides; every change is appended to the ``audit``
  stream in the same transaction.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services._config import StartupError, mask_url
from services.contracts.defects import DefectAlert
from services.contracts.results import InspectionResult

# Writes "latest" only if the incoming capture time is newer, in one round trip: a replayed (older) result must not
# move the camera's "latest" view backwards.
_SET_LATEST_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'captured_ts')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def connect(url: str, connect_timeout_s: float = 5.0) -> redis.Redis:
    """A client with string responses and bounded timeouts (a hung Redis must not hang a batch forever)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=connect_timeout_s,
                                health_check_interval=30)


def connect_checked(url: str, connect_timeout_s: float) -> tuple[redis.Redis, str]:
    """The ``redis`` start-up step: a client (see ``connect``) after one PING has answered.

    The PING runs on a separate client without retries, so an unreachable server fails once, within
    ``connect_timeout_s``, instead of after the client's retry schedule.

    Raises:
        StartupError: unparseable URL, no answer, or refused credentials.
    """
    shown = mask_url(url)
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=connect_timeout_s,
                                     retry=Retry(NoBackoff(), 0), decode_responses=True)
    except ValueError as exc:
        raise StartupError(f"bad Redis URL {shown}: {exc}") from None
    try:
        probe.ping()
        version = probe.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        raise StartupError(f"Redis at {shown} did not answer PING ({type(exc).__name__}: {exc})") from None
    finally:
        probe.close()
    return connect(url, connect_timeout_s), f"{shown}: redis {version}"


def _flat(result: InspectionResult) -> dict[str, str]:
    fields = result.model_dump(mode="json")
    flat = {k: json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else str(v)) for k, v in
            fields.items()}
    flat["captured_ts"] = repr(result.captured_at.timestamp())
    flat["latency_ms"] = f"{result.latency_ms:.3f}"
    return flat


class InspectionStore:
    """Result hashes, capped per-camera streams and the latest-per-camera view.

    Args:
        client: A ``redis.Redis`` with ``decode_responses=True`` (see ``connect``).
        ttl_s: Lifetime of every key written (refreshed on each write).
        stream_maxlen: Approximate cap of each per-camera stream.
        prefix: Key prefix (per environment).
    """

    def __init__(self, client: redis.Redis, ttl_s: int = 86400, stream_maxlen: int = 1000, prefix: str = "") -> None:
        self.client = client
        self.ttl_s = int(ttl_s)
        self.stream_maxlen = int(stream_maxlen)
        self.prefix = f"{prefix}:" if prefix else ""
        self._set_latest = client.register_script(_SET_LATEST_IF_NEWER)

    def result_key(self, camera_id: str, frame_id: str) -> str:
        return f"{self.prefix}insp:{camera_id}:{frame_id}"

    def stream_key(self, camera_id: str) -> str:
        return f"{self.prefix}results:{camera_id}"

    def latest_key(self, camera_id: str) -> str:
        return f"{self.prefix}camera:{camera_id}:latest"

    def write(self, results: list[InspectionResult]) -> None:
        """Write a batch of results in one transaction (one round trip per batch, not per frame).

        Raises:
            redis.RedisError: on anything but the expected "duplicate stream id" rejection of a replay.
        """
        if not results:
            return
        pipe = self.client.pipeline(transaction=True)
        for r in results:
            flat = _flat(r)
            key = self.result_key(r.camera_id, r.frame_id)
            pipe.hset(key, mapping=flat)
            pipe.expire(key, self.ttl_s)
            stream = self.stream_key(r.camera_id)
            entry_id = f"{int(r.captured_at.timestamp() * 1000)}-{r.sequence}"
            pipe.xadd(stream, {"frame_id": r.frame_id, "pred_score": flat["pred_score"],
                               "pred_label": flat["pred_label"], "mask_uri": flat["mask_uri"]},
                      id=entry_id, maxlen=self.stream_maxlen, approximate=True)
            pipe.expire(stream, self.ttl_s)
            latest_args = [flat["captured_ts"], self.ttl_s]
            for k, v in flat.items():
                latest_args += [k, v]
            self._set_latest(keys=[self.latest_key(r.camera_id)], args=latest_args, client=pipe)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError) and "equal or smaller" not in str(reply):
                raise reply

    def get(self, camera_id: str, frame_id: str) -> dict[str, str] | None:
        """The stored hash of one frame, or None."""
        data = self.client.hgetall(self.result_key(camera_id, frame_id))
        return data or None

    def recent(self, camera_id: str, count: int = 100) -> list[dict[str, str]]:
        """Newest-first entries of the camera's result stream."""
        return [dict(fields, id=entry_id) for entry_id, fields in
                self.client.xrevrange(self.stream_key(camera_id), count=count)]

    def latest(self, camera_id: str) -> dict[str, str] | None:
        return self.client.hgetall(self.latest_key(camera_id)) or None


class AlertStore:
    """Raised alerts: one hash per alert and a per-camera index ordered by capture time."""

    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 86400, prefix: str = "") -> None:
        self.client = client
        self.ttl_s = int(ttl_s)
        self.prefix = f"{prefix}:" if prefix else ""

    def alert_key(self, alert_id: str) -> str:
        return f"{self.prefix}alert:{alert_id}"

    def index_key(self, camera_id: str) -> str:
        return f"{self.prefix}alerts:{camera_id}"

    def record(self, alerts: list[DefectAlert]) -> None:
        """Record alerts (idempotent: the alert id is derived from the frame id)."""
        if not alerts:
            return
        pipe = self.client.pipeline(transaction=True)
        for a in alerts:
            key = self.alert_key(a.alert_id)
            pipe.hset(key, mapping={"json": a.model_dump_json(), "camera_id": a.camera_id, "frame_id": a.frame_id,
                                    "severity": a.severity, "pred_score": repr(a.pred_score)})
            pipe.expire(key, self.ttl_s)
            pipe.zadd(self.index_key(a.camera_id), {a.alert_id: a.captured_at.timestamp()})
            pipe.expire(self.index_key(a.camera_id), self.ttl_s)
        pipe.execute()

    def get(self, alert_id: str) -> DefectAlert | None:
        raw = self.client.hget(self.alert_key(alert_id), "json")
        return DefectAlert.model_validate_json(raw) if raw else None

    def for_camera(self, camera_id: str) -> list[str]:
        """Alert ids of a camera, oldest first."""
        return list(self.client.zrange(self.index_key(camera_id), 0, -1))


class OverrideStore:
    """Runtime alerter overrides (sensitivity, min_score) per camera or camera+product, with an audit log.

    The alerter re-reads them every few seconds; operators change them with ``python -m services.alerter
    override ...`` (or any Redis client that follows the same key layout and appends to the audit stream).
    """

    FIELDS = ("sensitivity", "min_score")

    def __init__(self, client: redis.Redis, prefix: str = "") -> None:
        self.client = client
        self.prefix = f"{prefix}:" if prefix else ""

    @staticmethod
    def scope(camera_id: str, product_id: str | None = None) -> str:
        return f"{camera_id}:{product_id}" if product_id else camera_id

    def _key(self, scope: str) -> str:
        return f"{self.prefix}override:{scope}"

    @property
    def audit_key(self) -> str:
        return f"{self.prefix}audit"

    def set(self, scope: str, actor: str, reason: str = "", **values: float | None) -> None:
        """Set (float) or clear (None) override fields of a scope and append one audit entry, atomically.

        Raises:
            ValueError: for an unknown field or a value outside [0, 1].
        """
        for name, value in values.items():
            if name not in self.FIELDS:
                raise ValueError(f"unknown override field {name!r} (allowed: {', '.join(self.FIELDS)})")
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"override {name}={value} outside [0, 1]")
        key = self._key(scope)
        old = self.client.hgetall(key)
        pipe = self.client.pipeline(transaction=True)
        for name, value in values.items():
            if value is None:
                pipe.hdel(key, name)
            else:
                pipe.hset(key, name, repr(float(value)))
        pipe.xadd(self.audit_key, {"scope": scope, "actor": actor, "reason": reason, "at": repr(time.time()),
                                   "old": json.dumps(old), "new": json.dumps(values)}, maxlen=10000,
                  approximate=True)
        pipe.execute()

    def all(self) -> dict[str, dict[str, float]]:
        """Every override, ``{scope: {field: value}}``."""
        out: dict[str, dict[str, float]] = {}
        pattern = self._key("*")
        for key in self.client.scan_iter(match=pattern, count=500):
            fields = self.client.hgetall(key)
            if fields:
                out[key[len(self._key("")):]] = {k: float(v) for k, v in fields.items() if k in self.FIELDS}
        return out

    def audit(self, count: int = 100) -> list[dict[str, Any]]:
        """Newest-first audit entries."""
        return [dict(fields, id=i) for i, fields in self.client.xrevrange(self.audit_key, count=count)]
