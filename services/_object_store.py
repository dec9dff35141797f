"""Object store for masks, heatmaps and claim-check frames: local filesystem or S3, behind one small interface.

Flow step: worker -> masks/heatmaps (PNG) and the bytes of flagged inline frames (kept for operators' marks);
ingestor -> large frames (claim check); worker <- claim-check frames; teacher and dashboard <- kept frames.
Keys are deterministic (``masks/{camera_id}/{frame_id}.png``), so a replayed frame overwrites its own objects.
URIs are ``file:///abs/path`` for the local store and ``s3://bucket/key`` for S3; ``get`` accepts either.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from services._config import StartupError


class ObjectNotFoundError(KeyError):
    """The URI points at nothing."""


class ObjectRefusedError(ValueError):
    """The URI is not this store's to read: another scheme, another bucket, outside the prefix or the root folder.

    Claim-check URIs arrive in frames anyone on the network can write; reading whatever they name would turn the
    worker into a file and URL reader (local files, other buckets, cloud metadata endpoints).
    """


class ObjectStoreUnavailable(RuntimeError):
    """The store did not answer or failed transiently (connection refused, timeout, 5xx, throttling, credentials).

    Not the frame's fault: the worker waits and retries instead of dead-lettering the frame.
    """


class ObjectStore(Protocol):
    """The whole interface the services use."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store ``data`` under ``key`` (overwriting) and return its URI."""

    def get(self, uri: str) -> bytes:
        """Read the object behind a URI inside this store.

        Raises:
            ObjectNotFoundError: nothing there. ObjectRefusedError: not a URI of this store.
            ObjectStoreUnavailable: the store failed transiently.
        """

    def uri_for(self, key: str) -> str:
        """The URI ``put(key, ...)`` returns, without writing."""

    def check(self) -> str:
        """Prove the store is usable now (one line describing it), or raise ``StartupError``."""


