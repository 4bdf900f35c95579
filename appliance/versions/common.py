"""What the per-version mappings share: the handler context, and field access that tells
the peer what is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.domain import Update
from appliance.domain.meter import Reading, reading
from appliance.rpc import Fault
from appliance.store import TransactionIds
from appliance.versions import tables

Payload = dict[str, Any]


class Unprocessable(Exception):
    """The message cannot be processed: the peer gets a CALLERROR with `fault`."""

    def __init__(self, fault: Fault, description: str) -> None:
        super().__init__(description)
        self.fault = fault


def _accept_every_token(token: str | None) -> bool:
    return True


@dataclass(slots=True)
class Context:
    """What a handler may use: the connection's identity and the appliance's services.
    Handlers answer, and `emit` version-neutral updates for the tree."""

    identity: str
    protocol: str
    heartbeat_interval: int
    transaction_ids: TransactionIds
    emit: Callable[[Update], None]
    #: is this RFID/idToken accepted? Asked at each call, so a SIGHUP applies at once
    authorize: Callable[[str | None], bool] = _accept_every_token


_ACCEPTED = {"status": "Accepted"}


def token_info(ctx: Context, token: Any) -> Payload:
    """idTagInfo (1.6) / idTokenInfo (2.x) for `token` — a 1.6 idTag string or a 2.x
    IdTokenType object: the one place every Authorize, Start/StopTransaction and
    TransactionEvent answer takes its status from."""
    if isinstance(token, dict):
        token = token.get("idToken")
    if ctx.authorize(token if isinstance(token, str) else None):
        return _ACCEPTED
    return {"status": tables.REFUSED_TOKEN_STATUS[ctx.protocol]}


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
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def need_number(payload: Payload, key: str) -> float:
    value = as_number(need(payload, key))
    if value is None:
        raise Unprocessable(Fault.TYPE, f"{key} must be a number, not {payload[key]!r}")
    return value


def text(value: Any) -> str | None:
    """A string field as stored: other JSON types are kept as their JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def objects(value: Any) -> list[dict[str, Any]]:
    """The objects of an array field; a broken entry is skipped, not fatal, and a lone
    object where an array belongs (seen from Huawei firmware) counts as one item."""
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def sampled_readings(
    meter_values: object, unit_of: Callable[[dict[str, Any]], tuple[Any, int]]
) -> list[Reading]:
    """MeterValue[] → readings. The versions differ only in where the unit is
    (`unit_of`: 1.6 `unit`, 2.x `unitOfMeasure` with its multiplier). A signed or
    non-numeric value is skipped (the frame in `messages` keeps it)."""
    found = []
    for meter_value in objects(meter_values):
        stamp = text(meter_value.get("timestamp"))
        for sampled in objects(meter_value.get("sampledValue")):
            if sampled.get("format") == "SignedData":
                continue
            unit, multiplier = unit_of(sampled)
            value = reading(
                sampled.get("value"),
                sampled.get("measurand"),
                sampled.get("phase"),
                sampled.get("location"),
                sampled.get("context"),
                unit,
                multiplier,
                stamp,
            )
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

Command = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def limit_period(values: dict[str, Any]) -> dict[str, Any]:
    period: dict[str, Any] = {"startPeriod": 0, "limit": round(float(values["limit"]), 1)}
    if values.get("phases"):
        period["numberPhases"] = values["phases"]
    return period
