"""OCPP 1.6J: the charge point's calls → answers and version-neutral updates."""

from __future__ import annotations

from functools import partial
from typing import Any

from appliance import domain
from appliance.domain import start_key
from appliance.domain.clock import current_time, iso_now
from appliance.domain.meter import Reading
from appliance.tree.ids import escape
from appliance.versions.common import (
    PROFILE_ID,
    PROFILE_START,
    CallBuilder,
    Context,
    Handler,
    Payload,
    as_int,
    energy_register,
    limit_period,
    need,
    need_int,
    need_number,
    sampled_readings,
    text,
    token_info,
)


def boot_notification(ctx: Context, payload: Payload) -> Payload:
    ctx.emit(
        domain.StationBooted(
            vendor=text(payload.get("chargePointVendor")),
            model=text(payload.get("chargePointModel")),
            serial_number=text(payload.get("chargePointSerialNumber")),
            charge_box_serial_number=text(payload.get("chargeBoxSerialNumber")),
            firmware_version=text(payload.get("firmwareVersion")),
            iccid=text(payload.get("iccid")),
            imsi=text(payload.get("imsi")),
            meter_type=text(payload.get("meterType")),
            meter_serial_number=text(payload.get("meterSerialNumber")),
        )
    )
    return {"status": "Accepted", "currentTime": current_time(), "interval": ctx.heartbeat_interval}


def heartbeat(ctx: Context, payload: Payload) -> Payload:
    ctx.emit(domain.HeartbeatReceived())
    return {"currentTime": current_time()}


def authorize(ctx: Context, payload: Payload) -> Payload:
    return {"idTagInfo": token_info(ctx, need(payload, "idTag"))}


def status_notification(ctx: Context, payload: Payload) -> Payload:
    connector = need_int(payload, "connectorId")
    # 1.6 connector n is EVSE n with one connector; connector 0 is the station (README
    # "`states` and `objects`")
    ctx.emit(
        domain.ConnectorStatus(
            evse_id=connector or None,
            connector_id=1 if connector else None,
            status=text(need(payload, "status")) or "",
            error_code=text(payload.get("errorCode")),
            vendor_error_code=text(payload.get("vendorErrorCode")),
            info=text(payload.get("info")),
            timestamp=text(payload.get("timestamp")),
        )
    )
    return {}


def _unit_of(sampled: dict[str, Any]) -> tuple[Any, int]:
    return sampled.get("unit"), 0  # no multiplier in 1.6


def readings(ctx: Context, meter_values: object) -> list[Reading]:
    """1.6 MeterValue[] → readings; the unit is `unit`."""
    return sampled_readings(ctx, meter_values, _unit_of)


def _sample(ctx: Context, connector: int, transaction_id: str | None, found: list) -> None:
    if found:
        ctx.emit(
            domain.MeterSample(connector or None, 1 if connector else None, transaction_id, found)
        )


def meter_values(ctx: Context, payload: Payload) -> Payload:
    connector = need_int(payload, "connectorId")
    transaction = as_int(payload.get("transactionId"))
    found = readings(ctx, payload.get("meterValue"))
    _sample(ctx, connector, None if transaction is None else str(transaction), found)
    return {}


def start_transaction(ctx: Context, payload: Payload) -> Payload:
    connector = need_int(payload, "connectorId")
    id_tag = text(need(payload, "idTag"))
    meter_start = need_number(payload, "meterStart")  # 1.6: always Wh
    # a start without its time (seen in the field) still needs its id: the appliance's
    # clock stands in for it
    started_at = text(payload.get("timestamp")) or iso_now()
    # only an identical repeat is a repeat: the register as sent, not through a float
    key = start_key(ctx.identity, connector, id_tag, payload["meterStart"], started_at)
    transaction_id, _ = ctx.transaction_ids.start(key)
    ctx.emit(
        domain.TransactionEvent(
            transaction_id=str(transaction_id),
            event="Started",
            timestamp=started_at,
            evse_id=connector,
            connector_id=1,
            id_token=id_tag,
            meter_start_wh=meter_start,
            raw=payload,
        )
    )
    return {"transactionId": transaction_id, "idTagInfo": token_info(ctx, id_tag)}


