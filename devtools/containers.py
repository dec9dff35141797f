"""The demo's services in the product's images: ``python -m devtools.demo --containers`` (podman).

Flow step: deployment (images), on one machine. Each service the demo starts becomes ``podman run`` of the image a
deployment runs, with the same console script: the services image (``deploy/docker/services.Dockerfile``) for the
ingestor, the alerter and the dashboard, the worker image for the worker. The containers share the host's network,
so the local stack's loopback ports are reachable, and run the way the compose file and the chart run them:
read-only root, ``/tmp`` as tmpfs, no capabilities, no new privileges. Every absolute path an environment variable
names (the bundle, a camera's frame folder) is mounted read-only at the same path. Settings pass by name
(``--env NAME``: the value stays out of the command line) from the demo's own environment.

``scripts/build-images.sh`` builds the images; ``CONTAINERS_CONF`` (which it writes where the machine needs runc and
lower rlimits) is honoured here because podman reads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devtools.demo import Processes
from devtools.localstack import ddad_home

SERVICES_IMAGE = "inspection-services:0.1.0"
WORKER_IMAGE = "inspection-worker:0.1.0-cuda13.0"
# As the compose file and the chart run them, on the host's network (the local stack listens on loopback).
CONTAINER_OPTIONS = "--network host --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges".split()
# module the demo runs -> console script the image runs (pyproject.toml's [project.scripts])
CONSOLE_SCRIPTS = {
    "services.ingestor": "inspection-ingestor",
    "services.worker": "inspection-worker",
    "services.alerter": "inspection-alerter",
    "services.dashboard": "inspection-dashboard",
}


class ContainersUnavailable(RuntimeError):
    """podman or one of the images is missing (one line: what to run)."""


def podman_env() -> dict[str, str]:
    """``CONTAINERS_CONF`` of the runtime set-up ``scripts/build-images.sh`` chose where the machine refuses podman's
    default (runc, lower rlimits); nothing when it did not need one or the caller already set it."""
    conf = ddad_home() / "containers" / "containers.conf"
    return {"CONTAINERS_CONF": str(conf)} if conf.exists() and "CONTAINERS_CONF" not in os.environ else {}


def require_images(images: tuple[str, ...]) -> None:
    """Raise ``ContainersUnavailable`` unless podman is on PATH and every image exists locally."""
    if shutil.which("podman") is None:
        raise ContainersUnavailable("podman not found: install Debian's podman (apt-get install podman runc)")
    env = {**os.environ, **podman_env()}
    missing = [i for i in images if subprocess.run(["podman", "image", "exists", i], env=env).returncode != 0]
    if missing:
        raise ContainersUnavailable(f"image(s) {', '.join(missing)} not built: run `bash scripts/build-images.sh`")


class ContainerProcesses(Processes):
    """``Processes`` whose services run in containers; ``stop`` also removes any container left behind."""

    def __init__(
        self, logdir: Path, run_id: str, services_image: str = SERVICES_IMAGE, worker_image: str = WORKER_IMAGE
    ) -> None:
        super().__init__(logdir)
        os.environ.update(podman_env())  # every podman command of the demo runs with it
        self.run_id = run_id
        self.images = {"services.worker": worker_image}
        self.default_image = services_image

    def container(self, name: str) -> str:
        return f"ddad-{self.run_id}-{name}"

    def command(self, name: str, module: str, env: dict[str, str]) -> list[str]:
        argv = ["podman", "run", "--rm", "--name", self.container(name), *CONTAINER_OPTIONS]
        mounts = sorted({v for v in env.values() if v.startswith("/") and Path(v).exists()})
        for path in mounts:
            argv += ["--volume", f"{path}:{path}:ro"]
        for key in env:
            argv += ["--env", key]
        return [*argv, self.images.get(module, self.default_image), CONSOLE_SCRIPTS[module]]

    def healthcheck(self, name: str) -> bool:
        """Run the image's HEALTHCHECK once in the named service's container; True when it passes."""
        done = subprocess.run(
            ["podman", "healthcheck", "run", self.container(name)], capture_output=True, text=True, check=False
        )
        return done.returncode == 0

    def stop(self, name: str | None = None, timeout: float = 30.0) -> None:
        super().stop(name, timeout)
        names = [self.container(n) for n, _ in self.procs if name is None or n == name]
        subprocess.run(["podman", "rm", "--force", "--ignore", *names], capture_output=True, check=False)
