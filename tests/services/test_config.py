"""Service settings: a bad or unknown variable stops the service naming it; --print-config masks secrets."""

from __future__ import annotations

import io
import json

import pytest

from services._config import EXIT_BAD_CONFIG, StartupChecks, StartupError, load_settings
from services.alerter.__main__ import main as alerter_main
from services.alerter.config import AlerterSettings
from services.ingestor.__main__ import main as ingestor_main
from services.worker.__main__ import main as worker_main
from services.worker.config import WorkerSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith(("WORKER_", "ALERTER_", "INGESTOR_")):
            monkeypatch.delenv(key)


def test_bad_value_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("WORKER_MAX_BATCH_SIZE", "zero")
    assert worker_main(["--print-config"]) == EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "WORKER_MAX_BATCH_SIZE" in err and "zero" in err


def test_unknown_variable_is_refused(monkeypatch):
    monkeypatch.setenv("WORKER_MAX_BATCH_SZE", "8")  # typo
    with pytest.raises(ValueError, match="WORKER_MAX_BATCH_SZE"):
        load_settings(WorkerSettings)


def test_cross_field_validation(monkeypatch):
    monkeypatch.setenv("ALERTER_DEBOUNCE_N", "3")
    monkeypatch.setenv("ALERTER_DEBOUNCE_M", "2")
    with pytest.raises(ValueError, match="debounce_n"):
        load_settings(AlerterSettings)
    monkeypatch.setenv("ALERTER_DEBOUNCE_N", "1")
    monkeypatch.setenv("ALERTER_CAMERA_RULES", '{"cam1": {"sensitivity": 2}}')
    with pytest.raises(ValueError, match="cam1"):
        load_settings(AlerterSettings)


def test_print_config_masks_secrets(monkeypatch, capsys):
    monkeypatch.setenv("ALERTER_REDIS_URL", "redis://user:hunter2@redis:6379/0")
    monkeypatch.setenv("ALERTER_S3_SECRET_ACCESS_KEY", "topsecret")
    monkeypatch.setenv("ALERTER_CAMERA_RULES", '{"cam1": {"sensitivity": 0.7}}')
    assert alerter_main(["--print-config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "topsecret" not in out
    cfg = json.loads(out)
    assert cfg["redis_url"] == "redis://user:**********@redis:6379/0"
    assert cfg["s3_secret_access_key"] == "**********"
    assert cfg["camera_rules"] == {"cam1": {"sensitivity": 0.7}}


def test_every_service_prints_its_config(monkeypatch, capsys):
    monkeypatch.setenv("INGESTOR_CAMERA_ID", "cam-9")
    monkeypatch.setenv("INGESTOR_SOURCE", "/data/images")
    for main in (worker_main, alerter_main, ingestor_main):
        assert main(["--print-config"]) == 0
    assert '"camera_id": "cam-9"' in capsys.readouterr().out


def test_connect_timeout_defaults_to_ten_seconds_and_bounds_kafka_clients(monkeypatch):
    settings = load_settings(WorkerSettings)
    assert settings.connect_timeout_s == 10.0
    assert settings.kafka_kwargs("worker")["bootstrap_timeout_ms"] == 10000  # every Kafka client, not just --check
    monkeypatch.setenv("WORKER_CONNECT_TIMEOUT_S", "2.5")
    assert load_settings(WorkerSettings).kafka_kwargs("worker")["bootstrap_timeout_ms"] == 2500


def test_startup_checks_name_the_dependency_and_the_setting(monkeypatch):
    monkeypatch.setenv("WORKER_REDIS_URL", "redis://user:hunter2@redis.example:6379/0")
    settings = load_settings(WorkerSettings)

    def broken():
        raise StartupError("did not answer PING")

    checks = StartupChecks("worker", settings)
    assert checks.run("kafka", "kafka_bootstrap_servers", lambda: ("value", "detail")) == "value"
    with pytest.raises(StartupError) as err:
        checks.run("redis", "redis_url", broken)
    line = str(err.value)
    assert line == ("redis: did not answer PING; check WORKER_REDIS_URL (now redis://user:**********@redis.example:"
                    "6379/0)")  # one line, the setting named, the password masked
    with pytest.raises(StartupError, match=r"check WORKER_BUNDLE_PATH \(default /models/bundle\)"):
        checks.run("model", "bundle_path", broken)


def test_check_mode_runs_every_step_and_reports_each(monkeypatch):
    out = io.StringIO()
    checks = StartupChecks("alerter", load_settings(AlerterSettings), report=True, out=out)

    def broken():
        raise StartupError("no answer within 10 s")

    assert checks.run("rules", "bundle_path", lambda: (1, "service defaults")) == 1
    assert checks.run("redis", "redis_url", broken) is None  # reported, and the next step still runs
    checks.run("kafka", "kafka_bootstrap_servers", lambda: ([], "1 broker(s)"))
    lines = out.getvalue().splitlines()
    assert [line.split()[2:4] for line in lines] == [["rules", "ok"], ["redis", "FAILED"], ["kafka", "ok"]]
    with pytest.raises(StartupError, match="1 of 3 start-up checks failed: redis"):
        checks.finish()


def test_config_errors_never_echo_secrets(monkeypatch):
    from pydantic_settings import SettingsConfigDict

    from services._config import CommonSettings

    class NeedsCamera(CommonSettings):
        model_config = SettingsConfigDict(env_prefix="WORKER_")
        camera: str  # required: pydantic's "missing" error carries every other value as its input

    monkeypatch.setenv("WORKER_REDIS_PASSWORD", "hunter2-redis")
    monkeypatch.setenv("WORKER_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    with pytest.raises(ValueError) as missing:
        load_settings(NeedsCamera)
    assert "WORKER_CAMERA" in str(missing.value)
    assert "hunter2" not in str(missing.value)
    # A bad value of a credential-bearing field is named but not shown.
    monkeypatch.setenv("WORKER_CAMERA", "cam-1")
    monkeypatch.setenv("WORKER_REDIS_URL", "ftp://user:hunter2-url@redis:6379/0")
    with pytest.raises(ValueError) as bad:
        load_settings(NeedsCamera)
    assert "hunter2" not in str(bad.value)
