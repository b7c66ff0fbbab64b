"""The data dictionary that travels inside every export: a Frictionless Data Package and the
key/value metadata of each Parquet file.

`datapackage.json` (Frictionless Data Package v1) names every table file of an export with its
format and Table Schema: each column's name, type, description and unit, the primary key and
the references between tables, so a reader that knows nothing of the bridge (frictionless,
pandas, R, a data catalogue) can load and check the tables. Parquet files carry the same, per
file: `cbdc-bridge.table`, `cbdc-bridge.description`, and one `cbdc-bridge.column.<name>`
entry per column ("TYPE; unit; description"), plus the Table Schema as JSON.

Both are generated from `bridge.log.tables`, like docs/log-data-dictionary.md, and
`log verify` checks that an export's `datapackage.json` is exactly the one its manifest implies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.domain import canonical_json
from bridge.log.tables import SCHEMA_VERSION, TABLES, Table

PROFILE = "tabular-data-package"
# Frictionless field types of the tables' logical types
FIELD_TYPES: Mapping[str, str] = {
    "BIGINT": "integer",
    "INTEGER": "integer",
    "VARCHAR": "string",
    "BOOLEAN": "boolean",
    "DOUBLE": "number",
    "TIMESTAMP": "datetime",
}
PRIMARY_KEYS: Mapping[str, Sequence[str]] = {
    "entries": ("seq",),
    "blocks": ("height",),
    "attestations": ("height", "central_bank"),
    "legs": ("seq", "leg"),
    "balances": ("seq", "participant", "currency"),
    "participants": ("seq", "participant"),
    "currencies": ("currency",),
    "refusals": ("recorded_by", "id"),
}
FOREIGN_KEYS: Mapping[str, Sequence[tuple[str, str, str]]] = {
    # (field, resource, field of that resource)
    "entries": (("height", "blocks", "height"),),
    "attestations": (("height", "blocks", "height"),),
    "legs": (("seq", "entries", "seq"), ("currency", "currencies", "currency")),
    "balances": (("currency", "currencies", "currency"),),
}
_MEDIA = {"csv": "text/csv", "jsonl": "application/x-ndjson", "parquet": "application/parquet"}


def field_descriptor(column: Any) -> dict[str, Any]:
    field: dict[str, Any] = {
        "name": column.name,
        "type": FIELD_TYPES[column.type],
        "description": column.description,
    }
    if column.unit:
        field["unit"] = column.unit
    if column.type == "TIMESTAMP":
        field["format"] = "any"  # ISO 8601 in UTC with milliseconds: 2025-06-02T01:00:00.123Z
    if column.type == "BOOLEAN":
        field["trueValues"], field["falseValues"] = ["true"], ["false"]
    return field


def table_schema(table: Table) -> dict[str, Any]:
    """The Frictionless Table Schema of one table."""
    schema: dict[str, Any] = {
        "fields": [field_descriptor(c) for c in table.columns],
        "missingValues": [""],
    }
    key = PRIMARY_KEYS.get(table.name)
    if key:
        schema["primaryKey"] = list(key)
    references = FOREIGN_KEYS.get(table.name, ())
    if references:
        schema["foreignKeys"] = [
            {"fields": field, "reference": {"resource": resource, "fields": target}}
            for field, resource, target in references
        ]
    return schema


def resource(table: Table, fmt: str, paths: Sequence[str], rows: int) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "name": table.name,
        "profile": "tabular-data-resource",
        "path": paths[0] if len(paths) == 1 else list(paths),
        "format": fmt,
        "mediatype": _MEDIA[fmt],
        "encoding": "utf-8",
        "title": table.grain,
        "description": table.description,
        "schema": table_schema(table),
        "cbdc_bridge": {"rows": rows, "verified": table.verified},
    }
    if fmt == "csv":
        descriptor["dialect"] = {"delimiter": ",", "header": True, "quoteChar": '"'}
    return descriptor


def datapackage(manifest: Mapping[str, Any], paths: Mapping[str, Sequence[str]]) -> bytes:
    """`datapackage.json` of an export with this manifest and these table files."""
    fmt = str(manifest["format"])
    counts = manifest.get("counts", {})
    head = manifest.get("head", {})
    package = {
        "profile": PROFILE,
        "name": "cbdc-bridge-settlement-log",
        "title": "Settlement log of a multi-CBDC payment bridge",
        "description": (
            "Tidy tables of a bridge settlement log: entries, blocks, attestations, legs, "
            "balance history, participants, currencies and refusal counts. Amounts are "
            "integers in minor units (with float `_major` companions), times are ms of the "
            "bridge's clock (with UTC timestamp companions). `cbdc-bridge log verify` "
            "re-derives every verified table from the canonical entries."
        ),
        "version": str(SCHEMA_VERSION),
        "cbdc_bridge": {
            "chain_id": manifest.get("chain_id"),
            "genesis_hash": manifest.get("genesis_hash"),
            "head": head,
            "first_height": manifest.get("first_height", 1),
        },
        "resources": [
            resource(t, fmt, paths.get(t.name, (f"{t.name}.{fmt}",)), int(counts.get(t.name, 0)))
            for t in TABLES
        ],
    }
    return json.dumps(package, indent=2, sort_keys=True).encode() + b"\n"


def parquet_metadata(table: Table) -> list[tuple[str, str]]:
    """Key/value metadata written into each Parquet file of `table`."""
    out = [
        ("cbdc-bridge.table", table.name),
        ("cbdc-bridge.grain", table.grain),
        ("cbdc-bridge.description", table.description),
        ("cbdc-bridge.schema", canonical_json(table_schema(table)).decode()),
    ]
    for column in table.columns:
        unit = column.unit or "-"
        out.append(
            (f"cbdc-bridge.column.{column.name}", f"{column.type}; {unit}; {column.description}")
        )
    return out


def table_files(directory: Path, fmt: str) -> dict[str, list[str]]:
    """Files of each table in an export directory, in order (Parquet parts after the first)."""
    files = {}
    for table in TABLES:
        names = [f"{table.name}.{fmt}"]
        if fmt == "parquet":
            names += sorted(p.name for p in directory.glob(f"{table.name}.part-*.parquet"))
        files[table.name] = names
    return files
