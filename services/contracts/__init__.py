"""Wire contracts shared by every service: what travels on the Kafka topics (versioned pydantic v2 models)."""

from services.contracts.defects import DefectAlert
from services.contracts.frames import Frame, FrameDecodeError
from services.contracts.results import BoundingBox, InspectionResult
from services.contracts.topics import SCHEMA_VERSION, Topics

__all__ = ["SCHEMA_VERSION", "BoundingBox", "DefectAlert", "Frame", "FrameDecodeError", "InspectionResult", "Topics"]
