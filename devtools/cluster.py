"""``python -m devtools.cluster``: the chart's pods on ``scripts/e2e-cluster.sh``'s node, checked by their output.

Flow step: deployment, end to end (``bash scripts/e2e-cluster.sh run`` runs it after ``up``). It

1. prepares the demo's data and model (``devtools.demo``: generated fabric frames with planted defects, the 64 px
   fit) and a second bundle for the rolling update, and uploads both to the S3 server with their ``bundle.json``
   hashes;
2. installs the chart (``helm upgrade --install --wait``) with the values files given, the node's addresses of
   Kafka, Redis and S3, Secrets for the S3 keys and the dashboard token, and the first bundle;
3. streams the demo's frames into ``frames`` (as the ingestor publishes them) and counts results and alerts on
   ``defects`` against the planted defects (``devtools.demo.summarize``);
4. deletes a worker pod mid-stream (graceful, then forced: SIGKILL) and judges every frame with the fault suite's
   accounting (``tests/integration/_fault_harness.judge``: no frame lost, duplicates on ``results`` counted, one
   Redis record per frame);
5. rolls the workers to the second bundle under load and judges the same way;
6. records start-up times (pod created -> ready) and the pods' CPU and memory from the kubelet's summary API.

Everything lands in ``<workdir>/run-summary.json``; exit 0 only when every frame was accounted for in every phase.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shlex
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from devtools import demo
from services._kafka import make_consumer, make_producer
from services.contracts.defects import DefectAlert
from services.contracts.frames import Frame
from services.contracts.results import DroppedFrame, InspectionResult, parse_results_record
from tests.integration._fault_harness import ResultsLog, frames_for, ids_by_camera, judge
from tests.services._helpers import StreamEnv

BUCKET = "inspection"  # devtools.stack's default bucket


class Cluster:
    """kubectl and helm against the e2e node."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def kubectl(self, *cmd: str, check: bool = True, timeout: float = 600) -> str:
        argv = [self.args.kubectl, "--kubeconfig", self.args.kubeconfig, "-n", self.args.namespace, *cmd]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {shlex.join(cmd)}: {done.stderr.strip()}")
        return done.stdout

    def helm(self, *cmd: str, timeout: float = 1200) -> str:
        argv = [self.args.helm, "--kubeconfig", self.args.kubeconfig, "-n", self.args.namespace, *cmd]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"helm {cmd[0]}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def pods(self, component: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json")
        return json.loads(out)["items"]

    def ready_pods(self, component: str) -> list[str]:
        return [p["metadata"]["name"] for p in self.pods(component) if _ready_at(p) and not p["metadata"].get(
            "deletionTimestamp")]


def _ready_at(pod: dict[str, Any]) -> str | None:
    for cond in pod.get("status", {}).get("conditions", []):
        if cond["type"] == "Ready" and cond["status"] == "True":
            return cond["lastTransitionTime"]
    return None


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_stack_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def keep_route_localnet(bridge: str, stop: threading.Event) -> None:
    """Pods reach Redis and S3 on loopback through a DNAT rule; the kernel routes such packets only with
    route_localnet on the pods' bridge, which exists once the first pod runs."""
    knob = Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
    while not stop.wait(0.5):
        if knob.exists() and knob.read_text().strip() != "1":
            knob.write_text("1")


def upload_bundle(s3: Any, bundle: Path, name: str) -> tuple[str, str]:
    """Upload a bundle folder to ``s3://inspection/bundles/<name>``; returns ``(uri, sha256 of bundle.json)``."""
    for file in sorted(bundle.rglob("*")):
        if file.is_file():
            s3.upload_file(str(file), BUCKET, f"bundles/{name}/{file.relative_to(bundle)}")
    return f"s3://{BUCKET}/bundles/{name}", hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()


