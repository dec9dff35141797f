"""The values table of helm/ddad-inspection/README.md, generated from values.schema.json and values.yaml.

    python helm/values_table.py          # print the table
    python helm/values_table.py --write  # replace the table between the markers in the chart's README

One row per leaf of the schema (a scalar, a list, or a map without fixed keys): its key, type, default and
description. ``tests/helm/test_values_table.py`` fails when the README's table differs from this output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "ddad-inspection"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def _type(node: dict[str, Any]) -> str:
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(n) for n in node["oneOf"])
    kind = node.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else kind


def leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """``(dotted key, schema node)`` of every leaf, in schema order."""
    out = []
    for name, node in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if node.get("type") == "object" and node.get("properties") and node.get("additionalProperties") is False:
            out += leaves(node, key + ".")
        else:
            out.append((key, node))
    return out


def default_of(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, node in leaves(schema):
        if key == "global":
            continue
        default = json.dumps(default_of(values, key), separators=(", ", ": "))
        description = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(node)} | `{default}` | {description} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the table in the chart's README.md")
    args = parser.parse_args()
    if not args.write:
        print(table())
        return 0
    readme = CHART / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
