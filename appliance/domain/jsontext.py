"""JSON text that stays JSON (RFC 8259) whatever the value: what the appliance stores and
sends. A number beyond a double (`1e400` in a frame parses to infinity in Python) is
written `1e999` instead of Python's `Infinity`, which no JSON parser takes (SQLite's
`json_extract` among them); it reads back as the same infinity."""

from __future__ import annotations

import json
import math
from typing import Any

COMPACT = (",", ":")
#: a JSON number no double can hold: how a non-finite value is written
_BEYOND = {math.inf: "1e999", -math.inf: "-1e999"}


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_QUOTE = json.encoder.encode_basestring
#: the standard library's C encoder, made once: `json.dumps` and `JSONEncoder.encode`
#: build one per call, which costs more than encoding a small frame
_ENCODERS = {
    ascii: json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _not_serialisable,
        json.encoder.encode_basestring_ascii if ascii else json.encoder.encode_basestring,
        None,
        COMPACT[1],
        COMPACT[0],
        False,
        False,
        False,
    )
    for ascii in (False, True)
}


def dumps(value: Any, ensure_ascii: bool = False) -> str:
    """Compact JSON text of `value` (a NaN, which JSON cannot carry, becomes null)."""
    try:
        if isinstance(value, str):
            quote = json.encoder.encode_basestring_ascii if ensure_ascii else _QUOTE
            return quote(value)
        return "".join(_ENCODERS[ensure_ascii](value, 0))
    except ValueError:
        return "".join(_Finite(separators=COMPACT, ensure_ascii=ensure_ascii).iterencode(value))


def _float_text(number: float) -> str:
    if math.isnan(number):
        return "null"
    return _BEYOND.get(number) or float.__repr__(number)


class _Finite(json.JSONEncoder):
    """The standard encoder with its float spelling replaced (the slow path, taken only
    for a value that holds a non-finite number)."""

    def iterencode(self, o: Any, _one_shot: bool = False) -> Any:
        encoder = (
            json.encoder.encode_basestring_ascii
            if self.ensure_ascii
            else (json.encoder.encode_basestring)
        )
        return json.encoder._make_iterencode(  # type: ignore[attr-defined]
            {},
            self.default,
            encoder,
            self.indent,
            _float_text,
            self.key_separator,
            self.item_separator,
            self.sort_keys,
            self.skipkeys,
            _one_shot,
        )(o, 0)
