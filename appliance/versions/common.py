"""What the per-version mappings share: the handler context, field access that tells the
peer what is wrong, and the charge point's clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.rpc import Fault
from appliance.store import Store, TransactionIds

# SPEC §2: a charge point's timestamp is implausible before 2010 or more than a day ahead.
_EARLIEST_PLAUSIBLE = datetime(2010, 1, 1, tzinfo=UTC).timestamp()
_MAX_AHEAD_SEC = 24 * 3600


class Unprocessable(Exception):
    """The message cannot be processed: the peer gets a CALLERROR with `fault`."""

    def __init__(self, fault: Fault, description: str) -> None:
        super().__init__(description)
        self.fault = fault


@dataclass(slots=True)
class Context:
    """What a handler may use: the connection's identity and the appliance's services."""

    identity: str
    protocol: str
    heartbeat_interval: int
    store: Store
    transaction_ids: TransactionIds


Payload = dict[str, Any]
Handler = Callable[[Context, Payload], Payload]


def iso_now() -> str:
    """The appliance's clock as OCPP wants it: ISO 8601, UTC, milliseconds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def need(payload: Payload, key: str) -> Any:
    try:
        return payload[key]
    except KeyError:
        raise Unprocessable(Fault.OCCURRENCE, f"{key} is required") from None


def need_int(payload: Payload, key: str) -> int:
    """An integer field; a number sent as a string ("1") is taken, as real chargers do it."""
    value = need(payload, key)
    if type(value) is int:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Unprocessable(Fault.TYPE, f"{key} must be an integer, not {value!r}") from None
    if not number.is_integer():
        raise Unprocessable(Fault.TYPE, f"{key} must be an integer, not {value!r}")
    return int(number)


def need_number(payload: Payload, key: str) -> float:
    value = need(payload, key)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Unprocessable(Fault.TYPE, f"{key} must be a number, not {value!r}") from None


def time_suspect(stamp: object) -> bool:
    """Whether a charge point's timestamp is unusable for ordering (SPEC §2)."""
    if not isinstance(stamp, str):
        return True
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp()
    return seconds < _EARLIEST_PLAUSIBLE or seconds > time.time() + _MAX_AHEAD_SEC
