"""A payload's leaf values as dotted paths, bounded: `.raw` always keeps the whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from appliance.tree.ids import escape

#: OCPP payloads nest about 8 levels (2.x charging profiles); deeper is vendor data
MAX_DEPTH = 8
#: items of one array flattened; a full NotifyReport can carry hundreds
MAX_ITEMS = 32
#: leaves of one payload flattened
MAX_LEAVES = 500


def flatten(payload: Any) -> list[tuple[str, Any]]:
    """[(path, leaf)]: objects by key, arrays by index; deeper, longer or more than the
    limits is left to `.raw`."""
    leaves: list[tuple[str, Any]] = []
    for path, value in _walk(payload, "", 0):
        leaves.append((path, value))
        if len(leaves) >= MAX_LEAVES:
            break
    return leaves


def _walk(value: Any, path: str, depth: int) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return
        for key, child in value.items():
            yield from _walk(
                child, f"{path}.{escape(str(key))}" if path else escape(str(key)), depth + 1
            )
    elif isinstance(value, list):
        if depth >= MAX_DEPTH:
            return
        for index, child in enumerate(value[:MAX_ITEMS]):
            yield from _walk(child, f"{path}.{index}" if path else str(index), depth + 1)
    elif path:
        yield path, value
