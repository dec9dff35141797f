"""The Prometheus alert rules (``deploy/prometheus/rules.yaml``), parsed and asserted.

Flow step: deployment (operations). ``promtool check rules`` (Prometheus' own parser, built by set-up) checks the
file; on top, the five required alerts exist with severity, summary, description and a runbook anchor that the
chart README really has; every metric and label an expression uses is one the services export (read from the
services' own Prometheus registry); the chart's PrometheusRule carries exactly this file.
"""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client import REGISTRY

import services._observability  # noqa: F401 - registers the services' metrics
from devtools.localstack import find_go_tool
from tests.helm._chart import CHART, REPO, by_kind, render, run
from tests.helm.test_chart import VARIANTS

pytestmark = pytest.mark.timeout(60)

RULES_FILE = REPO / "deploy" / "prometheus" / "rules.yaml"
RULES = [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]
#: Labels Prometheus adds to every scraped series (target labels) besides the metric's own.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "le"}
PROMQL_WORDS = {"sum", "by", "rate", "clamp_min", "histogram_quantile", "abs", "offset", "and", "or", "unless",
                "increase", "max", "min", "avg", "without", "on", "ignoring", "count"}


def _metrics() -> dict[str, set[str]]:
    """Every series name the services export (counters with _total, histograms with _bucket/_sum/_count), with
    its label names, from the registry the services' metrics are defined in."""
    return {name: set(getattr(collector, "_labelnames", ()))
            for name, collector in REGISTRY._names_to_collectors.items() if name.startswith("inspection_")}


def test_the_required_alerts_exist_with_severity_and_runbooks() -> None:
    names = {rule["alert"] for rule in RULES}
    assert {"InspectionConsumerLagHigh", "InspectionResultLatencyP95High", "InspectionDeadLetterRateHigh",
            "InspectionCameraStale", "InspectionScoreDrift"} <= names
    readme = (CHART / "README.md").read_text()
    headings = {line[4:].strip().lower() for line in readme.splitlines() if line.startswith("### ")}
    for rule in RULES:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and len(notes["description"]) > 80, rule["alert"]
        anchor = notes["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in headings, rule["alert"]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_expressions_use_only_exported_metrics_and_labels(rule: dict) -> None:
    expr = rule["expr"]
    metrics = _metrics()
    bare = re.sub(r'"[^"]*"', '""', expr)  # label values (regexes) may hold any character
    assert bare.count("(") == bare.count(")") and bare.count("[") == bare.count("]") and bare.count("{") == \
        bare.count("}"), expr
    for duration in re.findall(r"\[([^\]]+)\]", bare):
        assert re.fullmatch(r"\d+[smhd]", duration), duration
    used = set(re.findall(r"\binspection_[a-z_]+\b", expr))
    assert used, expr
    for name in used:
        assert name in metrics, f"{rule['alert']}: {name} is not exported (known: {sorted(metrics)})"
    for name, matchers in re.findall(r"\b(inspection_[a-z_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*=~?", matchers):
            assert label in metrics[name] | TARGET_LABELS, f"{rule['alert']}: {name} has no label {label}"
    for label in re.findall(r"by \(([^)]*)\)", expr):
        for part in label.split(","):
            part = part.strip()
            known = set().union(*(metrics[n] for n in used)) | TARGET_LABELS
            assert part in known, f"{rule['alert']}: grouping by unknown label {part}"
    words = set(re.findall(r"\b([a-z_]+)\s*\(", expr)) - PROMQL_WORDS
    assert not words, f"{rule['alert']}: unknown functions {words}"


def test_the_chart_prometheus_rule_is_this_file() -> None:
    docs = render(*VARIANTS["production"])
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert (CHART / "files" / "prometheus-rules.yaml").resolve() == RULES_FILE.resolve()


def _promtool():
    found = find_go_tool("promtool")
    if found is None:
        pytest.fail("promtool not found ($DDAD_PROMTOOL, $DDAD_HOME/go/bin, PATH): run `bash scripts/bootstrap.sh`, "
                    "which builds it with go install")
    return found


def test_promtool_checks_the_rules() -> None:
    done = run(_promtool(), "check", "rules", RULES_FILE)
    assert done.returncode == 0 and f"SUCCESS: {len(RULES)} rules found" in done.stdout, done.stdout + done.stderr


def test_promtool_rejects_a_broken_rule(tmp_path) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "Broken", "expr": "sum(rate(inspection_dlq_records_total[5m])", "for": "5m"}]}]}))
    done = run(_promtool(), "check", "rules", broken)
    assert done.returncode != 0 and "parse error" in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
