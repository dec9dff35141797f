"""Wire contracts shared by every service: what travels on the Kafka topics (versioned pydantic v2 models)."""

from services.contracts.defects import DefectAlert
from services.contracts.frames import Frame, FrameDecodeError
from services.contracts.results import BoundingBox, DroppedFrame, InspectionResult, parse_results_record
from services.contracts.topics import (
    DEFECTS_SCHEMA_VERSION,
    FRAMES_SCHEMA_VERSION,
    RESULTS_SCHEMA_VERSION,
    Topics,
)

__all__ = ["DEFECTS_SCHEMA_VERSION", "FRAMES_SCHEMA_VERSION", "RESULTS_SCHEMA_VERSION", "BoundingBox", "DefectAlert",
           "DroppedFrame", "Frame", "FrameDecodeError", "InspectionResult", "Topics", "parse_results_record"]
