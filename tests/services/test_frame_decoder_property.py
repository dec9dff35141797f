"""Property test of the frame decoder: arbitrary bytes and headers give a valid ``Frame`` or ``FrameDecodeError``.

``Frame.from_bytes`` runs on every record of the ``frames`` topic, which anything on the factory network may write
to; an exception of any other type would escape the worker's DLQ path. Hypothesis generates raw bytes, well-formed
envelopes around arbitrary JSON, and near-valid headers with one field broken at a time.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts.frames import Frame, FrameDecodeError

REASONS = {"bad_envelope", "unsupported_schema", "invalid_frame"}

pytestmark = pytest.mark.timeout(120)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)

_VALID = {"schema_version": 1, "frame_id": "cam1-000001", "camera_id": "cam1", "line_id": "line-1",
          "captured_at": "2026-01-01T00:00:00+00:00", "sequence": 1, "encoding": "jpeg", "width": 64, "height": 64}


def _envelope(header: bytes, payload: bytes = b"", version: int = 1, declared_len: int | None = None) -> bytes:
    n = len(header) if declared_len is None else declared_len
    return b"DDF" + bytes([version]) + struct.pack(">I", n) + header + payload


def _decode(data: bytes) -> Frame | None:
    try:
        frame = Frame.from_bytes(data)
    except FrameDecodeError as exc:
        assert exc.reason in REASONS, exc.reason
        assert isinstance(exc.detail, str)
        return None
    # Whatever parses is a frame the rest of the worker can trust: it re-encodes to itself.
    assert isinstance(frame, Frame)
    assert Frame.from_bytes(frame.to_bytes()) == frame
    return frame


_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode(data)


@_settings
@given(st.binary(max_size=512), st.binary(max_size=256), st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_arbitrary_envelope_fields(header: bytes, payload: bytes, version: int, declared_len: int) -> None:
    _decode(_envelope(header, payload, version, declared_len))


@_settings
@given(_json, st.binary(max_size=256))
def test_arbitrary_json_header(header: object, payload: bytes) -> None:
    _decode(_envelope(json.dumps(header).encode(), payload))


@_settings
@given(st.sampled_from(sorted(_VALID)), _json, st.binary(min_size=0, max_size=64), st.booleans())
def test_one_field_of_a_valid_header_replaced(field: str, value: object, payload: bytes, drop: bool) -> None:
    header = dict(_VALID)
    if drop:
        header.pop(field)
    else:
        header[field] = value
    _decode(_envelope(json.dumps(header).encode(), payload))


@_settings
@given(st.text(max_size=64), st.text(max_size=64), st.binary(min_size=1, max_size=64))
def test_hostile_ids_and_uris(camera_id: str, image_uri: str, payload: bytes) -> None:
    frame = _decode(_envelope(json.dumps({**_VALID, "camera_id": camera_id}).encode(), payload))
    if frame is not None:  # an id that passed is key- and path-safe
        assert frame.camera_id.isascii() and not set(frame.camera_id) & set("/<>\"' \t\r\n\x00")
    frame = _decode(_envelope(json.dumps({**_VALID, "image_uri": image_uri}).encode()))
    if frame is not None:
        assert frame.image_uri and "://" in frame.image_uri
        assert not any(ord(c) < 32 or ord(c) == 127 for c in frame.image_uri)


def test_known_hostile_headers() -> None:
    """The shapes found while writing the property (kept as plain examples so they stay covered)."""
    cases = [
        b"",
        b"DDF",
        _envelope(b"[" * 30_000 + b"]" * 30_000),  # nesting deeper than the JSON parser's recursion limit
        _envelope(b'{"width": 1' + b"0" * 5000 + b"}"),  # an integer longer than Python's str->int limit
        _envelope(b"\xff\xfe not utf-8"),
        _envelope(json.dumps({**_VALID, "image": "inline"}).encode(), b"x"),
        _envelope(json.dumps({**_VALID, "camera_id": "<script>alert(1)</script>"}).encode(), b"x"),
        _envelope(json.dumps({**_VALID, "camera_id": "cam\x00\x1b[31m"}).encode(), b"x"),
        _envelope(json.dumps({**_VALID, "source": "a\x1b[2Jb"}).encode(), b"x"),
        _envelope(json.dumps({**_VALID, "encoding": "webp"}).encode(), b"x"),
        _envelope(json.dumps({**_VALID, "schema_version": 2}).encode(), b"x"),
        _envelope(json.dumps(_VALID).encode(), b"x", version=2),
        _envelope(json.dumps({**_VALID, "width": 10**9}).encode(), b"x"),
    ]
    for data in cases:
        assert _decode(data) is None, data[:80]
    assert _decode(_envelope(json.dumps(_VALID).encode(), b"jpeg bytes")) is not None
    assert Frame.from_bytes(_envelope(json.dumps(_VALID).encode(), b"j")).captured_at == datetime(2026, 1, 1,
                                                                                                  tzinfo=UTC)
