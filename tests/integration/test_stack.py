"""``inspection-stack up`` and the README's by-hand walk-through, every process started as a user would.

stack up (Kafka, Redis, S3 in the foreground, topics created, environment printed and written) -> worker with a
bundle -> alerter -> ingestor on an image folder -> ``results`` and ``defects`` read with a plain kafka-python
consumer -> SIGTERM to the services (clean shutdown, no error lines) -> Ctrl-C (SIGINT) to the stack, which stops
every server.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import pytest

from tests.services._entry import REPO, clean_env, entry, error_lines
from tests.services._helpers import texture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class _Lines:
    """Collects a process's output lines on a thread, so the test can wait for one without blocking."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self._thread.start()

    def wait_for(self, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{''.join(self.lines)}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout_s} s:\n{''.join(self.lines)}"
            time.sleep(0.2)


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


def _wait_ready(port: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("service not ready")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return err


def test_stack_up_then_the_services_by_hand_then_ctrl_c(tmp_path):
    from kafka import KafkaAdminClient, KafkaConsumer

    from ddad_core.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle", image_size=64, seed=0)
    folder = tmp_path / "camera"
    folder.mkdir()
    for i in range(6):
        kind = "defect" if i in (1, 4) else "good"
        cv2.imwrite(str(folder / f"{i:03d}_{kind}.png"), texture(100 + i, 64, defect=kind == "defect"))

    stack = subprocess.Popen([*entry("stack"), "up", "--workdir", str(tmp_path / "stack")], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out = _Lines(stack.stdout)
    services: list[subprocess.Popen] = []
    try:
        out.wait_for("running; Ctrl-C stops everything", stack, 240)
        env = _read_env_file(tmp_path / "stack" / "stack.env")
        printed = "".join(out.lines)
        assert all(f"export {k}=" in printed for k in env)  # what it printed is what it wrote

        # the topics exist and the S3 bucket answers, before any service ran
        admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        assert {"frames", "frames.dlq", "results", "defects"} <= set(admin.list_topics())
        admin.close()
        assert env["WORKER_OBJECT_STORE_URL"] == "s3://inspection/objects"

        def start(service: str, **extra: str) -> subprocess.Popen:
            prefix = f"{service.upper()}_"
            own = {k: v for k, v in env.items() if k.startswith(prefix)}
            own.update({prefix + k: v for k, v in extra.items()})
            proc = subprocess.Popen(entry(service), cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env(**own))
            services.append(proc)
            return proc

        # No age limit here: on a busy test machine "auto" could drop a frame and make the count below flaky.
        worker = start("worker", BUNDLE_PATH=str(bundle), MAX_FRAME_AGE_MS="0")
        alerter = start("alerter", BUNDLE_PATH=str(bundle))
        _wait_ready(env["WORKER_HTTP_PORT"], worker)
        _wait_ready(env["ALERTER_HTTP_PORT"], alerter)
        ingest = subprocess.run(entry("ingestor"), cwd=REPO, capture_output=True, text=True, timeout=120,
                                env=clean_env(**{k: v for k, v in env.items() if k.startswith("INGESTOR_")},
                                              INGESTOR_SOURCE=str(folder), INGESTOR_CAMERA_ID="line1-cam"))
        assert ingest.returncode == 0, ingest.stderr

        # a standard client reads the outputs
        consumer = KafkaConsumer("results", "defects", bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
                                 group_id="by-hand-reader", auto_offset_reset="earliest")
        seen: dict[str, list[dict]] = {"results": [], "defects": []}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (len(seen["results"]) < 6 or not seen["defects"]):
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    seen[r.topic].append(json.loads(r.value))
        consumer.close()
        assert sorted(r["source"] for r in seen["results"]) == sorted(p.name for p in folder.iterdir())
        assert all(r["kind"] == "inspected" and r["threshold"] == 0.5 for r in seen["results"])
        assert seen["defects"] and all(a["mask_uri"].startswith("s3://inspection/objects/masks/line1-cam/")
                                       for a in seen["defects"])
        assert any(a["source"].endswith("_defect.png") for a in seen["defects"])

        # SIGTERM: drain, commit, leave the group; nothing at error level, no traceback
        for proc in (worker, alerter):
            err = _stop(proc)
            assert not error_lines(err) and "AttributeError" not in err, err
    finally:
        for proc in services:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if stack.poll() is None:
            stack.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        stack.wait(120)
    assert stack.returncode == 0, "".join(out.lines)
    assert "[stack] stopped" in "".join(out.lines)
    host, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    with pytest.raises(OSError):  # every server is gone with it
        socket.create_connection((host, int(port)), timeout=2).close()

