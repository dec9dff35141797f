"""Where a product's nominal overlay lives: versioned blobs in the object store, a small change record in Redis.

Flow step: teacher (``services.teacher``) -> object store + Redis -> workers (follow the version between batches) and
dashboard (shows the version and refused changes). The overlay itself is ``ddad_core.overlay.NominalOverlay``.

Object keys: ``overlays/{product_id}/v{version:06d}-{sha256[:16]}.safetensors`` (named by content, so written once
and never rewritten: a worker that reads an old version still finds it, and a writer that loses a race for a
version number leaves only an unreferenced blob behind). Redis keys (with the optional prefix):

* ``overlay:{product_id}``: the change record of the version in force (``version``, ``uri``, ``sha256``,
  ``entries``, ``changed_at``, ``actor``, ``change``, ``alert_id``, ``bundle_hash``). A reader polls ``version``
  (one small ``HGET``); a new value means "load ``uri`` and check its SHA-256". Written only after the blob is in
  the store, and only if the version in force is still the one the change was made from (optimistic check), so
  two writers can never publish over each other.
* ``overlay:{product_id}:confirmed``: hash alert id -> JSON ``{camera_id, frame_id}`` of every confirmed defect of
  the product (the guard's set).
* ``overlay:{product_id}:refused``: hash alert id -> JSON ``{at, actor, missed, version, reason}`` of a false-alarm
  mark that was not taught, and why (the dashboard shows it on the alert).
* ``overlay:{product_id}:taught``: hash alert id -> JSON ``{actor, at}`` of every alert whose frame is in the
  version in force (rewritten with the change record, in the same transaction).

Reading the change record needs no torch; :meth:`OverlayStore.load` (the overlay's patches) imports ddad_core.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from services._object_store import ObjectNotFoundError, ObjectStore

if TYPE_CHECKING:
    from ddad_core.overlay import NominalOverlay


class OverlayConflict(RuntimeError):
    """Another writer published a version of the same product first (the change must be redone on top of it)."""


class OverlayStore:
    """The overlays of every product: blobs in ``store``, change records, confirmed defects and refusals in Redis.

    Args:
        client: ``redis.Redis`` with ``decode_responses=True`` (``services._redis.connect``).
        store: The object store of the deployment.
        prefix: Redis key prefix (per environment).
    """

    def __init__(self, client: redis.Redis, store: ObjectStore, prefix: str = "") -> None:
        self.client = client
        self.store = store
        self.prefix = f"{prefix}:" if prefix else ""

    def record_key(self, product_id: str) -> str:
        return f"{self.prefix}overlay:{product_id}"

    def confirmed_key(self, product_id: str) -> str:
        return f"{self.prefix}overlay:{product_id}:confirmed"

    def refused_key(self, product_id: str) -> str:
        return f"{self.prefix}overlay:{product_id}:refused"

    def taught_key(self, product_id: str) -> str:
        return f"{self.prefix}overlay:{product_id}:taught"

    @staticmethod
    def object_key(product_id: str, version: int, sha256: str) -> str:
        return f"overlays/{product_id}/v{version:06d}-{sha256[:16]}.safetensors"

    # ---------------------------------------------------------------------------------------------- the version

    def version(self, product_id: str) -> int | None:
        """The version in force (None: nothing taught yet); one ``HGET``, cheap enough to poll every second."""
        value = self.client.hget(self.record_key(product_id), "version")
        return int(value) if value is not None else None

    def record(self, product_id: str) -> dict[str, Any] | None:
        """The change record of the version in force, or None."""
        data = self.client.hgetall(self.record_key(product_id))
        if not data:
            return None
        return {**data, "version": int(data["version"]), "entries": int(data.get("entries", 0))}

    def load(self, product_id: str) -> NominalOverlay | None:
        """The overlay in force, its blob checked against the record's SHA-256 (None: nothing taught yet).

        Raises:
            ddad_core.overlay.OverlayError: the blob is missing, altered or not an overlay.
        """
        from ddad_core.overlay import NominalOverlay, OverlayError

        record = self.record(product_id)
        if record is None:
            return None
        where = f"overlay version {record['version']} of {product_id}: {record['uri']}"
        try:
            data = self.store.get(record["uri"])
        except ObjectNotFoundError:
            raise OverlayError(f"{where} is missing") from None
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise OverlayError(f"{where} fails its hash")
        return NominalOverlay.from_bytes(data)

    def publish(self, overlay: NominalOverlay, *, actor: str, change: str, alert_id: str) -> dict[str, Any]:
        """Put the blob, then move the change record to it, if the version in force is still ``version - 1``.

        Raises:
            OverlayConflict: another writer moved the record first.
        """
        data = overlay.to_bytes()
        digest = hashlib.sha256(data).hexdigest()
        uri = self.store.put(self.object_key(overlay.product_id, overlay.version, digest), data)
        record = {
            "version": str(overlay.version),
            "uri": uri,
            "sha256": digest,
            "entries": str(len(overlay.entries)),
            "changed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "change": change,
            "alert_id": alert_id,
            "bundle_hash": overlay.bundle_hash,
        }
        key = self.record_key(overlay.product_id)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                current = pipe.hget(key, "version")
                if int(current or 0) != overlay.version - 1:
                    raise OverlayConflict(
                        f"overlay of {overlay.product_id} is at version {current}, this change "
                        f"was made on version {overlay.version - 1}"
                    )
                pipe.multi()
                pipe.hset(key, mapping=record)
                pipe.hdel(self.refused_key(overlay.product_id), alert_id)
                taught = self.taught_key(overlay.product_id)
                pipe.delete(taught)
                for e in overlay.entries:
                    pipe.hset(taught, e.alert_id, json.dumps({"actor": e.actor, "at": e.at}))
                pipe.execute()
            except redis.WatchError:
                raise OverlayConflict(f"overlay of {overlay.product_id} changed while publishing") from None
        return {**record, "version": overlay.version, "entries": len(overlay.entries)}

    # ------------------------------------------------------------------------------------ confirmed and refused

    def confirm(self, product_id: str, alert_id: str, camera_id: str, frame_id: str) -> None:
        value = json.dumps({"camera_id": camera_id, "frame_id": frame_id})
        self.client.hset(self.confirmed_key(product_id), alert_id, value)

    def unconfirm(self, product_id: str, alert_id: str) -> None:
        self.client.hdel(self.confirmed_key(product_id), alert_id)

    def confirmed(self, product_id: str) -> dict[str, dict[str, str]]:
        """Alert id -> ``{camera_id, frame_id}`` of every confirmed defect of the product."""
        return {k: json.loads(v) for k, v in self.client.hgetall(self.confirmed_key(product_id)).items()}

    def refuse(
        self, product_id: str, alert_id: str, *, actor: str, reason: str, missed: list[str], version: int
    ) -> dict[str, Any]:
        refusal = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "reason": reason,
            "missed": missed,
            "version": version,
        }
        self.client.hset(self.refused_key(product_id), alert_id, json.dumps(refusal))
        return refusal

    def clear_refusal(self, product_id: str, alert_id: str) -> None:
        self.client.hdel(self.refused_key(product_id), alert_id)

    def refusal(self, product_id: str, alert_id: str) -> dict[str, Any] | None:
        value = self.client.hget(self.refused_key(product_id), alert_id)
        return json.loads(value) if value is not None else None

    def teaching(self, product_id: str, alert_id: str) -> dict[str, Any]:
        """What the dashboard shows on an alert: the version in force, and whether the alert taught it or was
        refused (and why)."""
        taught = self.client.hget(self.taught_key(product_id), alert_id)
        return {
            "product_id": product_id,
            "version": self.version(product_id),
            "taught": json.loads(taught) if taught is not None else None,
            "refused": self.refusal(product_id, alert_id),
        }
