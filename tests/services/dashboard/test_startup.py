"""Start-up of ``inspection-dashboard``: a missing or short token, an unknown variable and unreachable servers stop it
with the setting named and exit status 2; ``--print-config`` masks the token."""

from __future__ import annotations

import pytest

from services.dashboard.__main__ import main

pytestmark = pytest.mark.timeout(60)
SECRET = "s3cr3t-" + "x" * 20


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("DASHBOARD_"):
            monkeypatch.delenv(k)


def test_missing_and_short_tokens_are_refused_by_name(monkeypatch, capsys):
    assert main([]) == 2
    assert "DASHBOARD_TOKEN is not set" in capsys.readouterr().err
    monkeypatch.setenv("DASHBOARD_TOKEN", "short-secret")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "DASHBOARD_TOKEN is too short" in err and "short-secret" not in err


def test_print_config_masks_the_token_and_unknown_variables_are_named(monkeypatch, capsys):
    monkeypatch.setenv("DASHBOARD_TOKEN", SECRET)
    assert main(["--print-config"]) == 0
    out = capsys.readouterr().out
    assert '"token": "**********"' in out and SECRET not in out
    monkeypatch.setenv("DASHBOARD_STALE_AFTER", "5")
    assert main([]) == 2
    assert "DASHBOARD_STALE_AFTER" in capsys.readouterr().err


def test_check_reports_each_unreachable_dependency(monkeypatch, capsys, tmp_path):
    for k, v in {"TOKEN": SECRET, "REDIS_URL": "redis://127.0.0.1:1/0", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                 "OBJECT_STORE_URL": tmp_path.as_uri(), "CONNECT_TIMEOUT_S": "1"}.items():
        monkeypatch.setenv(f"DASHBOARD_{k}", v)
    assert main(["--check"]) == 2
    out, err = capsys.readouterr()
    assert "dashboard check: token        ok" in out and "object store ok" in out
    assert "redis        FAILED" in out and "DASHBOARD_REDIS_URL" in out
    assert "kafka        FAILED" in out and "DASHBOARD_KAFKA_BOOTSTRAP_SERVERS" in out
    assert SECRET not in out + err