def secret(cluster: Cluster, name: str, data: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    subprocess.run([cluster.args.kubectl, "--kubeconfig", cluster.args.kubeconfig, "-n", cluster.args.namespace,
                    "apply", "-f", "-"], input=json.dumps(manifest), text=True, check=True, capture_output=True)


def startup_times(cluster: Cluster) -> dict[str, float]:
    """Seconds from pod creation to Ready, per ready pod (the bundle fetch, load and warm-up included)."""
    out = {}
    for pod in json.loads(cluster.kubectl("get", "pods", "-o", "json"))["items"]:
        ready = _ready_at(pod)
        if ready:
            out[pod["metadata"]["name"]] = round(_ts(ready) - _ts(pod["metadata"]["creationTimestamp"]), 1)
    return out


def pod_resources(cluster: Cluster, node: str) -> dict[str, dict[str, float]]:
    """CPU (millicores, the kubelet's last sample) and working-set memory (MiB) per pod of the namespace."""
    raw = subprocess.run([cluster.args.kubectl, "--kubeconfig", cluster.args.kubeconfig, "get", "--raw",
                          f"/api/v1/nodes/{node}/proxy/stats/summary"], capture_output=True, text=True, timeout=60)
    if raw.returncode != 0:
        return {"error": {"message": raw.stderr.strip()[:200]}}  # type: ignore[dict-item]
    out = {}
    for pod in json.loads(raw.stdout).get("pods", []):
        if pod["podRef"]["namespace"] != cluster.args.namespace:
            continue
        cpu = sum((c.get("cpu") or {}).get("usageNanoCores", 0) for c in pod.get("containers", []))
        mem = sum((c.get("memory") or {}).get("workingSetBytes", 0) for c in pod.get("containers", []))
        out[pod["podRef"]["name"]] = {"cpu_millicores": round(cpu / 1e6, 1), "memory_mib": round(mem / 2**20, 1)}
    return out


# ----------------------------------------------------------------------------------------------- phases


def install(cluster: Cluster, env: dict[str, str], bundle: tuple[str, str], wait: bool = True) -> float:
    """``helm upgrade --install`` with the values files, the node's addresses and ``bundle`` (uri, sha256); the
    values are given in full every time: ``--reuse-values`` would carry the files' ``null`` (a removed default)
    into the schema check, which refuses it."""
    a = cluster.args
    if wait:  # the first install; a rolling update finds the namespace and the Secrets in place
        subprocess.run([a.kubectl, "--kubeconfig", a.kubeconfig, "create", "namespace", a.namespace],
                       capture_output=True, check=False)
        secret(cluster, "inspection-s3", {"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                                          "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]})
        secret(cluster, "dashboard-token", {"token": base64.urlsafe_b64encode(hashlib.sha256(
            a.workdir.as_posix().encode() + str(time.time()).encode()).digest()).decode()[:32]})
    kafka_port = env["KAFKA_BOOTSTRAP_SERVERS"].rpartition(":")[2]
    redis_port = env["REDIS_URL"].rpartition(":")[2].partition("/")[0]
    s3_port = env["S3_ENDPOINT_URL"].rpartition(":")[2]
    sets = {
        "kafka.bootstrapServers": f"{a.node_ip}:{kafka_port}",
        "redis.url": f"redis://{a.node_ip}:{redis_port}/0",
        "objectStore.s3.endpointUrl": f"http://{a.node_ip}:{s3_port}",
        "objectStore.s3.region": env.get("AWS_REGION", "us-east-1"),
        "worker.bundle.objectStore.uri": bundle[0],
        "worker.bundle.objectStore.sha256": bundle[1],
    }
    t0 = time.monotonic()
    values = [arg for v in a.values for arg in ("-f", v)]
    setargs = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    waiting = ["--wait", "--timeout", "20m"] if wait else []
    cluster.helm("upgrade", "--install", a.release, str(a.chart), *values, *setargs, *waiting)
    return round(time.monotonic() - t0, 1)


def stream_demo(env: StreamEnv, manifest: dict, fps: float, timeout_s: float, run_id: str) -> dict:
    """The demo's camera folders, published into ``frames`` as the ingestor does, then counted like the demo."""
    topics = env.topics
    consumer = make_consumer(env.kafka, f"{env.prefix}-e2e-{time.time_ns()}", session_timeout_ms=10000,
                             heartbeat_interval_ms=1000)
    consumer.subscribe([topics.results, topics.defects, topics.frames_dlq])
    consumer.poll(timeout_ms=3000)
    frames = []
    streams = Path(manifest["streams"])
    for cam_dir in sorted(p for p in streams.iterdir() if p.is_dir()):
        for seq, image in enumerate(sorted(cam_dir.glob("*.png"))):
            import cv2

            h, w = cv2.imread(str(image)).shape[:2]
            frames.append(Frame(frame_id=f"{cam_dir.name}-{run_id}-{seq:05d}", camera_id=cam_dir.name, sequence=seq,
                                product_id=demo.CATEGORY, encoding="png", width=w, height=h,
                                image=image.read_bytes(), captured_at=datetime.now(UTC), source=image.name))
    frames.sort(key=lambda f: (f.sequence, f.camera_id))  # cameras interleaved, as concurrent ingestors
    sent_ids = {f.frame_id for f in frames}
    started = time.time()
    sender = threading.Thread(target=produce_live, args=(env, frames, fps))
    sender.start()
    results: dict[str, InspectionResult] = {}
    dropped: dict[str, DroppedFrame] = {}
    alerts: dict[str, DefectAlert] = {}
    dlq = 0
    deadline = time.monotonic() + timeout_s
    tail_until = None
    while time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            for rec in recs:
                if rec.topic == topics.results:
                    r = parse_results_record(rec.value)
                    if r.frame_id in sent_ids:  # this run's frames only (the topics outlive a run)
                        (dropped if isinstance(r, DroppedFrame) else results)[r.frame_id] = r
                elif rec.topic == topics.defects:
                    alert = DefectAlert.from_bytes(rec.value)
                    if alert.frame_id in sent_ids:
                        alerts[alert.alert_id] = alert
                else:  # frames.dlq
                    dlq += 1
        if len(results) + len(dropped) + dlq >= len(frames):
            tail_until = tail_until or time.monotonic() + 5  # alerts trail results by one hop
            if time.monotonic() > tail_until:
                break
    sender.join()
    consumer.close()
    return demo.summarize(results, alerts, len(frames), manifest["planted"], dlq, started, dropped)


