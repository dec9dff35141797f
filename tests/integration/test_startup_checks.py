"""``--check`` against the real servers, and the start-up failures that happen next to reachable ones.

Every case runs the service's real console entry point as a subprocess: a broken bundle or refused credentials end
in one line on stderr and exit status 2; ``--check`` prints one ``ok`` line per dependency and exits 0.
"""

from __future__ import annotations

import uuid

import cv2
import numpy as np
import pytest

from devtools.localstack import create_bucket
from tests.services._entry import one_line_error, run_service

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from ddad_core.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", image_size=64, seed=0)


@pytest.fixture
def servers(kafka_bootstrap_servers, redis_url, s3_client_kwargs):
    bucket = f"check-{uuid.uuid4().hex[:10]}"
    create_bucket(s3_client_kwargs, bucket)
    s3 = s3_client_kwargs
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers, "REDIS_URL": redis_url,
            "OBJECT_STORE_URL": f"s3://{bucket}/objects", "S3_ENDPOINT_URL": s3["endpoint_url"],
            "S3_ACCESS_KEY_ID": s3["aws_access_key_id"], "S3_SECRET_ACCESS_KEY": s3["aws_secret_access_key"],
            "S3_REGION": s3["region_name"], "HTTP_PORT": "-1"}


def _env(prefix: str, common: dict[str, str], **extra: str) -> dict[str, str]:
    return {f"{prefix}_{k}": v for k, v in {**common, **extra}.items()}


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "000.png"), np.full((64, 64, 3), 128, np.uint8))
    return images


def _report(proc) -> dict[str, str]:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    # "<service> check: <dependency, 12 wide> ok      <detail>"
    return {line.split("check: ", 1)[1][:12].strip(): line for line in proc.stdout.splitlines()}


def test_check_connects_to_every_dependency(servers, bundle, folder):
    worker = _report(run_service("worker", _env("WORKER", servers, BUNDLE_PATH=str(bundle), MAX_BATCH_SIZE="2"),
                                 "--check", timeout=300))
    assert sorted(worker) == ["bundle", "kafka", "model", "object store", "overlay", "redis"]
    assert all(" ok " in line for line in worker.values())
    assert "(no alias)" in worker["bundle"]  # a fixed bundle path: no registry alias to follow
    assert "WORKER_OVERLAY_PRODUCT unset" in worker["overlay"]
    assert "1 broker(s)" in worker["kafka"] and "topics " in worker["kafka"]  # present or named as missing
    assert ": redis " in worker["redis"]  # the server answered PING and told its version
    assert servers["OBJECT_STORE_URL"].split("/")[2] in worker["object store"]
    assert "warm-up batch of 2" in worker["model"]

    alerter = _report(run_service("alerter", _env("ALERTER", servers, BUNDLE_PATH=str(bundle)), "--check"))
    assert sorted(alerter) == ["kafka", "redis", "rules"] and "calibration of" in alerter["rules"]

    ingestor = _report(run_service("ingestor", _env("INGESTOR", servers, SOURCE=str(folder)), "--check"))
    assert sorted(ingestor) == ["kafka", "object store", "source"] and "folder" in ingestor["source"]


def test_worker_missing_or_broken_bundle(servers, tmp_path):
    env = _env("WORKER", servers, BUNDLE_PATH=str(tmp_path / "nowhere"))
    line = one_line_error(run_service("worker", env, timeout=300))
    assert line.startswith("worker: model: model bundle directory not found") and "WORKER_BUNDLE_PATH" in line
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text('{"schema_version": 1, "model_version": 3')
    line = one_line_error(run_service("worker", {**env, "WORKER_BUNDLE_PATH": str(broken)}, timeout=300))
    assert line.startswith("worker: model: ") and "not valid JSON" in line


def test_object_store_refuses_wrong_credentials_or_a_missing_bucket(servers, folder):
    env = _env("INGESTOR", servers, SOURCE=str(folder))
    line = one_line_error(run_service("ingestor", {**env, "INGESTOR_S3_SECRET_ACCESS_KEY": "not-the-secret"}))
    assert "access denied: wrong or missing S3 access key / secret" in line
    assert "INGESTOR_OBJECT_STORE_URL" in line and "not-the-secret" not in line
    line = one_line_error(run_service("ingestor", {**env, "INGESTOR_OBJECT_STORE_URL": "s3://no-such-bucket-x/o"}))
    assert "S3 bucket 'no-such-bucket-x'" in line and "no such bucket" in line


def test_redis_refuses_wrong_credentials(servers, redis_url):
    # The local Redis accepts any password for its default user; a user it does not know is refused.
    url = redis_url.replace("redis://", "redis://nobody:wrong@")
    line = one_line_error(run_service("alerter", _env("ALERTER", servers, REDIS_URL=url)))
    assert line.startswith("alerter: redis: Redis at redis://nobody:**********@") and "wrong" not in line
