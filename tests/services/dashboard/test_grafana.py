"""deploy/grafana/*.json: valid dashboards whose every query names metrics (and labels) the services really export."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
# Every module that defines metrics at import; importing them registers the metrics in the default registry.
METRIC_MODULES = ("services._observability", "services.dashboard.metrics")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Series name -> label names, for every metric the services register."""
    modules = [importlib.import_module(m) for m in METRIC_MODULES]
    labels: dict[str, set[str]] = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                # prometheus_client keeps the label names of a labelled metric only on the wrapper
                labels[obj._name] = set(obj._labelnames)  # noqa: SLF001
    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        names = [family.name + s for s in _SUFFIXES.get(family.type, ("",))]
        for n in names:
            out[n] = labels.get(family.name, set()) | ({"le"} if n.endswith("_bucket") else set())
    return out


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # rows
    return out


def problems(dashboard: dict, metrics: dict[str, set[str]]) -> list[str]:
    """Everything wrong with one dashboard (empty = fine)."""
    found = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dashboard:
            found.append(f"missing {key}")
    ids = [p.get("id") for p in panels(dashboard)]
    if len(ids) != len(set(ids)):
        found.append("duplicate panel ids")
    for p in panels(dashboard):
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        targets = p.get("targets") or []
        if not targets:
            found.append(f"{title}: no query")
        for t in targets:
            expr = t.get("expr", "")
            names = [n for n in _NAME.findall(expr) if n.startswith("inspection_")]
            if not names:
                found.append(f"{title}: query names no inspection_ metric: {expr!r}")
            for n in names:
                if n not in metrics:
                    found.append(f"{title}: {n} is not exported by any service")
            used = {lab.strip() for group in _BY.findall(expr) for lab in group.split(",") if lab.strip()}
            known = set().union(*(metrics.get(n, set()) for n in names)) if names else set()
            for lab in sorted(used - known):
                found.append(f"{title}: label {lab!r} is on none of {', '.join(names)}")
    return found


def test_there_are_dashboards_for_the_issue_s_topics():
    assert DASHBOARDS, "no JSON under deploy/grafana"
    exprs = " ".join(t["expr"] for d in DASHBOARDS for p in panels(json.loads(d.read_text()))
                     for t in p.get("targets", []))
    for needed in ("inspection_frames_consumed_total", "inspection_end_to_end_latency_seconds_bucket",
                   "inspection_batch_size_bucket", "inspection_frames_dropped_total", "inspection_dlq_records_total",
                   "inspection_consumer_lag", "inspection_defects_total"):
        assert needed in exprs, needed


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_panel_queries_metrics_the_services_export(path):
    dashboard = json.loads(path.read_text())  # valid JSON, or this raises
    assert problems(dashboard, exported()) == []


def test_the_check_catches_a_misspelt_metric_and_a_missing_label():
    bad = {"uid": "x", "title": "x", "schemaVersion": 39, "panels": [
        {"id": 1, "title": "typo", "targets": [{"expr": "rate(inspection_frames_consumd_total[5m])"}]},
        {"id": 2, "title": "label", "targets": [{"expr": "sum by (camera_id) (inspection_consumer_lag)"}]},
        {"id": 3, "title": "empty", "targets": []}]}
    found = problems(bad, exported())
    assert any("inspection_frames_consumd_total is not exported" in f for f in found)
    assert any("label 'camera_id'" in f for f in found)
    assert any("empty: no query" in f for f in found)