def produce_live(env: StreamEnv, frames: list[Frame], fps: float) -> None:
    """Publish paced at ``fps``, each frame stamped when it is sent, as an ingestor stamps its capture time (frames
    stamped in advance would age in the queue and the workers would rightly drop them as stale)."""
    producer = make_producer(env.kafka)
    start = time.monotonic()
    for i, frame in enumerate(frames):
        time.sleep(max(0.0, start + i / fps - time.monotonic()))
        live = frame.model_copy(update={"captured_at": datetime.now(UTC)})
        producer.send(env.topics.frames, key=frame.camera_id.encode(), value=live.to_bytes())
    producer.flush(60)
    producer.close()


def under_load(env: StreamEnv, tag: str, per_camera: int, fps: float, fault: Any, fault_after_s: float,
               timeout_s: float) -> dict:
    """Publish frames at ``fps`` while ``fault()`` runs after ``fault_after_s``; judge every frame (``tag`` makes
    this run's frame ids unique)."""
    frames = frames_for([f"e{c}" for c in range(4)], per_camera, tag)
    log = ResultsLog(env)
    sender = threading.Thread(target=produce_live, args=(env, frames, fps))
    sender.start()
    time.sleep(fault_after_s)
    t_fault = time.monotonic()
    detail = fault()
    sender.join()
    expected = ids_by_camera(frames)
    wanted = {f.frame_id for f in frames}
    # Settled: every frame has a result or a `dropped` record (the workers' frame-age policy, counted apart).
    log.read(lambda _: wanted <= set(log.frame_ids()) | dropped_ids(log), timeout_s)
    settled_at = time.monotonic()
    outcome = judge(tag, env, log, expected, t_fault, 0.1, **detail)
    dropped = dropped_ids(log) & wanted
    outcome.dropped = len(dropped)
    outcome.lost = len(wanted - set(log.frame_ids()) - dropped)
    outcome.recovery_s = round(settled_at - t_fault, 1) if outcome.lost == 0 else None
    log.close()
    return outcome.row()


