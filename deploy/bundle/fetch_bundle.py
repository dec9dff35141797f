"""Download a model bundle from the object store and verify it before the worker starts (an init container).

Flow step: deployment (model rollout). The worker pod's init container runs, in the worker image::

    python /app/deploy/bundle/fetch_bundle.py

Settings are ``BUNDLE_*`` environment variables: ``BUNDLE_OBJECT_STORE_URL`` (``s3://bucket/prefix`` of the bundle
folder, or ``file:///dir``), ``BUNDLE_SHA256`` (the SHA-256 of ``bundle.json``, i.e. the bundle's ``bundle_hash``),
``BUNDLE_DEST`` (default ``/models/bundle``), and the S3 endpoint and credentials every service has
(``BUNDLE_S3_ENDPOINT_URL``, ``BUNDLE_S3_REGION``, ``BUNDLE_S3_ACCESS_KEY_ID``, ``BUNDLE_S3_SECRET_ACCESS_KEY``; empty
credentials use boto's chain, e.g. workload identity).

``bundle.json`` is checked against the pinned hash first, then every tensor file it lists against the hash it
records; files are written to a temporary folder beside the destination and moved into place only when all match,
so a worker never sees a partial or unverified bundle. A mismatch or a missing file is one line on stderr, exit 2.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing it

from ddad_core.bundle import BUNDLE_CONFIG_NAME, BundleError, read_bundle_config  # noqa: E402
from services._config import EXIT_BAD_CONFIG, CommonSettings, load_settings  # noqa: E402
from services._object_store import ObjectNotFoundError, S3ObjectStore, open_object_store  # noqa: E402


class BundleFetchSettings(CommonSettings):
    """Settings of the bundle fetcher (``BUNDLE_*``); ``object_store_url`` is the bundle folder."""

    model_config = SettingsConfigDict(env_prefix="BUNDLE_")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of bundle.json (the bundle_hash).")
    dest: Path = Field(Path("/models/bundle"), description="Where the verified bundle is placed.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(store: Any, key: str, target: Path) -> None:
    """One object to a file; S3 streams (a UNet can be a gigabyte), a local store copies."""
    if isinstance(store, S3ObjectStore):
        from botocore.exceptions import ClientError

        try:
            store.client.download_file(store.bucket, store._full_key(key), str(target))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFoundError(store.uri_for(key)) from exc
            raise BundleError(f"{store.uri_for(key)}: S3 error {code} (credentials, bucket policy?)") from None
    else:
        target.write_bytes(store.get(store.uri_for(key)))


def fetch_bundle(settings: BundleFetchSettings) -> str:
    """Download, verify and place the bundle; returns one line describing it.

    Raises:
        BundleError: a hash does not match, a file is missing, or ``bundle.json`` is invalid.
    """
    store = open_object_store(settings.object_store_url, settings.s3_client_kwargs(),
                              connect_timeout_s=settings.connect_timeout_s)
    dest = settings.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dest.parent))
    try:
        try:
            _download(store, BUNDLE_CONFIG_NAME, staging / BUNDLE_CONFIG_NAME)
        except ObjectNotFoundError:
            raise BundleError(f"{settings.object_store_url}: no {BUNDLE_CONFIG_NAME} there") from None
        config_hash = _sha256(staging / BUNDLE_CONFIG_NAME)
        if config_hash != settings.sha256:
            raise BundleError(f"{settings.object_store_url}/{BUNDLE_CONFIG_NAME} has SHA-256 {config_hash[:16]}..., "
                              f"BUNDLE_SHA256 pins {settings.sha256[:16]}...: not the bundle this release expects")
        config = read_bundle_config(staging)
        for name, expected in sorted(config.files.items()):
            file = f"{name}.safetensors"
            try:
                _download(store, file, staging / file)
            except ObjectNotFoundError:
                raise BundleError(f"{settings.object_store_url}: {file} is missing (listed in bundle.json)") from None
            actual = _sha256(staging / file)
            if actual != expected:
                raise BundleError(f"{settings.object_store_url}/{file}: SHA-256 {actual[:16]}... but bundle.json "
                                  f"records {expected[:16]}...; the object is corrupt or was replaced")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
        return f"bundle {config.model_version} ({len(config.files)} files, bundle.json {config_hash[:12]}...) -> {dest}"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> int:
    """Fetch and verify; 0 on success, 2 with one line on stderr otherwise."""
    try:
        settings = load_settings(BundleFetchSettings)
        print(f"fetch-bundle: {fetch_bundle(settings)}", flush=True)
    except (ValueError, BundleError, OSError) as exc:
        print(f"fetch-bundle: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
