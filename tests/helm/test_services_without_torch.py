"""The services image has no torch: what it runs imports and starts without torch, torchvision, diffusers, timm, scipy.

Flow step: deployment (images). The services image (``deploy/docker/services.Dockerfile``) installs only
``deploy/docker/services-requirements.txt``, so every entry point it runs must work without the model's packages.
Each one runs here in a subprocess whose ``sys.modules`` maps those packages to None, so that importing any of them
raises ImportError, as in the image: the entry module is imported and its settings (or app) built, without connecting
to anything. No image and no server is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helm._chart import REPO

pytestmark = pytest.mark.timeout(60)

#: The model's packages, which the services image does not install.
MODEL_PACKAGES = ("torch", "torchvision", "diffusers", "timm", "scipy")
_BLOCK = f"import sys\nfor _name in {MODEL_PACKAGES!r}:\n    sys.modules[_name] = None\n"

#: entry point of the services image -> what the probe does with it (the last line prints "ok").
PROBES = {
    "ingestor": """
        from services.ingestor.__main__ import main

        assert main(["--print-config"]) == 0
    """,
    "alerter": """
        import json, os, pathlib, tempfile

        from services._config import load_settings
        from services.alerter.__main__ import build_rulebook, main
        from services.alerter.config import AlerterSettings

        assert main(["--print-config"]) == 0
        bundle = pathlib.Path(tempfile.mkdtemp())
        (bundle / "bundle.json").write_text(json.dumps({"calibration": {"sensitivity": 0.7}}))
        os.environ["ALERTER_BUNDLE_PATH"] = str(bundle)
        assert build_rulebook(load_settings(AlerterSettings)).defaults.sensitivity == 0.7
    """,
    "dashboard": """
        import tempfile

        import redis

        from services import _observability as obs
        from services._config import load_settings
        from services._object_store import open_object_store
        from services.dashboard.__main__ import main
        from services.dashboard.app import DashboardContext, create_app
        from services.dashboard.auth import Authenticator
        from services.dashboard.config import DashboardSettings
        from services.dashboard.live import Hub, LiveState

        assert main(["--print-config"]) == 0
        settings = load_settings(DashboardSettings)
        ctx = DashboardContext(Authenticator("t" * 32), redis.Redis.from_url(settings.redis_url),
                               open_object_store(f"file://{tempfile.mkdtemp()}"), LiveState(), Hub(), obs.Health(),
                               obs.configure_logging("dashboard"))
        assert create_app(ctx).routes
    """,
    "topic Job": """
        import importlib.util

        from services.contracts.topics import TOPICS_FILE, Topics
        from services._config import load_settings

        spec = importlib.util.spec_from_file_location("ensure_topics", "deploy/kafka/ensure_topics.py")
        job = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = job
        spec.loader.exec_module(job)
        settings = load_settings(job.TopicJobSettings)
        assert job.load_topic_specs(Topics(settings.topic_prefix), TOPICS_FILE, cluster=True)
    """,
    "health check": """
        import os, runpy

        from services import _observability as obs

        server = obs.start_http_server(obs.Health(), 0, host="127.0.0.1")
        os.environ["ALERTER_HTTP_PORT"] = str(server.server_address[1])
        try:
            runpy.run_path("deploy/docker/healthcheck.py", run_name="__main__")
        except SystemExit as done:
            assert done.code == 0, done.code
    """,
}


def _run(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python at the repository root, with the model's packages blocked first."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INGESTOR_", "ALERTER_", "DASHBOARD_", "TOPICS_", "WORKER_"))}
    return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code) + "\nprint('ok')\n"], cwd=REPO,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=50,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("entry", PROBES)
def test_the_entry_point_works_without_the_models_packages(entry: str) -> None:
    done = _run(PROBES[entry])
    assert done.returncode == 0 and done.stdout.splitlines()[-1:] == ["ok"], done.stdout + done.stderr


def test_the_probe_blocks_each_package_and_its_submodules() -> None:
    done = _run(f"""
        import importlib

        for name in {MODEL_PACKAGES!r}:
            for module in (name, name + ".utils"):
                try:
                    importlib.import_module(module)
                except ImportError:
                    continue
                raise SystemExit(module + " imported")
    """)
    assert done.returncode == 0 and done.stdout.splitlines()[-1:] == ["ok"], done.stdout + done.stderr
