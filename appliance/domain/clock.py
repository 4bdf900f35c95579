"""The charge point's clock: parsed for ordering, distrusted when implausible (README
"`transactions`", time_suspect)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache

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


def order_key(stamp: object) -> float:
    """When a sample was taken, for ordering: the charge point's time where plausible,
    else the receive time (a clockless charger's 1970 never sorts before yesterday)."""
    seconds = parse(stamp)
    now = time.time()
    if seconds is None or not (EARLIEST_PLAUSIBLE <= seconds <= now + MAX_AHEAD_SEC):
        return now
    return seconds


def iso_now() -> str:
    """The appliance's clock as OCPP wants it: ISO 8601, UTC, milliseconds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
