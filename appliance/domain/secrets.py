"""Secrets that never reach the database (README "Security", what the database holds):
where each can travel, as data, and the one function that masks them.

A frame or state that held one is stored with the value replaced by "***" (`MASK`); the
wire always carries the real value.
"""

from __future__ import annotations

from typing import Any

MASK = "***"

#: 1.6 configuration keys (GetConfiguration answers, ChangeConfiguration, `config.<key>`)
CONFIGURATION_KEYS = frozenset({"AuthorizationKey"})
#: 2.x Device Model variables, of any component (NotifyReport, GetVariables results,
#: SetVariables, `dm.<component>.<variable>.<attribute>.value`)
VARIABLES = frozenset({"BasicAuthPassword"})
#: what a PEM private key says about itself, wherever a payload carries one
PRIVATE_KEY = "PRIVATE KEY-----"

#: a frame without any of these cannot hold a secret: the cheap test on the hot path
_MARKERS = (*CONFIGURATION_KEYS, *VARIABLES, PRIVATE_KEY)


def may_hold(text: str) -> bool:
    """Whether `text` (a frame, JSON) may carry a secret."""
    return any(marker in text for marker in _MARKERS)


def redact(value: Any) -> tuple[Any, bool]:
    """`value` with every secret masked (a copy where anything changed), and whether
    anything was."""
    found = [False]
    masked = _walk(value, found)
    return masked, found[0]


def _walk(node: Any, found: list[bool]) -> Any:
    if isinstance(node, str):
        if PRIVATE_KEY in node:
            found[0] = True
            return MASK
        return node
    if isinstance(node, list):
        return [_walk(item, found) for item in node]
    if not isinstance(node, dict):
        return node
    variable = node.get("variable")
    name = variable.get("name") if isinstance(variable, dict) else None
    secret_key = _named(node.get("key"), CONFIGURATION_KEYS)
    secret_variable = _named(name, VARIABLES)
    out: dict[Any, Any] = {}
    for key, item in node.items():
        if (secret_key and key == "value" and item is not None) or (
            secret_variable and key == "attributeValue"
        ):
            found[0] = True
            out[key] = MASK
        elif secret_variable and key == "variableAttribute" and isinstance(item, list):
            out[key] = [_mask_attribute(attribute, found) for attribute in item]
        else:
            out[key] = _walk(item, found)
    return out


def _named(value: Any, names: frozenset[str]) -> bool:
    return isinstance(value, str) and value in names


def _mask_attribute(attribute: Any, found: list[bool]) -> Any:
    if isinstance(attribute, dict) and "value" in attribute:
        found[0] = True
        return {**attribute, "value": MASK}
    return attribute


def state_is_secret(path: str) -> bool:
    """Whether the state `<identity>.<path>` mirrors a secret: `config.AuthorizationKey`,
    `dm.<component>.BasicAuthPassword[#instance].<attribute>.value`."""
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "config":
        return parts[1] in CONFIGURATION_KEYS
    if len(parts) == 5 and parts[0] == "dm" and parts[4] == "value":
        return parts[2].partition("#")[0] in VARIABLES
    return False
