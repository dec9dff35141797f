"""values.schema.json covers every value of values.yaml, and the README's values table matches the schema.

Flow step: deployment (chart documentation). Regenerate the table with ``python helm/values_table.py --write``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.helm._chart import CHART, PRODUCTION, SINGLE_NODE_CPU

pytestmark = pytest.mark.helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
_spec = importlib.util.spec_from_file_location("values_table", CHART.parent / "values_table.py")
values_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(values_table)


def _walk(values: dict, schema: dict, path: str, missing: list[str]) -> None:
    for key, value in values.items():
        node = schema.get("properties", {}).get(key)
        if node is None:
            if schema.get("additionalProperties") in (None, False) and "propertyNames" not in schema:
                missing.append(f"{path}{key}")
            continue
        if isinstance(value, dict) and node.get("properties"):
            _walk(value, node, f"{path}{key}.", missing)


@pytest.mark.parametrize("values_file", [CHART / "values.yaml", PRODUCTION, SINGLE_NODE_CPU])
def test_every_value_is_in_the_schema(values_file: Path) -> None:
    missing: list[str] = []
    _walk(yaml.safe_load(values_file.read_text()), SCHEMA, "", missing)
    assert not missing, f"values without a schema entry: {missing}"


def test_every_schema_entry_is_described_and_closed() -> None:
    def check(node: dict, path: str) -> None:
        for key, child in node.get("properties", {}).items():
            assert child.get("description"), f"{path}{key} has no description"
            if child.get("properties"):
                assert child.get("additionalProperties") is False, f"{path}{key} accepts unknown keys"
                check(child, f"{path}{key}.")
    assert SCHEMA["additionalProperties"] is False
    check(SCHEMA, "")


def test_the_readme_values_table_matches_the_schema() -> None:
    readme = (CHART / "README.md").read_text()
    assert values_table.START in readme and values_table.END in readme
    section = readme.split(values_table.START, 1)[1].split(values_table.END, 1)[0].strip()
    assert section == values_table.table(), "README values table is stale: run `python helm/values_table.py --write`"
    keys = {line.split("`")[1] for line in section.splitlines()[2:]}
    leaves = {key for key, _ in values_table.leaves(SCHEMA)} - {"global"}
    assert keys == leaves
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for line in section.splitlines()[2:]:
        key, default = line.split("`")[1], line.split("`")[3]
        assert json.loads(default) == values_table.default_of(defaults, key), key
