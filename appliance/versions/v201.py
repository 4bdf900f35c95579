"""OCPP 2.0.1: the charging station's calls → answers and version-neutral updates."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from appliance import domain
from appliance.domain.clock import current_time
from appliance.domain.meter import Reading
from appliance.rpc import Fault
from appliance.tree.ids import component_segment, variable_segment
from appliance.versions.common import (
    PROFILE_ID,
    PROFILE_START,
    CallBuilder,
    Context,
    Handler,
    Payload,
    Unprocessable,
    as_int,
    energy_register,
    limit_period,
    member,
    need,
    objects,
    sampled_readings,
    text,
    token_info,
)


def boot_notification(ctx: Context, payload: Payload) -> Payload:
    station = member(payload, "chargingStation")
    modem = member(station, "modem")
    ctx.emit(
        domain.StationBooted(
            vendor=text(station.get("vendorName")),
            model=text(station.get("model")),
            serial_number=text(station.get("serialNumber")),
            firmware_version=text(station.get("firmwareVersion")),
            iccid=text(modem.get("iccid")),
            imsi=text(modem.get("imsi")),
            boot_reason=text(payload.get("reason")),
        )
    )
    return {"status": "Accepted", "currentTime": current_time(), "interval": ctx.heartbeat_interval}


def heartbeat(ctx: Context, payload: Payload) -> Payload:
    ctx.emit(domain.HeartbeatReceived())
    return {"currentTime": current_time()}


def authorize(ctx: Context, payload: Payload) -> Payload:
    return {"idTokenInfo": token_info(ctx, need(payload, "idToken"))}


def status_notification(ctx: Context, payload: Payload) -> Payload:
    evse = as_int(need(payload, "evseId"))
    if evse is None:
        raise Unprocessable(Fault.TYPE, "evseId must be an integer")
    ctx.emit(
        domain.ConnectorStatus(
            evse_id=evse or None,
            connector_id=as_int(payload.get("connectorId")) if evse else None,
            status=text(need(payload, "connectorStatus")) or "",
            timestamp=text(payload.get("timestamp")),
        )
    )
    return {}


def _unit_of(sampled: dict[str, Any]) -> tuple[Any, int]:
    unit = member(sampled, "unitOfMeasure")
    return unit.get("unit"), as_int(unit.get("multiplier")) or 0


def readings(ctx: Context, meter_values: object) -> list[Reading]:
    """2.x MeterValueType[] → readings, units × 10^multiplier normalised."""
    return sampled_readings(ctx, meter_values, _unit_of)


def meter_values(ctx: Context, payload: Payload) -> Payload:
    evse = as_int(need(payload, "evseId"))
    found = readings(ctx, payload.get("meterValue"))
    if found:
        # evseId 0 is the station's main meter: it feeds the aggregate only
        ctx.emit(domain.MeterSample(evse or None, None, None, found))
    return {}


def transaction_event(ctx: Context, payload: Payload) -> Payload:
    info = need(payload, "transactionInfo")
    transaction_id = text(need(info, "transactionId"))
    event = text(need(payload, "eventType"))
    evse = member(payload, "evse")
    evse_id = as_int(evse.get("id"))
    connector_id = as_int(evse.get("connectorId"))
    token = payload.get("idToken")
    found = readings(ctx, payload.get("meterValue"))
    if found:
        ctx.emit(domain.MeterSample(evse_id, connector_id, transaction_id, found))
    begin = energy_register(found, "Transaction.Begin")
    ctx.emit(
        domain.TransactionEvent(
            transaction_id=transaction_id or "",
            event=event or "",
            timestamp=text(payload.get("timestamp")),
            evse_id=evse_id,
            connector_id=connector_id,
            id_token=text(token.get("idToken")) if isinstance(token, dict) else None,
            seq_no=as_int(payload.get("seqNo")),
            offline=payload.get("offline") is True,
            # Part 2 E: stoppedReason "MAY only be omitted when Reason is Local"
            stop_reason=text(info.get("stoppedReason")) or ("Local" if event == "Ended" else None),
            charging_state=text(info.get("chargingState")),
            # the session's start register: a Transaction.Begin reading, or in the
            # Started event any register reading
            meter_start_wh=begin
            if any(r.context == "Transaction.Begin" for r in found)
            else (energy_register(found) if event == "Started" else None),
            meter_stop_wh=energy_register(found, "Transaction.End") if event == "Ended" else None,
            meter_now_wh=_latest_register(found),
            raw=payload,
        )
    )
    # idTokenInfo answers a token; without one the response is empty (Part 2, E01–E15).
    # An event for a transaction the appliance does not know is acknowledged all the same.
    return {"idTokenInfo": token_info(ctx, token)} if "idToken" in payload else {}


def _latest_register(found: list[Reading]) -> float | None:
    """The register now: a periodic reading wins over a Transaction.Begin one beside it."""
    registers = [r for r in found if r.name == "energyWh" and r.context != "Transaction.Begin"]
    return registers[-1].value if registers else energy_register(found)


def notify_report(ctx: Context, payload: Payload) -> Payload:
    values = []
    for data in objects(payload.get("reportData")):
        component = member(data, "component")
        variable = member(data, "variable")
        evse = member(component, "evse")
        traits = member(data, "variableCharacteristics")
        for attribute in objects(data.get("variableAttribute")):
            values.append(
                domain.DeviceModelValue(
                    component=text(component.get("name")) or "?",
                    component_instance=text(component.get("instance")),
                    evse_id=as_int(evse.get("id")),
                    connector_id=as_int(evse.get("connectorId")),
                    variable=text(variable.get("name")) or "?",
                    variable_instance=text(variable.get("instance")),
                    attribute_type=text(attribute.get("type")) or "Actual",
                    value=attribute.get("value"),
                    # 2.x Part 2 §B: mutability defaults to ReadWrite
                    writable=attribute.get("mutability", "ReadWrite") != "ReadOnly",
                    unit=text(traits.get("unit")),
                    data_type=text(traits.get("dataType")),
                    values_list=text(traits.get("valuesList")),
                    max_limit=_number(traits.get("maxLimit")),
                )
            )
    more = payload.get("tbc") is True
    ctx.emit(domain.DeviceModelReport(values, as_int(payload.get("requestId")), more))
    return {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def settings(values: list[domain.DeviceModelValue]) -> list[domain.Setting]:
    """The Actual values of the station-wide variables (no EVSE, no instance) as
    settings named `Component.Variable`; mutability as reported (Part 2 §B: ReadWrite
    when not said)."""
    found = []
    for v in values:
        if v.attribute_type != "Actual" or v.evse_id is not None:
            continue
        if v.component_instance or v.variable_instance:
            continue
        shown = v.value if isinstance(v.value, str) else None
        listed = v.values_list
        found.append(
            domain.Setting(
                f"{v.component}.{v.variable}",
                f"dm.{component_segment(v.component, None, None, None)}"
                f".{variable_segment(v.variable, None)}.Actual.value",
                shown,
                v.writable,
                tuple(x.strip() for x in listed.split(",") if x.strip()) if listed else None,
                v.max_limit,
                written=partial(_variable_written, v),
            )
        )
    return found


def _variable_written(variable: domain.DeviceModelValue, value: str) -> domain.Update:
    return domain.DeviceModelReport([dataclasses.replace(variable, value=value)])


def setting_status(response: Payload) -> str | None:
    """SetVariables' answer for its one variable: Accepted, Rejected, RebootRequired,
    UnknownComponent, UnknownVariable, NotSupportedAttributeType."""
    results = objects(response.get("setVariableResult"))
    return text(results[0].get("attributeStatus")) if results else None


def _setting(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    component, _, variable = values["name"].partition(".")
    return _set_variable(
        {
            "component": component,
            "variable": variable,
            "attributeType": "Actual",
            "value": values["value"],
        }
    )


def data_transfer(ctx: Context, payload: Payload) -> Payload:
    if "data" in payload:
        ctx.emit(domain.VendorData(payload["data"]))
    return {"status": "Accepted"}


def custom_data(ctx: Context, payload: Payload) -> None:
    """Vendors put extra facts (a VIN among them) into `customData` of any message."""
    extra: Any = payload.get("customData")
    if extra is not None:
        ctx.emit(domain.VendorData(extra))


HANDLERS: dict[str, Handler] = {
    "Authorize": authorize,
    "BootNotification": boot_notification,
    "DataTransfer": data_transfer,
    "Heartbeat": heartbeat,
    "MeterValues": meter_values,
    "NotifyReport": notify_report,
    "StatusNotification": status_notification,
    "TransactionEvent": transaction_event,
}


def _request_start(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    payload: dict[str, Any] = {
        "idToken": {"idToken": values["idToken"], "type": values["idTokenType"]},
        "remoteStartId": values["remoteStartId"],
    }
    if values.get("evseId"):
        payload["evseId"] = values["evseId"]
    if values.get("chargingProfile") is not None:
        payload["chargingProfile"] = values["chargingProfile"]
    return "RequestStartTransaction", payload


def _set_variable(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    component: dict[str, Any] = {"name": values["component"]}
    if values.get("componentInstance"):
        component["instance"] = values["componentInstance"]
    if values.get("evseId") is not None:
        component["evse"] = {"id": values["evseId"]}
        if values.get("connectorId") is not None:
            component["evse"]["connectorId"] = values["connectorId"]
    variable: dict[str, Any] = {"name": values["variable"]}
    if values.get("variableInstance"):
        variable["instance"] = values["variableInstance"]
    data = {
        "attributeType": values["attributeType"],
        "attributeValue": values["value"],
        "component": component,
        "variable": variable,
    }
    return "SetVariables", {"setVariableData": [data]}


#: the controls of README "Controls" as 2.0.1 / 2.1 calls
CONTROLS: dict[str, CallBuilder] = {
    "availability": lambda v: (
        "ChangeAvailability",
        {"operationalStatus": "Operative" if v["operative"] else "Inoperative"},
    ),
    "hardReset": lambda v: ("Reset", {"type": "Immediate"}),
    "softReset": lambda v: ("Reset", {"type": "OnIdle"}),
    "chargeLimit": lambda v: (
        "SetChargingProfile",
        {
            "evseId": 0,
            "chargingProfile": {
                "id": PROFILE_ID,
                "stackLevel": 0,
                "chargingProfilePurpose": "ChargingStationMaxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [
                    {
                        "id": 1,
                        "startSchedule": PROFILE_START,
                        "chargingRateUnit": v["unit"],
                        "chargingSchedulePeriod": [limit_period(v)],
                    }
                ],
            },
        },
    ),
    "clearChargeLimit": lambda v: ("ClearChargingProfile", {"chargingProfileId": PROFILE_ID}),
    "requestStartTransaction": _request_start,
    "requestStopTransaction": lambda v: (
        "RequestStopTransaction",
        {"transactionId": str(v["transactionId"])},
    ),
    "setVariable": _set_variable,
    "setting": _setting,
    "fetchOnBoot": lambda v: (
        "GetBaseReport",
        {"requestId": v["requestId"], "reportBase": "FullInventory"},
    ),
}
