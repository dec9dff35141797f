"""Kafka plumbing: consumer/producer factories, topic creation, offset tracking and the dead-letter publisher.

Flow step: the transport between every stage. Conventions (kafka-python practice, checked against 3.0.12):

* consumers never auto-commit; a loop commits explicitly after its outputs are flushed (at-least-once);
* producers are idempotent with ``acks=all``; records are keyed by camera id;
* the assignor is cooperative-sticky by default (only moving partitions pause on a scale event), range on request;
* a record that cannot be processed goes to ``<topic>.dlq`` with the reason in headers, and the loop carries on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from services._config import StartupError
from services.contracts.topics import (
    BASE_TOPICS,
    HEADER_DLQ_DETAIL,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SERVICE,
    HEADER_DLQ_SOURCE,
    Topics,
    read_topic_definitions,
)

Assignor = Literal["cooperative-sticky", "range", "roundrobin"]
_ASSIGNORS = {
    "cooperative-sticky": CooperativeStickyAssignor,
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
}


@dataclass(frozen=True)
class TopicSpec:
    """Partitions, retention, record size, replication and other configs of one topic.

    Built from ``services/contracts/topics.yaml`` by ``load_topic_specs`` / ``default_topic_specs``; ``replicas`` -1 is
    the broker's ``default.replication.factor`` (the local single-broker stack).
    """

    partitions: int
    retention_ms: int
    max_message_bytes: int = 1048588
    replicas: int = -1
    config: tuple[tuple[str, str], ...] = ()  # further Kafka topic configs, e.g. (("cleanup.policy", "delete"),)

    def configs(self) -> dict[str, str]:
        """Every Kafka config of the topic, as strings."""
        return {**dict(self.config), "retention.ms": str(self.retention_ms),
                "max.message.bytes": str(self.max_message_bytes)}


def load_topic_specs(topics: Topics, path: str | os.PathLike[str] | None = None, *,
                     cluster: bool = True) -> dict[str, TopicSpec]:
    """The topics of ``topics.yaml`` (default ``services/contracts/topics.yaml``) under their prefixed names.

    Args:
        topics: The names (with the environment prefix).
        path: The definitions file; the chart's topic Job passes its rendered copy.
        cluster: Apply the file's durability (``replicas``, ``minInsyncReplicas``); False for one local broker,
            which keeps the broker's defaults.

    Raises:
        ValueError: the file is missing or invalid (``read_topic_definitions``).
    """
    defs = read_topic_definitions(path)
    names = dict(zip(BASE_TOPICS, topics.all(), strict=True))
    specs = {}
    for base, d in defs.topics.items():
        extra = {k: v for k, v in d.config.items() if k not in ("retention.ms", "max.message.bytes")}
        if cluster:
            extra["min.insync.replicas"] = str(defs.min_insync_replicas)
        specs[names[base]] = TopicSpec(d.partitions, d.retention_ms, d.max_message_bytes,
                                       defs.replicas if cluster else -1, tuple(sorted(extra.items())))
    return specs


def default_topic_specs(topics: Topics, frames_partitions: int | None = None) -> dict[str, TopicSpec]:
    """The product's topics for one local broker (dev, tests, demo, ``inspection-stack``), from ``topics.yaml``.

    ``frames_partitions`` overrides the partition count of ``frames`` and ``results`` (the worker ceiling).
    """
    specs = load_topic_specs(topics, cluster=False)
    if frames_partitions is not None:
        for name in (topics.frames, topics.results):
            specs[name] = replace(specs[name], partitions=frames_partitions)
    return specs


@dataclass
class TopicChanges:
    """What ``reconcile_topics`` did: created topics, grown partition counts, changed configs, refusals."""

    created: list[str] = field(default_factory=list)
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (partitions before, after)
    configured: dict[str, list[str]] = field(default_factory=dict)  # name -> config keys that changed
    larger: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (has, wanted): Kafka cannot shrink

    def lines(self) -> list[str]:
        """One human-readable line per change (the topic Job's log)."""
        out = [f"created {name}" for name in self.created]
        out += [f"grew {n} from {a} to {b} partitions" for n, (a, b) in self.grown.items()]
        out += [f"set {', '.join(keys)} on {n}" for n, keys in self.configured.items()]
        out += [f"kept {n} at {a} partitions (wanted {b}; Kafka cannot remove partitions)"
                for n, (a, b) in self.larger.items()]
        return out


def reconcile_topics(kafka_kwargs: dict[str, Any], specs: dict[str, TopicSpec], *,
                     update_existing: bool = True) -> TopicChanges:
    """Create missing topics and, with ``update_existing``, bring existing ones to their spec (idempotent).

    Existing topics get more partitions when the spec has more (never fewer: Kafka cannot shrink a topic, which is
    reported in ``larger``) and the spec's configs where they differ. Replication of an existing topic is not
    changed (that is a partition reassignment, an operator's decision).

    Raises:
        ValueError: a spec asks for more replicas than the cluster has brokers.
    """
    admin = KafkaAdminClient(**{k: v for k, v in kafka_kwargs.items() if k != "client_id"},
                             client_id="inspection-admin")
    changes = TopicChanges()
    try:
        existing = set(admin.list_topics())
        todo = {name: spec for name, spec in specs.items() if name not in existing}
        if todo:
            brokers = len(admin.describe_cluster().get("brokers") or [])
            short = sorted(n for n, s in todo.items() if s.replicas > brokers)
            if short:
                raise ValueError(f"topics {', '.join(short)} need {max(todo[n].replicas for n in short)} replicas but "
                                 f"the cluster has {brokers} broker(s): lower `replicas` in the topic definitions")
            try:
                admin.create_topics({name: {"num_partitions": spec.partitions, "replication_factor": spec.replicas,
                                            "configs": spec.configs()}
                                     for name, spec in todo.items()}, wait_for_metadata=True)
            except TopicAlreadyExistsError:  # another process won the race: fine
                pass
            changes.created = sorted(todo)
        present = sorted(set(specs) & existing)
        if not update_existing or not present:
            return changes
        counts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(present)}
        grow = {name: specs[name].partitions for name in present if counts[name] < specs[name].partitions}
        if grow:
            admin.create_partitions(grow)
            changes.grown = {name: (counts[name], n) for name, n in grow.items()}
        changes.larger = {n: (counts[n], specs[n].partitions) for n in present if counts[n] > specs[n].partitions}
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in present],
                                           config_filter="all")
        current = next(iter(described.values()), {}) if described else {}
        for name in present:
            have = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in (current.get(name) or {}).items()}
            diff = {k: v for k, v in specs[name].configs().items() if have.get(k) != v}
            if diff:
                admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=diff)])
                changes.configured[name] = sorted(diff)
        return changes
    finally:
        admin.close()