def stop_transaction(ctx: Context, payload: Payload) -> Payload:
    # Always acknowledged, also for an unknown id or -1 (offline start): a charger that
    # gets an error retries its StopTransaction forever.
    transaction_id = str(need_int(payload, "transactionId"))
    meter_stop = need_number(payload, "meterStop")
    timestamp = text(need(payload, "timestamp"))
    found = readings(ctx, payload.get("transactionData"))
    _sample(ctx, 0, transaction_id, found)
    ctx.emit(
        domain.TransactionEvent(
            transaction_id=transaction_id,
            event="Ended",
            timestamp=timestamp,
            stop_reason=text(payload.get("reason")) or "Local",
            meter_stop_wh=meter_stop,
            meter_now_wh=energy_register(found, "Transaction.End"),
            raw=payload,
        )
    )
    return {"idTagInfo": token_info(ctx, payload["idTag"])} if "idTag" in payload else {}


def data_transfer(ctx: Context, payload: Payload) -> Payload:
    if "data" in payload:
        ctx.emit(domain.VendorData(payload["data"]))
    return {"status": "Accepted"}


HANDLERS: dict[str, Handler] = {
    "Authorize": authorize,
    "BootNotification": boot_notification,
    "DataTransfer": data_transfer,
    "Heartbeat": heartbeat,
    "MeterValues": meter_values,
    "StartTransaction": start_transaction,
    "StatusNotification": status_notification,
    "StopTransaction": stop_transaction,
}


def _remote_start(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    payload: dict[str, Any] = {"idTag": values["idToken"]}
    if values.get("evseId"):
        payload["connectorId"] = values["evseId"]  # 1.6 connector n is EVSE n
    if values.get("chargingProfile") is not None:
        payload["chargingProfile"] = values["chargingProfile"]
    return "RemoteStartTransaction", payload


def _remote_stop(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    transaction = as_int(values["transactionId"])
    if transaction is None:
        raise ValueError(f"1.6 transaction ids are numbers, not {values['transactionId']!r}")
    return "RemoteStopTransaction", {"transactionId": transaction}


#: the controls of README "Controls" as 1.6 calls
CONTROLS: dict[str, CallBuilder] = {
    "availability": lambda v: (
        "ChangeAvailability",
        {"connectorId": 0, "type": "Operative" if v["operative"] else "Inoperative"},
    ),
    "hardReset": lambda v: ("Reset", {"type": "Hard"}),
    "softReset": lambda v: ("Reset", {"type": "Soft"}),
    "chargeLimit": lambda v: (
        "SetChargingProfile",
        {
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": PROFILE_ID,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "startSchedule": PROFILE_START,
                    "chargingRateUnit": v["unit"],
                    "chargingSchedulePeriod": [limit_period(v)],
                },
            },
        },
    ),
    "clearChargeLimit": lambda v: ("ClearChargingProfile", {"id": PROFILE_ID}),
    "requestStartTransaction": _remote_start,
    "requestStopTransaction": _remote_stop,
    "changeConfiguration": lambda v: (
        "ChangeConfiguration",
        {"key": v["key"], "value": _config_text(v["value"])},
    ),
    "fetchOnBoot": lambda v: ("GetConfiguration", {}),
    "setting": lambda v: ("ChangeConfiguration", {"key": v["name"], "value": v["value"]}),
}


def settings(keys: list[Any]) -> list[domain.Setting]:
    """GetConfiguration's keys as settings (1.6 §7.2: a key not listed is unknown)."""
    found = []
    for entry in keys:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            continue
        key = entry["key"]
        value = entry.get("value")
        found.append(
            domain.Setting(
                key,
                f"config.{escape(key)}",
                value if isinstance(value, str) else None,
                not entry.get("readonly", False),
                written=partial(_key_written, key),
            )
        )
    return found


def _key_written(key: str, value: str) -> domain.Update:
    return domain.ConfigurationReport([{"key": key, "value": value, "readonly": False}])


def setting_status(response: Payload) -> str | None:
    """ChangeConfiguration's answer: Accepted, Rejected, RebootRequired, NotSupported."""
    return text(response.get("status"))


def _config_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)
