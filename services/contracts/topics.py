"""Topic names, record keys, header names and the schema version of every wire contract.

Flow step: the names every producer and consumer agree on. Topic names get an optional per-environment prefix
(``staging.frames``); keys are always the camera id so one camera's records stay ordered inside one partition.
"""

from __future__ import annotations

from dataclasses import dataclass

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
