"""What the per-version mappings share: the handler context, the answer, and field access
that tells the peer what is wrong.

Handlers are pure (README "Architecture"): they take the request and return the answer
with the version-neutral updates it implies (`Answer`); they write nothing. The station
applies the updates only once the answer is accepted for sending. The one exception is
the 1.6 transaction id (`TransactionIds`), which must be decided before the answer."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from appliance.domain import Update, jsontext
from appliance.domain.meter import Reading, Unusable, reading
from appliance.rpc import Fault
from appliance.versions import tables

Payload = dict[str, Any]


class Unprocessable(Exception):
    """The message cannot be processed: the peer gets a CALLERROR with `fault`."""

    def __init__(self, fault: Fault, description: str) -> None:
        super().__init__(description)
        self.fault = fault


def _accept_every_token(token: str | None) -> bool:
    return True


class TransactionIdSource(Protocol):
    """Where a 1.6 StartTransaction gets its id (store.TransactionIds)."""

    def start(self, key: Hashable) -> tuple[int, bool]: ...


class Answer(NamedTuple):
    """A handler's result: the answer's payload, the updates it implies, and what of the
    request could not be used (recorded as violations; the frame keeps it)."""

    payload: Payload
    updates: list[Update]
    unusable: list[str]


@dataclass(slots=True)
class Context:
    """What a handler may use: the connection's identity and the appliance's services.
    While a handler runs, `emit` collects its updates and `skip` what it could not use;
    `Protocol.respond` hands both back with the answer."""

    identity: str
    subprotocol: str
    heartbeat_interval: int
    transaction_ids: TransactionIdSource
    #: is this RFID/idToken accepted? Asked at each call, so a SIGHUP applies at once
    authorize: Callable[[str | None], bool] = _accept_every_token
    updates: list[Update] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)

    def emit(self, update: Update) -> None:
        self.updates.append(update)

    def skip(self, reason: str) -> None:
        self.unusable.append(reason)


_ACCEPTED = {"status": "Accepted"}


def token_info(ctx: Context, token: Any) -> Payload:
    """idTagInfo (1.6) / idTokenInfo (2.x) for `token` — a 1.6 idTag string or a 2.x
    IdTokenType object: the one place every Authorize, Start/StopTransaction and
    TransactionEvent answer takes its status from."""
    if isinstance(token, dict):
        token = token.get("idToken")
    if ctx.authorize(token if isinstance(token, str) else None):
        return _ACCEPTED
    return {"status": tables.REFUSED_TOKEN_STATUS[ctx.subprotocol]}


Handler = Callable[[Context, Payload], Payload]


def need(payload: Payload, key: str) -> Any:
    try:
        return payload[key]
    except (KeyError, TypeError):
        raise Unprocessable(Fault.OCCURRENCE, f"{key} is required") from None


def as_int(value: Any) -> int | None:
    """An integer, also from a number sent as a string ("1"), as real chargers do."""
    if type(value) is int:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def need_int(payload: Payload, key: str) -> int:
    value = as_int(need(payload, key))
    if value is None:
        raise Unprocessable(Fault.TYPE, f"{key} must be an integer, not {payload[key]!r}")
    return value


def as_number(value: Any) -> float | None:
    """A finite number, also from a numeric string; None for anything else (an integer
    beyond a double among them: the frame keeps it)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def need_number(payload: Payload, key: str) -> float | None:
    """A required number; None if it is a number no double can hold (taken as unknown)."""
    raw = need(payload, key)
    value = as_number(raw)
    if value is None and not isinstance(raw, int):
        raise Unprocessable(Fault.TYPE, f"{key} must be a number, not {raw!r}")
    return value


def text(value: Any) -> str | None:
    """A string field as stored: other JSON types are kept as their JSON text."""
    if value is None or isinstance(value, str):
        return value
    return jsontext.dumps(value)


def member(value: Any, key: str) -> dict[str, Any]:
    """The object at `key` of `value`; {} where either is not an object (lenient)."""
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, dict) else {}


def objects(value: Any) -> list[dict[str, Any]]:
    """The objects of an array field; a broken entry is skipped, not fatal, and a lone
    object where an array belongs (seen from Huawei firmware) counts as one item."""
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def sampled_readings(
    ctx: Context,
    meter_values: object,
    unit_of: Callable[[dict[str, Any]], tuple[Any, int]],
) -> list[Reading]:
    """MeterValue[] → readings. The versions differ only in where the unit is
    (`unit_of`: 1.6 `unit`, 2.x `unitOfMeasure` with its multiplier). A signed or
    non-numeric value is skipped (the frame in `messages` keeps it); a number that
    cannot be a reading is skipped and reported (`ctx.skip`)."""
    found = []
    for meter_value in objects(meter_values):
        stamp = text(meter_value.get("timestamp"))
        for sampled in objects(meter_value.get("sampledValue")):
            if sampled.get("format") == "SignedData":
                continue
            unit, multiplier = unit_of(sampled)
            try:
                value = reading(
                    sampled.get("value"),
                    text(sampled.get("measurand")),
                    text(sampled.get("phase")),
                    text(sampled.get("location")),
                    text(sampled.get("context")),
                    text(unit),
                    multiplier,
                    stamp,
                )
            except Unusable as exc:
                ctx.skip(f"sampled value skipped: {exc}")
                continue
            if value is not None:
                found.append(value)
    return found


def energy_register(readings: list[Reading], context: str | None = None) -> float | None:
    """The active import register among `readings`, preferring one of `context`."""
    registers = [r for r in readings if r.name == "energyWh"]
    if context is not None:
        preferred = [r for r in registers if r.context == context]
        registers = preferred or registers
    return registers[-1].value if registers else None


#: the appliance's charging profile: one fixed id, so that each new limit replaces the
#: last and ClearChargingProfile removes exactly it
PROFILE_ID = 9000
#: a fixed start in the past: the limit holds from now on, whatever the charger's clock
PROFILE_START = "2020-01-01T00:00:00.000Z"

CallBuilder = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def limit_period(values: dict[str, Any]) -> dict[str, Any]:
    period: dict[str, Any] = {"startPeriod": 0, "limit": round(float(values["limit"]), 1)}
    if values.get("phases"):
        period["numberPhases"] = values["phases"]
    return period
