"""The smallest schema-valid response to a call the simulator does not model.

Built from the official response schema: required fields only, the most honest status
an enum offers (NotSupported before Rejected before Accepted), zero, empty text, empty
list. A schema this cannot satisfy gets None: the caller answers NotImplemented.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from appliance.rpc import SchemaSet
from appliance.rpc.validation import schema_root

#: preferred enum values for something the simulator cannot do, most honest first
_HONEST = ("NotSupported", "NotImplemented", "Rejected", "Unknown", "Accepted")


def minimal_response(schemas: SchemaSet, action: str) -> dict[str, Any] | None:
    payload = _build(schemas.dialect.schema_folder, action)
    if payload is None or schemas.check_response(action, payload, inbound=False) is not None:
        return None
    return json.loads(json.dumps(payload))  # a private copy


@cache
def _build(folder: str, action: str) -> dict[str, Any] | None:
    path = schema_root() / folder / f"{action}Response.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text("utf-8"))
    value = _value(schema, schema, 0)
    return value if isinstance(value, dict) else None


def _value(node: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    if depth > 16:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return _value(target, root, depth + 1)
    if "enum" in node:
        values = node["enum"]
        return next((v for v in _HONEST if v in values), values[0])
    kind = node.get("type")
    if kind == "object":
        return {
            name: _value(node["properties"][name], root, depth + 1)
            for name in node.get("required", [])
        }
    if kind == "array":
        count = node.get("minItems", 0)
        return [_value(node.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "string":
        if node.get("format") == "date-time":
            return "2026-01-01T00:00:00Z"
        return "x" * node.get("minLength", 0)
    if kind in ("integer", "number"):
        return node.get("minimum", 0)
    if kind == "boolean":
        return False
    return None
