"""The ``frames`` record: one camera frame, the image inline or behind a claim-check URI.

Flow step: camera -> Kafka ``frames`` (written by the ingestor, read by the worker).

Wire format (compact binary, no base64 inflation of the image)::

    b"DDF" | version byte (1) | uint32 big-endian header length | header JSON (utf-8) | encoded image bytes

The header is the pydantic model without ``image``. A frame whose encoded image is larger than the ingestor's
``inline_limit_bytes`` is stored in the object store and the header carries ``image_uri`` instead (claim check):
Kafka's default ``max.message.bytes``/``max_request_size`` is 1 MiB, too small for raw industrial frames.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.contracts.topics import FRAMES_SCHEMA_VERSION

_MAGIC = b"DDF"
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER_BYTES = 64 * 1024

# Ids end up in Redis keys, object-store paths and metric-free log fields: keep them path- and key-safe.
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]


def _require_utc(value: datetime) -> datetime:
    # Naive datetimes silently shift latencies by the host's UTC offset: refuse them.
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return value.astimezone(UTC)


# Every timestamp on the wire: timezone-aware, normalised to UTC.
UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]


class JsonRecord(BaseModel):
    """Base of the JSON-encoded topics (``results``, ``defects``): one encoding, one parse error type."""

    def to_bytes(self) -> bytes:
        """JSON record value."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes):
        """Parse a record value (raises ``pydantic.ValidationError`` on a bad record)."""
        return cls.model_validate_json(data)


class FrameDecodeError(ValueError):
    """A ``frames`` record that cannot be parsed; ``reason`` is a short machine-readable DLQ reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Frame(BaseModel):
    """One captured frame.

    Example:
        >>> f = Frame(frame_id="cam1-1", camera_id="cam1", sequence=1, encoding="jpeg", width=4, height=4,
        ...           image=b"...", captured_at=datetime(2026, 1, 1, tzinfo=UTC))
        >>> Frame.from_bytes(f.to_bytes()) == f
        True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = FRAMES_SCHEMA_VERSION
    frame_id: Identifier = Field(description="Unique id of this frame; every downstream write is keyed by it.")
    camera_id: Identifier = Field(description="Source camera; also the Kafka key.")
    line_id: Identifier = Field("line-1", description="Production line the camera watches.")
    product_id: Identifier | None = Field(None, description="Product/variant on the line, if known.")
    captured_at: UtcDatetime = Field(description="Capture time (timezone-aware, UTC); latencies are measured from it.")
    sequence: int = Field(ge=0, description="Per-camera frame counter of the ingestor.")
    encoding: Literal["jpeg", "png"] = Field(description="Encoding of the image bytes.")
    width: int = Field(gt=0, le=32768)
    height: int = Field(gt=0, le=32768)
    image: bytes | None = Field(None, description="Encoded image inline (small frames).")
    image_uri: str | None = Field(None, max_length=2048, pattern=r"^[a-z][a-z0-9+.-]*://[^\x00-\x1f\x7f]+$",
                                  description="Claim-check URI in the object store (large frames); the worker reads "
                                              "only URIs inside its own store.")
    source: str | None = Field(None, max_length=512, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
                               description="Where the frame came from (file name, stream URL); no control characters.")

    @model_validator(mode="after")
    def _one_payload(self) -> Frame:
        if (self.image is None) == (self.image_uri is None):
            raise ValueError("exactly one of image (inline bytes) and image_uri (claim check) must be set")
        if self.image is not None and not self.image:
            raise ValueError("image is empty")
        return self

    def to_bytes(self) -> bytes:
        """Encode as the binary envelope described in the module docstring."""
        header = self.model_dump_json(exclude={"image"}).encode("utf-8")
        version = bytes([FRAMES_SCHEMA_VERSION])
        return b"".join((_MAGIC, version, _HEADER_LEN.pack(len(header)), header, self.image or b""))

    @classmethod
    def from_bytes(cls, data: bytes) -> Frame:
        """Decode a record value.

        Any input (arbitrary bytes, None, a hostile header) either returns a valid ``Frame`` or raises
        ``FrameDecodeError``, never another exception (property test:
        tests/services/test_frame_decoder_property.py).

        Raises:
            FrameDecodeError: with reason ``bad_envelope``, ``unsupported_schema`` or ``invalid_frame``.
        """
        if not isinstance(data, bytes | bytearray | memoryview | None):
            raise FrameDecodeError("bad_envelope", f"value is a {type(data).__name__}, not bytes")
        data = bytes(data) if data is not None else None
        if data is None or len(data) < 8 or data[:3] != _MAGIC:
            raise FrameDecodeError("bad_envelope", "value does not start with the DDF frame magic")
        if data[3] != FRAMES_SCHEMA_VERSION:
            raise FrameDecodeError("unsupported_schema",
                                   f"frame schema version {data[3]} (supported: {FRAMES_SCHEMA_VERSION})")
        (header_len,) = _HEADER_LEN.unpack_from(data, 4)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > len(data):
            raise FrameDecodeError("bad_envelope", f"header length {header_len} exceeds the record ({len(data)} bytes)")
        try:
            fields = json.loads(data[8 : 8 + header_len])
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON arrays or objects
            raise FrameDecodeError("bad_envelope", f"header is not JSON: {str(exc)[:200]}") from None
        if not isinstance(fields, dict):
            raise FrameDecodeError("bad_envelope", "header is not a JSON object")
        if "image" in fields:
            raise FrameDecodeError("invalid_frame", "image bytes belong after the header, not inside it")
        payload = data[8 + header_len :]
        if payload:
            fields["image"] = payload
        try:
            frame = cls.model_validate(fields)
        except ValidationError as exc:
            raise FrameDecodeError("invalid_frame", _short_errors(exc)) from exc
        return frame

    @property
    def captured_ts(self) -> float:
        """Capture time as POSIX seconds."""
        return self.captured_at.timestamp()


def _short_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'frame'}: {e['msg']}" for e in exc.errors())[:500]