def ensure_topics(kafka_kwargs: dict[str, Any], specs: dict[str, TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet, leaving existing ones as they are (dev, tests, demo, stack).

    The chart's topic Job also updates existing topics (``reconcile_topics``, ``deploy/kafka/ensure_topics.py``).

    Returns:
        The names that were created.
    """
    return reconcile_topics(kafka_kwargs, specs, update_existing=False).created


TOPICS_HINT = "create them with `inspection-stack` or services._kafka.ensure_topics, or let the broker auto-create them"


class _LastWarning(logging.Handler):
    """Keeps the last warning kafka-python logged (the real cause: refused, DNS, TLS, SASL) instead of printing it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # e.g. "Bootstrap connection to bootstrap-0 failed: KafkaConnectionError: 111 ECONNREFUSED (backoff 0.3 secs)"
        message = record.getMessage()
        if "failed: " in message and not message.startswith("Bootstrap failed"):
            self.last = message.rsplit("failed: ", 1)[1].split(" (backoff")[0]


#: Held while ``check_kafka`` silences the ``kafka`` logger (``propagate`` is process-wide state).
_KAFKA_LOG_HELD = threading.Lock()


def check_kafka(kafka_kwargs: dict[str, Any], timeout_s: float, topics: Iterable[str] = ()) -> tuple[list[str], str]:
    """Connect to the cluster within ``timeout_s`` and describe it (the ``kafka`` start-up step).

    kafka-python retries and logs every failed attempt (dozens of lines for a wrong address); here its log is
    held back and only the last cause ends up in the one-line error.

    Returns:
        ``(missing, detail)``: the ``topics`` that do not exist (reported, not refused: brokers that auto-create
        topics create them on first use) and a line naming the brokers and topics.

    Raises:
        StartupError: no answer within the timeout, or the connection was refused by TLS or SASL.
    """
    servers = ",".join(kafka_kwargs.get("bootstrap_servers") or [])
    with _KAFKA_LOG_HELD:  # the logger is process-global: checks in threads would restore each other's state
        return _check_kafka_quietly(kafka_kwargs, timeout_s, topics, servers)


def _check_kafka_quietly(kafka_kwargs: dict, timeout_s: float, topics: Iterable[str], servers: str):
    kafka_log = logging.getLogger("kafka")
    capture = _LastWarning()
    propagate = kafka_log.propagate
    kafka_log.addHandler(capture)
    kafka_log.propagate = False
    try:
        admin = KafkaAdminClient(**{**{k: v for k, v in kafka_kwargs.items() if k != "client_id"},
                                    "bootstrap_timeout_ms": int(timeout_s * 1000),
                                    "request_timeout_ms": int(max(timeout_s, 1.0) * 1000)},
                                 client_id="inspection-check")
        try:
            brokers = admin.describe_cluster().get("brokers") or []
            existing = set(admin.list_topics())
        finally:
            admin.close()
    except (KafkaError, OSError, ValueError) as exc:
        cause = capture.last or f"{type(exc).__name__}: {exc}"
        raise StartupError(f"no answer from Kafka at {servers} within {timeout_s:g} s ({cause})") from None
    finally:
        kafka_log.removeHandler(capture)
        kafka_log.propagate = propagate
    topics = list(topics)
    missing = [t for t in topics if t not in existing]
    detail = f"{servers}: {len(brokers)} broker(s)"
    if missing:
        detail += f"; topics missing: {', '.join(missing)} ({TOPICS_HINT})"
    elif topics:
        detail += f"; topics present: {', '.join(topics)}"
    return missing, detail


def make_consumer(kafka_kwargs: dict[str, Any], group_id: str, *, assignor: Assignor = "cooperative-sticky",
                  group_instance_id: str | None = None, max_poll_records: int = 64,
                  session_timeout_ms: int = 45000, heartbeat_interval_ms: int = 3000,
                  max_poll_interval_ms: int = 300000, auto_offset_reset: str = "earliest",
                  **overrides: Any) -> KafkaConsumer:
    """A group consumer that never commits on its own.

    Args:
        kafka_kwargs: Connection kwargs (``CommonSettings.kafka_kwargs``).
        group_id: Consumer group.
        assignor: Partition assignment strategy.
        group_instance_id: Static membership id (the pod name), so a restart inside the session timeout does not
            rebalance the group.
        max_poll_records: Kept near the max batch size: records beyond a batch would wait in memory uncommitted.
        session_timeout_ms: Group session timeout (tests lower it to 6000).
        heartbeat_interval_ms: Heartbeat period (tests lower it to 1000).
        max_poll_interval_ms: Must exceed the worst batch time x 2 (including model reload), or the group
            rebalances mid-batch and the commit fails (dpkp/kafka-python#1401).
        auto_offset_reset: "earliest": a new group must not skip frames already waiting.
        **overrides: Any other KafkaConsumer argument.
    """
    kwargs = dict(kafka_kwargs)
    kwargs.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        partition_assignment_strategy=(_ASSIGNORS[assignor],),
        max_poll_records=max_poll_records,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        max_poll_interval_ms=max_poll_interval_ms,
    )
    if group_instance_id:
        kwargs["group_instance_id"] = group_instance_id
    kwargs.update(overrides)
    return KafkaConsumer(**kwargs)


def make_producer(kafka_kwargs: dict[str, Any], *, linger_ms: int = 5, max_request_size: int = 1048576,
                  **overrides: Any) -> KafkaProducer:
    """An idempotent producer (``acks=all``): broker-side retries cannot duplicate or reorder a partition.

    ``linger_ms`` is small: a batch of results is flushed right after it is produced anyway.
    """
    kwargs = dict(kafka_kwargs)
    kwargs.update(enable_idempotence=True, acks="all", linger_ms=linger_ms, max_request_size=max_request_size)
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)


