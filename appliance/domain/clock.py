"""The charge point's clock: parsed for ordering, distrusted when implausible (README
"`transactions`", time_suspect)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

# README "`transactions`": a timestamp is implausible before 2010 or more than a day ahead.
EARLIEST_PLAUSIBLE = datetime(2010, 1, 1, tzinfo=UTC).timestamp()
MAX_AHEAD_SEC = 24 * 3600


def parse(stamp: object) -> float | None:
    # one message repeats its timestamp for every sampled value: parse each text once
    return _parse(stamp) if isinstance(stamp, str) else None


@lru_cache(maxsize=1024)
def _parse(stamp: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 timestamp (no zone: UTC), None if unreadable."""
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def time_suspect(stamp: object) -> bool:
    seconds = parse(stamp)
    return seconds is None or not (EARLIEST_PLAUSIBLE <= seconds <= time.time() + MAX_AHEAD_SEC)


class Stamp(NamedTuple):
    """When a reading was taken, as far as each clock knows: the charge point's time
    where it is plausible, and the appliance's time when it arrived."""

    device: float | None
    received: float


def stamp(text: object, received: float) -> Stamp:
    seconds = parse(text)
    if seconds is None or not (EARLIEST_PLAUSIBLE <= seconds <= received + MAX_AHEAD_SEC):
        seconds = None
    return Stamp(seconds, received)


def newer(new: Stamp, known: Stamp) -> bool:
    """Whether `new` is not older than `known`. Like is compared with like (README
    "Time"): the charge point's clock only with itself; where either lacks a plausible
    one, the order of arrival decides (a clock a few seconds behind the appliance's
    never hides a fresh reading)."""
    if new.device is not None and known.device is not None:
        return new.device >= known.device
    return new.received >= known.received


def iso_now() -> str:
    """The appliance's clock as OCPP wants it: ISO 8601, UTC, milliseconds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