def dropped_ids(log: ResultsLog) -> set[str]:
    """Frame ids with a ``dropped`` record on ``results`` (too old when their batch formed)."""
    parsed = (parse_results_record(r.value) for r in log.records)
    return {r.frame_id for r in parsed if isinstance(r, DroppedFrame)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--kubectl", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--helm", required=True)
    p.add_argument("--node-ip", required=True)
    p.add_argument("--node", default="ddad-node")
    p.add_argument("--bridge", required=True)
    p.add_argument("--namespace", default="inspection")
    p.add_argument("--release", default="insp")
    p.add_argument("--chart", type=Path, default=Path(__file__).resolve().parents[1] / "helm" / "ddad-inspection")
    p.add_argument("--values", action="append", default=[])
    p.add_argument("--fps", type=float, default=4.0, help="frames/s offered, all cameras together")
    p.add_argument("--frames-per-camera", type=int, default=25, help="per camera and phase")
    p.add_argument("--timeout-s", type=float, default=600.0)
    args = p.parse_args(argv)
    env = read_stack_env(args.workdir / "stack.env")
    s3_kwargs = {"endpoint_url": env["S3_ENDPOINT_URL"], "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                 "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"], "region_name": env.get("AWS_REGION")}
    stream_env = StreamEnv(bootstrap=env["KAFKA_BOOTSTRAP_SERVERS"], redis_url=env["REDIS_URL"],
                           object_store_url=f"s3://{BUCKET}/objects", s3_client_kwargs=s3_kwargs, prefix="")
    cluster = Cluster(args)
    stop = threading.Event()
    threading.Thread(target=keep_route_localnet, args=(args.bridge, stop), daemon=True).start()
    run_id = uuid.uuid4().hex[:6]
    summary: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "run_id": run_id}

    def say(msg: str) -> None:
        print(f"[cluster] {msg}", flush=True)

    try:
        demo_args = demo.parse_args(["--workdir", str(args.workdir / "demo")])
        manifest = demo.prepare_data(args.workdir / "demo" / "data", demo_args.image_size, demo_args.cameras,
                                     demo_args.frames_per_camera, demo_args.defect_rate, demo_args.train_images)
        bundle, how = demo.ensure_model(args.workdir / "demo", manifest, demo_args)
        from ddad_core.testing import make_tiny_bundle

        second = args.workdir / "bundle-v2"
        if not (second / "bundle.json").exists():
            make_tiny_bundle(second, image_size=demo_args.image_size, seed=1)
        s3 = boto3.client("s3", **s3_kwargs)
        first_ref, second_ref = upload_bundle(s3, bundle, "v1"), upload_bundle(s3, second, "v2")
        say(f"bundles uploaded: v1 {first_ref[1][:12]} ({how}), v2 {second_ref[1][:12]}")

        summary["install_s"] = install(cluster, env, first_ref)
        summary["startup_s"] = startup_times(cluster)
        say(f"chart installed in {summary['install_s']} s; pod created -> ready (s): {summary['startup_s']}")
        if len(cluster.ready_pods("worker")) < 1:
            raise RuntimeError("no worker pod is ready after the install")

        demo_summary = stream_demo(stream_env, manifest, args.fps, args.timeout_s, run_id)
        summary["demo"] = demo_summary
        summary["resources_after_demo"] = pod_resources(cluster, args.node)
        say(f"demo frames: {json.dumps(demo_summary)}")

        def delete_worker(force: bool) -> dict:
            victim = cluster.ready_pods("worker")[0]
            extra = ["--grace-period=0", "--force"] if force else []
            cluster.kubectl("delete", "pod", victim, "--wait=false", *extra)
            return {"deleted_pod": victim, "forced": force}

        per_camera = args.frames_per_camera
        window = per_camera * 4 / args.fps
        summary["pod_delete"] = under_load(stream_env, f"pod-delete-{run_id}", per_camera, args.fps,
                                           lambda: delete_worker(False), window / 3, args.timeout_s)
        say(f"worker pod deleted mid-stream: {json.dumps(summary['pod_delete'])}")
        _wait_workers(cluster, args.timeout_s)
        summary["pod_kill"] = under_load(stream_env, f"pod-kill-{run_id}", per_camera, args.fps,
                                         lambda: delete_worker(True), window / 3, args.timeout_s)
        say(f"worker pod force-deleted (SIGKILL) mid-stream: {json.dumps(summary['pod_kill'])}")
        _wait_workers(cluster, args.timeout_s)

        def roll() -> dict:
            t0 = time.monotonic()
            install(cluster, env, second_ref, wait=False)
            cluster.kubectl("rollout", "status", f"deployment/{args.release}-ddad-inspection-worker",
                            f"--timeout={int(args.timeout_s)}s")
            return {"rollout_s": round(time.monotonic() - t0, 1)}

        summary["rolling_update"] = under_load(stream_env, f"rolling-update-{run_id}", per_camera * 3, args.fps, roll,
                                               window / 4, args.timeout_s)
        say(f"rolling update to bundle v2 under load: {json.dumps(summary['rolling_update'])}")
        summary["startup_after_rollout_s"] = startup_times(cluster)
        summary["resources_end"] = pod_resources(cluster, args.node)
    finally:
        stop.set()
        (args.workdir / "run-summary.json").write_text(json.dumps(summary, indent=2))
        print(f"[cluster] summary: {args.workdir / 'run-summary.json'}", flush=True)
    phases = [summary["pod_delete"], summary["pod_kill"], summary["rolling_update"]]
    demo_ok = summary["demo"]["results_out"] + summary["demo"]["dropped_stale"] + summary["demo"][
        "dead_lettered"] == summary["demo"]["frames_in"]
    ok = demo_ok and all(ph["lost"] == 0 for ph in phases)
    print(json.dumps({k: summary[k] for k in ("demo", "pod_delete", "pod_kill", "rolling_update")}, indent=2))
    return 0 if ok else 1


def _wait_workers(cluster: Cluster, timeout_s: float) -> None:
    """Until the Deployment has all its workers ready again (the deleted pod replaced)."""
    cluster.kubectl("rollout", "status", f"deployment/{cluster.args.release}-ddad-inspection-worker",
                    f"--timeout={int(timeout_s)}s")


if __name__ == "__main__":
    sys.exit(main())
