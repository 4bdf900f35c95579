"""State ids: dotted paths whose outside-supplied segments are escaped reversibly.

An identity or a component name may hold dots, slashes, spaces, `%`, glob characters or
any Unicode; each such segment is percent-encoded (UTF-8) except for ASCII letters,
digits, `_`, `-` and `~`, so an id never holds a dot inside a segment, reads the same in
any SQL client and `unescape` gives the original back.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_SAFE = re.compile(r"[^A-Za-z0-9_~-]")


def escape(segment: str) -> str:
    # surrogatepass: a lone surrogate (valid JSON, no Unicode text) gets its bytes too
    return _SAFE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
        segment,
    )


def unescape(segment: str) -> str:
    return unquote(segment)


def subprotocol_segment(subprotocol: str) -> str:
    """The id segment of a subprotocol (README "`states` and `objects`"): ocpp1.6 → ocpp1_6."""
    return subprotocol.replace(".", "_")


def component_segment(
    name: str, evse: int | None = None, connector: int | None = None, instance: str | None = None
) -> str:
    """`<name>[@<evse>[-<connector>]][#<instance>]` with each part escaped (README
    "`states` and `objects`")."""
    segment = escape(name)
    if evse is not None:
        segment += f"@{evse}"
        if connector is not None:
            segment += f"-{connector}"
    if instance:
        segment += f"#{escape(instance)}"
    return segment


def variable_segment(name: str, instance: str | None = None) -> str:
    return escape(name) + (f"#{escape(instance)}" if instance else "")
