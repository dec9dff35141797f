"""Topic names, record keys, header names and the schema version of every wire contract.

Flow step: the names every producer and consumer agree on. Topic names get an optional per-environment prefix
(``staging.frames``); keys are always the camera id so one camera's records stay ordered inside one partition.

The topics' definitions (partitions, retention, maximum record size, replication) live in one file,
``topics.yaml`` beside this module (package data, ``TOPICS_FILE``), read here by ``read_topic_definitions``: the Helm
chart's topic Job, the compose file, the local stack, the demo and the tests all create topics from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# One version per contract; a record's ``schema_version`` changes whenever one of its fields changes meaning.
FRAMES_SCHEMA_VERSION = 1  # also the byte after b"DDF" in the binary envelope
# 2: `threshold` is the normalised decision threshold (it was the raw one), the raw one is `threshold_raw`, and the
# topic also carries `kind: "dropped"` records for frames that were not inspected.
RESULTS_SCHEMA_VERSION = 2
DEFECTS_SCHEMA_VERSION = 1
FEEDBACK_SCHEMA_VERSION = 1

# Headers are bytes on the wire; these names are shared by the worker's DLQ and whoever inspects it.
HEADER_SCHEMA = "schema"
HEADER_DLQ_REASON = "dlq.reason"
HEADER_DLQ_DETAIL = "dlq.detail"
HEADER_DLQ_SOURCE = "dlq.source"  # "<topic>/<partition>/<offset>" of the original record
HEADER_DLQ_SERVICE = "dlq.service"


@dataclass(frozen=True)
class Topics:
    """The four topics of the product, with an optional environment prefix.

    Example:
        >>> Topics().frames, Topics(prefix="staging").frames_dlq
        ('frames', 'staging.frames.dlq')
    """

    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}.{base}" if self.prefix else base

    @property
    def frames(self) -> str:
        """Frames from the cameras (key camera_id, value ``Frame`` binary envelope)."""
        return self._name("frames")

    @property
    def frames_dlq(self) -> str:
        """Frames the worker could not process (original bytes, reason in headers)."""
        return self._name("frames.dlq")

    @property
    def results(self) -> str:
        """One ``InspectionResult`` JSON per inspected frame (key camera_id)."""
        return self._name("results")

    @property
    def defects(self) -> str:
        """One ``DefectAlert`` JSON per raised alert (key camera_id)."""
        return self._name("defects")

    @property
    def feedback(self) -> str:
        """One ``FeedbackRecord`` JSON per operator action on an alert (key camera_id)."""
        return self._name("feedback")

    def all(self) -> list[str]:
        """All topic names, in flow order."""
        return [self.frames, self.frames_dlq, self.results, self.defects, self.feedback]


def record_key(camera_id: str) -> bytes:
    """The Kafka key of every record: the camera id, so per-camera order holds inside a partition."""
    return camera_id.encode("utf-8")


#: The single source of the topic definitions: package data of ``services.contracts``, so an installed package (the
#: images) has it as well as a checkout; the chart's ``files/topics.yaml`` links to it.
TOPICS_FILE: Traversable = files(__package__).joinpath("topics.yaml")
#: The topics of the product without prefix, in flow order (the keys ``topics.yaml`` must define).
BASE_TOPICS = tuple(Topics().all())


class TopicDefinition(BaseModel):
    """One topic of ``topics.yaml``: its partition count and its Kafka configs (strings, as Kafka stores them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partitions: int = Field(ge=1, le=10000)
    config: dict[str, str] = Field(default_factory=dict)

    @field_validator("config", mode="before")
    @classmethod
    def _strings(cls, value: object) -> object:
        if isinstance(value, dict):
            bad = sorted(k for k, v in value.items() if not isinstance(v, str))
            if bad:
                raise ValueError(f"Kafka config values must be quoted strings (e.g. \"3600000\"): {', '.join(bad)}")
        return value

    @field_validator("config")
    @classmethod
    def _numbers(cls, value: dict[str, str]) -> dict[str, str]:
        for key in ("retention.ms", "max.message.bytes"):
            if key in value and not value[key].lstrip("-").isdigit():
                raise ValueError(f"{key} must be an integer string, got {value[key]!r}")
        return value

    @property
    def retention_ms(self) -> int:
        return int(self.config.get("retention.ms", "604800000"))

    @property
    def max_message_bytes(self) -> int:
        return int(self.config.get("max.message.bytes", "1048588"))


class TopicDefinitions(BaseModel):
    """``topics.yaml``: cluster durability (used by the topic Job) and one definition per product topic."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    replicas: int = Field(3, ge=1, le=16, description="Replication factor on a real cluster.")
    min_insync_replicas: int = Field(2, ge=1, alias="minInsyncReplicas")
    topics: dict[str, TopicDefinition]

    @field_validator("topics")
    @classmethod
    def _all_topics(cls, value: dict[str, TopicDefinition]) -> dict[str, TopicDefinition]:
        missing = [t for t in BASE_TOPICS if t not in value]
        unknown = sorted(set(value) - set(BASE_TOPICS))
        if missing or unknown:
            raise ValueError(f"must define exactly the product's topics {', '.join(BASE_TOPICS)}"
                             + (f"; missing: {', '.join(missing)}" if missing else "")
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        return value

    @field_validator("min_insync_replicas")
    @classmethod
    def _isr(cls, value: int, info) -> int:  # noqa: ANN001 - pydantic's ValidationInfo
        replicas = info.data.get("replicas")
        if replicas is not None and value > replicas:
            raise ValueError(f"minInsyncReplicas ({value}) must not exceed replicas ({replicas})")
        return value


def read_topic_definitions(path: str | os.PathLike[str] | None = None) -> TopicDefinitions:
    """Read and validate ``topics.yaml`` (default ``TOPICS_FILE``, the package's own).

    Raises:
        ValueError: the file is missing, not YAML, or a field is wrong (named with its path in the file).

    Example:
        >>> defs = read_topic_definitions()
        >>> defs.topics["frames"].partitions >= 1, sorted(defs.topics) == sorted(BASE_TOPICS)
        (True, True)
    """
    file = Path(path) if path is not None else TOPICS_FILE
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise ValueError(f"topic definitions not found: {file} ({exc.strerror}); "
                         "they live in services/contracts/topics.yaml of the repository") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{file} is not valid YAML: {exc}") from None
    try:
        return TopicDefinitions.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{file}: invalid topic definitions: {problems}") from None
