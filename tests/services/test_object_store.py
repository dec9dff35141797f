"""Object store: the local filesystem store and S3 (against the real S3-compatible server fixture)."""

from __future__ import annotations

import uuid

import pytest

from services._object_store import LocalObjectStore, ObjectNotFoundError, S3ObjectStore, open_object_store


def _roundtrip(store):
    uri = store.put("masks/cam1/f1.png", b"\x89PNG one", "image/png")
    assert uri == store.uri_for("masks/cam1/f1.png")
    assert store.get(uri) == b"\x89PNG one"
    # same key, new bytes: a replay overwrites
    assert store.put("masks/cam1/f1.png", b"\x89PNG two", "image/png") == uri
    assert store.get(uri) == b"\x89PNG two"
    with pytest.raises(ObjectNotFoundError):
        store.get(store.uri_for("masks/cam1/missing.png"))
    for bad in ("../escape.png", "/abs.png", "a//b", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_local_store(tmp_path):
    store = open_object_store(f"file://{tmp_path}")
    assert isinstance(store, LocalObjectStore)
    _roundtrip(store)
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporary files
    with pytest.raises(ValueError):
        store.get("file:///etc/passwd")  # outside the root


def test_s3_store(s3_client_kwargs):
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    store = open_object_store(f"s3://{bucket}/env1", s3_client_kwargs, create_bucket=True)
    assert isinstance(store, S3ObjectStore)
    _roundtrip(store)
    assert store.uri_for("a/b.png") == f"s3://{bucket}/env1/a/b.png"


def test_bad_urls():
    with pytest.raises(ValueError):
        open_object_store("ftp://host/x")
    with pytest.raises(ValueError):
        open_object_store("s3://")