#: Largest original value a DLQ record carries (the DLQ topic and producers keep Kafka's 1 MiB default; headers
#: need room too). A bigger one is dead-lettered without its value, its size in the ``dlq.value_omitted`` header.
DLQ_MAX_VALUE_BYTES = 900_000
HEADER_DLQ_VALUE_OMITTED = "dlq.value_omitted"


class DeadLetterPublisher:
    """Sends unprocessable records to the dead-letter topic with the reason in headers.

    The original key and value are kept byte for byte so the record can be replayed after a fix; a value over
    ``DLQ_MAX_VALUE_BYTES`` (an oversized message) is left out and its size recorded instead, so the DLQ record
    itself can always be written.
    """

    def __init__(self, producer: KafkaProducer, topic: str, service: str) -> None:
        self.producer = producer
        self.topic = topic
        self.service = service

    def build(self, record: ConsumerRecord, reason: str, detail: str = "") -> dict[str, Any]:
        """``KafkaProducer.send`` keyword arguments of the DLQ record for ``record``."""
        headers = [
            (HEADER_DLQ_REASON, reason.encode()),
            (HEADER_DLQ_DETAIL, detail[:1000].encode("utf-8", "replace")),
            (HEADER_DLQ_SOURCE, f"{record.topic}/{record.partition}/{record.offset}".encode()),
            (HEADER_DLQ_SERVICE, self.service.encode()),
        ]
        value = record.value
        if value is not None and len(value) > DLQ_MAX_VALUE_BYTES:
            headers.append((HEADER_DLQ_VALUE_OMITTED, str(len(value)).encode()))
            value = None
        key = record.key if record.key is None or len(record.key) <= 4096 else record.key[:4096]
        return {"topic": self.topic, "key": key, "value": value, "headers": headers}

    def send(self, record: ConsumerRecord, reason: str, detail: str = "") -> Any:
        """Produce one DLQ record (the caller flushes before committing the original offset)."""
        return self.producer.send(**self.build(record, reason, detail))