def _check_key(key: str) -> str:
    # Keys come from ids validated by the contracts, but a ".." would still escape the local root: refuse it.
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalObjectStore:
    """Files under a root directory (the default for one machine and for the demo).

    Writes go to a temporary file in the same directory and are renamed into place, so a reader never sees half a
    PNG and a crash mid-write leaves the previous version.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri_for(self, key: str) -> str:
        return (self.root / _check_key(key)).as_uri()

    def check(self) -> str:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StartupError(f"local object store {self.root} is not writable")
        return f"local folder {self.root.as_uri()}"

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self.root / _check_key(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:  # disk full, a lost network mount: the worker waits and retries
            raise ObjectStoreUnavailable(f"{path}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise ObjectStoreUnavailable(f"{path}: {exc}") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ObjectRefusedError(f"{uri!r} is not a file:// URI of the local store {self.root.as_uri()}")
        path = Path(unquote(parsed.path)).resolve()  # resolves symlinks and "..": checked after, not before
        if not path.is_relative_to(self.root):
            raise ObjectRefusedError(f"{uri!r} is outside the store root {self.root}")
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(uri) from exc
        except OSError as exc:
            raise ObjectStoreUnavailable(f"{uri}: {exc}") from exc


class S3ObjectStore:
    """An S3 bucket (AWS, MinIO or any S3-compatible server) through boto3.

    Args:
        bucket: Bucket name; created on first use when ``create_bucket`` is true (dev and tests).
        prefix: Key prefix inside the bucket (per environment).
        client_kwargs: Passed to ``boto3.client("s3", **client_kwargs)`` (endpoint_url, credentials, region).
    """

    def __init__(self, bucket: str, prefix: str = "", client_kwargs: dict[str, Any] | None = None,
                 create_bucket: bool = False, connect_timeout_s: float = 5.0) -> None:
        import boto3  # imported here so the local store works without touching botocore's slow import
        from botocore.config import Config

        kwargs = dict(client_kwargs or {})
        # Masks are small and writes are retried by the worker's at-least-once loop; bound boto's own retries so a
        # dead S3 endpoint fails a batch in seconds, not minutes.
        kwargs.setdefault("config", Config(retries={"max_attempts": 3, "mode": "standard"},
                                            connect_timeout=connect_timeout_s, read_timeout=30))
        self.client = boto3.client("s3", **kwargs)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def check(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = self.client.meta.endpoint_url
        where = f"bucket {self.bucket!r} at {endpoint}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            why = {"403": "access denied: wrong or missing S3 access key / secret",
                   "404": "no such bucket", "NoSuchBucket": "no such bucket"}.get(code, f"error {code}")
            raise StartupError(f"S3 {where}: {why}") from None
        except BotoCoreError as exc:  # unreachable endpoint, no credentials at all, bad endpoint URL
            raise StartupError(f"S3 {where}: {exc}") from None
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"

    def _full_key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise ObjectStoreUnavailable(f"s3://{self.bucket}/{full}: S3 error {code}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailable(f"s3://{self.bucket}/{full}: {exc}") from exc
        return f"s3://{self.bucket}/{full}"

    def get(self, uri: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        parsed = urlparse(uri)
        key = unquote(parsed.path).lstrip("/")
        inside = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        if parsed.scheme != "s3" or parsed.netloc != self.bucket or parsed.query or parsed.fragment:
            raise ObjectRefusedError(f"{uri!r} is outside this store ({inside}...)")
        try:
            if self.prefix and not key.startswith(self.prefix + "/"):
                raise ValueError(key)
            _check_key(key)
        except ValueError:
            raise ObjectRefusedError(f"{uri!r} is outside this store ({inside}...)") from None
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(uri) from exc
            raise ObjectStoreUnavailable(f"{uri}: S3 error {code}") from exc
        except BotoCoreError as exc:  # connection refused or reset, timeouts, a dead endpoint
            raise ObjectStoreUnavailable(f"{uri}: {exc}") from exc


def open_object_store(url: str, s3_client_kwargs: dict[str, Any] | None = None, create_bucket: bool = False,
                      connect_timeout_s: float = 5.0) -> LocalObjectStore | S3ObjectStore:
    """Open the store a settings URL names: ``file:///dir``, a plain path, or ``s3://bucket[/prefix]``.

    Example:
        >>> import tempfile; d = tempfile.mkdtemp()
        >>> store = open_object_store(d)
        >>> store.get(store.put("masks/cam1/f1.png", b"png"))
        b'png'
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"object store URL {url!r} names no bucket")
        return S3ObjectStore(parsed.netloc, parsed.path, s3_client_kwargs, create_bucket=create_bucket,
                             connect_timeout_s=connect_timeout_s)
    if parsed.scheme == "file":
        return LocalObjectStore(unquote(parsed.path))
    if parsed.scheme == "":
        return LocalObjectStore(url)
    raise ValueError(f"unsupported object store URL {url!r} (use file:///dir or s3://bucket/prefix)")


def open_checked(url: str, s3_client_kwargs: dict[str, Any] | None = None,
                 connect_timeout_s: float = 5.0) -> tuple[LocalObjectStore | S3ObjectStore, str]:
    """The ``object store`` start-up step: open the store a URL names and ``check()`` it.

    Raises:
        StartupError: unsupported URL, a local folder that cannot be created or written, an S3 bucket that does not
            answer, does not exist, or refuses the credentials.
    """
    try:
        store = open_object_store(url, s3_client_kwargs, connect_timeout_s=connect_timeout_s)
    except (ValueError, OSError) as exc:
        raise StartupError(str(exc)) from None
    return store, store.check()


def frame_object_key(camera_id: str, frame_id: str, encoding: str) -> str:
    """Key of a frame's encoded bytes: claim checks (the ingestor) and flagged frames the worker keeps."""
    return f"frames/{camera_id}/{frame_id}.{'jpg' if encoding == 'jpeg' else 'png'}"


def stored_frame(store: ObjectStore, camera_id: str, frame_id: str) -> bytes | None:
    """The frame's encoded bytes if the object store holds them (a claim check, or a flagged frame the worker
    kept), else None."""
    for encoding in ("jpeg", "png"):
        try:
            return store.get(store.uri_for(frame_object_key(camera_id, frame_id, encoding)))
        except (ObjectNotFoundError, ValueError):
            continue
    return None
