"""The worker's bundle init container (``deploy/bundle/fetch_bundle.py``) against the real S3 server.

Flow step: deployment (model rollout). A bundle fitted by the real recipe (tiny components) is uploaded to the
test S3 server; the fetcher must place it only when bundle.json matches the pinned hash and every tensor file
matches bundle.json, and say which file is wrong otherwise, leaving no partial bundle behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from ddad_core.bundle import bundle_hash, load_bundle
from ddad_core.testing import make_tiny_bundle
from tests.helm._chart import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FETCH = REPO / "deploy" / "bundle" / "fetch_bundle.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def uploaded(bundle: Path, s3_client_kwargs: dict) -> tuple[str, object]:
    client = boto3.client("s3", **s3_client_kwargs)
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for file in bundle.iterdir():
        client.upload_file(str(file), bucket, f"bundles/v1/{file.name}")
    return f"s3://{bucket}/bundles/v1", client


def _fetch(url: str, sha256: str, dest: Path, s3: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUNDLE_")}
    env.update(BUNDLE_OBJECT_STORE_URL=url, BUNDLE_SHA256=sha256, BUNDLE_DEST=str(dest),
               BUNDLE_S3_ENDPOINT_URL=s3["endpoint_url"], BUNDLE_S3_ACCESS_KEY_ID=s3["aws_access_key_id"],
               BUNDLE_S3_SECRET_ACCESS_KEY=s3["aws_secret_access_key"],
               BUNDLE_S3_REGION=s3.get("region_name", "us-east-1"))
    return subprocess.run([sys.executable, str(FETCH)], env=env, capture_output=True, text=True, timeout=180)


def test_a_verified_bundle_is_placed_and_loads(bundle, uploaded, s3_client_kwargs, tmp_path: Path) -> None:
    url, _ = uploaded
    dest = tmp_path / "models" / "bundle"
    done = _fetch(url, bundle_hash(bundle), dest, s3_client_kwargs)
    assert done.returncode == 0, done.stderr
    assert f"-> {dest}" in done.stdout
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in bundle.iterdir())
    config, tensors = load_bundle(dest)  # the worker's own check passes too
    assert tensors and bundle_hash(dest) == bundle_hash(bundle)
    assert [p.name for p in dest.parent.iterdir()] == ["bundle"]  # no staging folder left


def test_a_bundle_other_than_the_pinned_one_is_refused(bundle, uploaded, s3_client_kwargs, tmp_path: Path) -> None:
    url, _ = uploaded
    dest = tmp_path / "bundle"
    done = _fetch(url, hashlib.sha256(b"another bundle").hexdigest(), dest, s3_client_kwargs)
    assert done.returncode == 2 and "not the bundle this release expects" in done.stderr
    assert not dest.exists()


def test_a_replaced_tensor_file_is_named_and_nothing_is_placed(bundle, uploaded, s3_client_kwargs,
                                                               tmp_path: Path) -> None:
    url, client = uploaded
    bucket = url.split("/")[2]
    victim = sorted(p.name for p in bundle.glob("*.safetensors"))[0]
    client.put_object(Bucket=bucket, Key=f"bundles/v1/{victim}", Body=b"not the weights")
    dest = tmp_path / "bundle"
    dest.mkdir()
    (dest / "old.txt").write_text("previous bundle")  # a failed fetch keeps what was there
    done = _fetch(url, bundle_hash(bundle), dest, s3_client_kwargs)
    assert done.returncode == 2 and f"{victim}: SHA-256" in done.stderr and "corrupt or was replaced" in done.stderr
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_missing_file_and_a_bad_setting_are_one_line_each(bundle, uploaded, s3_client_kwargs,
                                                            tmp_path: Path) -> None:
    url, client = uploaded
    bucket = url.split("/")[2]
    victim = sorted(p.name for p in bundle.glob("*.safetensors"))[-1]
    client.delete_object(Bucket=bucket, Key=f"bundles/v1/{victim}")
    done = _fetch(url, bundle_hash(bundle), tmp_path / "bundle", s3_client_kwargs)
    assert done.returncode == 2 and f"{victim} is missing (listed in bundle.json)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    bad = _fetch(url, "abc", tmp_path / "bundle", s3_client_kwargs)
    assert bad.returncode == 2 and "BUNDLE_SHA256" in bad.stderr