class OffsetTracker:
    """Which offsets of each partition are finished, so commits never skip a frame still in flight.

    The micro-batcher takes frames round-robin across cameras, and several cameras share a partition, so frames
    of one partition finish out of order. The committable offset of a partition is therefore its lowest unfinished
    offset (or the highest finished one + 1 when none is outstanding), never simply "last batch's offset + 1".

    Example:
        >>> from kafka import TopicPartition
        >>> tp = TopicPartition("frames", 0); t = OffsetTracker()
        >>> for o in (5, 6, 7): t.add(tp, o)
        >>> t.done(tp, 7); t.committable()
        {TopicPartition(topic='frames', partition=0): 5}
        >>> t.done(tp, 5); t.done(tp, 6); t.committable()
        {TopicPartition(topic='frames', partition=0): 8}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the rebalance listener runs on kafka-python's IO thread
        self._pending: dict[TopicPartition, set[int]] = {}
        self._high: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self._pending.setdefault(tp, set()).add(offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            pending = self._pending.get(tp)
            if pending is None or offset not in pending:
                return  # the partition was revoked meanwhile: its new owner reprocesses it
            pending.discard(offset)
            self._high[tp] = max(self._high.get(tp, -1), offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to commit per partition, only where it moved since ``mark_committed``."""
        with self._lock:
            out = {}
            for tp in set(self._pending) | set(self._high):
                pending = self._pending.get(tp)
                if pending:
                    nxt = min(pending)
                elif tp in self._high:
                    nxt = self._high[tp] + 1
                else:
                    continue
                if nxt > self._committed.get(tp, -1) and (tp in self._high):
                    out[tp] = nxt
            return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, off in offsets.items():
                self._committed[tp] = max(self._committed.get(tp, -1), off)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop all state of revoked/lost partitions."""
        with self._lock:
            for tp in partitions:
                self._pending.pop(tp, None)
                self._high.pop(tp, None)
                self._committed.pop(tp, None)

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())


def commit_offsets(consumer: KafkaConsumer, offsets: dict[TopicPartition, int], timeout_ms: int | None = None) -> None:
    """Synchronously commit ``{tp: next_offset}``.

    Raises:
        CommitFailedError: after a rebalance. KafkaTimeoutError: no answer within ``timeout_ms`` (default: the
            consumer's request timeout), e.g. while the broker is down.
    """
    if offsets:
        consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}, timeout_ms=timeout_ms)


def commit_offsets_async(consumer: KafkaConsumer, offsets: dict[TopicPartition, int],
                         callback: Callable[[Any, Any], None] | None = None) -> None:
    """Commit ``{tp: next_offset}`` without blocking: the one commit a rebalance listener can make.

    kafka-python 3 runs rebalance listeners on its IO thread, where the blocking ``commit`` raises RuntimeError; the
    request queued here goes out before the group's next JoinGroup. ``callback(offsets, response_or_error)``.
    """
    if offsets:
        consumer.commit_async({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}, callback=callback)


def consumer_lag(consumer: KafkaConsumer, timeout_ms: int | None = None) -> dict[str, int]:
    """Records between the consumer's position and the end of each assigned partition, summed per topic.

    Raises:
        KafkaTimeoutError: the end offsets did not arrive within ``timeout_ms`` (default: the request timeout).
    """
    assigned = list(consumer.assignment())
    if not assigned:
        return {}
    ends = consumer.end_offsets(assigned, timeout_ms=timeout_ms) if timeout_ms else consumer.end_offsets(assigned)
    lag: dict[str, int] = {}
    for tp in assigned:
        try:
            pos = consumer.position(tp, timeout_ms=1000)
        except Exception:  # noqa: BLE001 - position can be unknown right after an assignment; skip it
            continue
        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, ends.get(tp, pos) - pos)
    return lag
