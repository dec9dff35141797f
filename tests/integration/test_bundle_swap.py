"""Bundle registry and live swap, against the real Kafka, Redis and S3 servers (marker ``integration``).

Two bundles are pushed to the registry (object store + Redis); a worker follows the alias ``line-1/production``
while a camera streams; the alias moves to the second bundle and back (rollback). Every frame gets exactly one
inspected result (none lost, none dropped as stale under a finite age limit), each record names the bundle that
inferred it, and the records switch bundles in order: first, second, first again.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from ddad_core.bundle import bundle_hash
from ddad_core.testing import make_tiny_bundle, synthetic_textures
from services._kafka import make_producer
from services._object_store import open_object_store
from services._redis import connect
from services._registry import BundleRegistry, RegistryError
from services.contracts.results import InspectionResult, parse_results_record
from tests.services._helpers import StreamEnv, TopicReader, png_frame, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ALIAS = "line-1/production"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return make_tiny_bundle(root / "a", num_images=20, recipe="fast"), make_tiny_bundle(
        root / "b", seed=1, num_images=20, recipe="fast"
    )


def test_alias_moves_swap_the_bundle_between_batches_without_losing_a_frame(
    kafka_bootstrap_servers, redis_url, s3_client_kwargs, bundles, tmp_path
):
    bucket = f"reg-{uuid.uuid4().hex[:10]}"
    open_object_store(f"s3://{bucket}", s3_client_kwargs, create_bucket=True)
    env = StreamEnv(kafka_bootstrap_servers, redis_url, f"s3://{bucket}/objects", s3_client_kwargs)
    env.create_topics()
    registry = BundleRegistry(connect(redis_url), open_object_store(env.object_store_url, s3_client_kwargs), env.prefix)
    hashes = [bundle_hash(b) for b in bundles]
    assert hashes[0] != hashes[1]
    for version, bundle in zip(("v1", "v2"), bundles, strict=True):
        manifest = registry.push(bundle, "line-1", version, "alice", figures={"image_auroc": 0.9})
        assert manifest["bundle_hash"] == bundle_hash(bundle) and manifest["recipe"]["name"] == "fast"
    with pytest.raises(RegistryError, match="exists with bundle hash"):
        registry.push(bundles[1], "line-1", "v1", "alice")  # a version never changes content
    with pytest.raises(RegistryError, match="no bundle line-1/v9"):
        registry.set_alias(ALIAS, "v9", "alice")
    registry.set_alias(ALIAS, "v1", "alice")

    worker = start_worker(
        env,
        None,
        bundle_alias=ALIAS,
        bundle_cache_dir=str(tmp_path / "cache"),
        bundle_refresh_s=0.2,
        max_frame_age_ms=10_000,
        warmup=True,
    )
    results = TopicReader(env, env.topics.results)
    images = synthetic_textures(8, 64, seed=3)
    total, sent = 150, []

    def camera() -> None:
        producer = make_producer(env.kafka)
        for i in range(total):
            frame = png_frame(images[i % len(images)], i + 1)
            producer.send(env.topics.frames, key=b"cam1", value=frame.to_bytes())
            sent.append(frame.frame_id)
            time.sleep(0.04)  # 25 frames/s
        producer.flush()
        producer.close()

    stream = threading.Thread(target=camera)
    try:
        stream.start()
        time.sleep(2.0)
        registry.set_alias(ALIAS, "v2", "alice")
        time.sleep(2.0)
        assert registry.set_alias(ALIAS, "v1", "bob")["previous"] == "v2"  # rollback
        stream.join()
        records = results.read_until(
            lambda rs: len({parse_results_record(r.value).frame_id for r in rs}) >= total, timeout_s=120
        )
    finally:
        stream.join()
        results.close()
        worker.join()
    assert worker.error is None, worker.error
    parsed = [parse_results_record(r.value) for r in records]
    inspected = [r for r in parsed if isinstance(r, InspectionResult)]
    assert len(parsed) == len(inspected), "a frame was dropped as stale"
    assert sorted({r.frame_id for r in inspected}) == sorted(sent)  # none lost
    order = [r.bundle_hash for r in sorted(inspected, key=lambda r: r.sequence)]
    runs = [h for i, h in enumerate(order) if i == 0 or h != order[i - 1]]
    assert runs == [hashes[0], hashes[1], hashes[0]], [h[:8] for h in runs]
    in_force = {s.labels["bundle_hash"]: s.value for m in REGISTRY.collect() if m.name == "inspection_model_info"
                for s in m.samples}  # fmt: skip
    assert (in_force[hashes[0]], in_force[hashes[1]]) == (1.0, 0.0)  # the metric names the bundle in force
