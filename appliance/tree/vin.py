"""Finding a vehicle identification number where OCPP has no field for it (README
"`states` and `objects`", info.vin)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

# ISO 3779: 17 characters, digits and capital letters without I, O and Q
_VIN = re.compile(r"(?<![A-Z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Z0-9])")
# ISO 3779 / 49 CFR 565: transliteration and position weights of the check digit
_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
#: North American makers (WMI 1–5) must carry a check digit in position 9; elsewhere
#: it is optional, so a mismatch there says nothing
_CHECK_DIGIT_REGIONS = "12345"


def plausible(candidate: str) -> bool:
    if not _VIN.fullmatch(candidate):
        return False
    if candidate.isdigit() or candidate.isalpha():
        return False  # a serial number or a word, not a VIN
    if candidate[0] in _CHECK_DIGIT_REGIONS:
        total = sum(_VALUES[c] * w for c, w in zip(candidate, _WEIGHTS, strict=True))
        check = "X" if total % 11 == 10 else str(total % 11)
        return candidate[8] == check
    return True


def find_vin(data: Any) -> str | None:
    """The first plausible VIN in `data`: a string (JSON inside is searched too), an
    object or an array; values under a key containing "vin" are tried first."""
    preferred: list[str] = []
    others: list[str] = []
    for key, text in _strings(data, ""):
        (preferred if "vin" in key.lower() else others).append(text)
    for text in preferred + others:
        for match in _VIN.finditer(text.upper() if len(text) == 17 else text):
            if plausible(match.group()):
                return match.group()
    return None


def _strings(value: Any, key: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > 8:
        return
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "{[" and stripped:
            try:
                yield from _strings(json.loads(stripped), key, depth + 1)
                return
            except ValueError:
                pass
        yield key, value
    elif isinstance(value, dict):
        for child_key, child in value.items():
            yield from _strings(child, str(child_key), depth + 1)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child, key, depth + 1)
