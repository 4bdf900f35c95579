"""A simulated OCPP 2.0.1 / 2.1 Charging Station: one EVSE with one connector, a small
Device Model (Part 2 B06/B07, reported with NotifyReport), transactions as
TransactionEvent (E01–E15), smart charging (K01, K10) and remote control (F01–F06)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from appliance.rpc.dialects import OCPP21, OCPP201
from appliance.simulator.chargepoint import Answer, ChargePoint, Transaction, utc_now
from appliance.simulator.physics import MAX_POWER_W, Reading, cap_in_watts

EVSE = {"id": 1, "connectorId": 1}
#: NotifyReport rows per message: Part 2 B07 allows splitting; a handful keeps frames small
REPORT_ROWS_PER_MESSAGE = 20
#: the simulator's stop reasons → TransactionEvent triggerReason (Part 2 E06)
TRIGGER_OF_STOP = {
    "Local": "StopAuthorized",
    "Remote": "RemoteStop",
    "ImmediateReset": "ResetCommand",
    "Reboot": "ResetCommand",
    "DeAuthorized": "Deauthorized",
}


@dataclass(slots=True)
class Variable:
    value: str
    mutability: str  # ReadOnly | ReadWrite
    data_type: str  # string | integer | boolean | decimal | MemberList
    unit: str | None = None


def device_model(cp: Ocpp2xChargePoint) -> dict[tuple[str, int | None, str], Variable]:
    """(component, EVSE id, variable) → Variable: what GetVariables reads, SetVariables
    writes and NotifyReport reports."""
    return {
        ("ChargingStation", None, "Model"): Variable("Simulator 2.x", "ReadOnly", "string"),
        ("ChargingStation", None, "VendorName"): Variable("ocpp-appliance", "ReadOnly", "string"),
        ("ChargingStation", None, "AvailabilityState"): Variable(
            "Available", "ReadOnly", "OptionList"
        ),
        ("OCPPCommCtrlr", None, "HeartbeatInterval"): Variable(
            f"{cp.heartbeat_interval_s:.0f}", "ReadWrite", "integer", "s"
        ),
        ("SampledDataCtrlr", None, "TxUpdatedInterval"): Variable(
            f"{cp.meter_interval_s:.0f}", "ReadWrite", "integer", "s"
        ),
        ("SampledDataCtrlr", None, "TxUpdatedMeasurands"): Variable(
            "Energy.Active.Import.Register,Power.Active.Import,SoC,Voltage,Current.Import",
            "ReadWrite",
            "MemberList",
        ),
        ("AuthCtrlr", None, "AuthorizeRemoteStart"): Variable("false", "ReadWrite", "boolean"),
        ("SmartChargingCtrlr", None, "Enabled"): Variable("true", "ReadOnly", "boolean"),
        ("EVSE", 1, "Power"): Variable(f"{MAX_POWER_W:.0f}", "ReadOnly", "decimal", "W"),
        ("EVSE", 1, "AvailabilityState"): Variable("Available", "ReadOnly", "OptionList"),
    }


def meter_value(reading: Reading, context: str) -> dict[str, Any]:
    def sample(value: float, measurand: str, unit: str, **extra: Any) -> dict[str, Any]:
        return {"value": value, "context": context, "measurand": measurand,
                "unitOfMeasure": {"unit": unit}, **extra}  # fmt: skip

    values = [
        sample(round(reading.energy_wh, 1), "Energy.Active.Import.Register", "Wh",
               location="Outlet"),
        sample(round(reading.power_w, 1), "Power.Active.Import", "W"),
        sample(round(reading.soc, 1), "SoC", "Percent", location="EV"),
    ]  # fmt: skip
    for phase, (volts, amps) in enumerate(zip(reading.voltage_v, reading.current_a, strict=True)):
        values.append(sample(volts, "Voltage", "V", phase=f"L{phase + 1}-N"))
        values.append(sample(amps, "Current.Import", "A", phase=f"L{phase + 1}"))
    return {"timestamp": utc_now(), "sampledValue": values}


class Ocpp2xChargePoint(ChargePoint):
    version = OCPP201.subprotocol
    STATUS: ClassVar[dict[str, str]] = {
        "Available": "Available",
        "Preparing": "Occupied",
        "Charging": "Occupied",
        "Finishing": "Occupied",
        "Unavailable": "Unavailable",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variables = device_model(self)
        self.reset_stop_reason = "ImmediateReset"

    # ------------------------------------------------------------------ sending

    def boot_payload(self) -> dict[str, Any]:
        return {
            "chargingStation": {
                "model": "Simulator 2.x",
                "vendorName": "ocpp-appliance",
                "serialNumber": self.identity[-25:],
                "firmwareVersion": "sim-1",
            },
            "reason": self.boot_reason,
        }

    async def send_status(self, status: str) -> None:
        state = "Available" if self.operative else "Unavailable"
        self.variables[("ChargingStation", None, "AvailabilityState")].value = state
        self.variables[("EVSE", 1, "AvailabilityState")].value = status
        await self.request(
            "StatusNotification",
            {"timestamp": utc_now(), "connectorStatus": status, "evseId": EVSE["id"],
             "connectorId": EVSE["connectorId"]},
        )  # fmt: skip

    async def send_vin(self) -> None:
        await self.request(
            "DataTransfer", {"vendorId": "sim", "messageId": "VIN", "data": self.vin_data()}
        )

    async def authorize(self, token: str) -> bool:
        answer = await self.request("Authorize", {"idToken": _token(token)})
        return answer is not None and answer["idTokenInfo"]["status"] == "Accepted"

    async def _event(self, tx: Transaction, event_type: str, trigger: str,
                     info: dict[str, Any], reading: Reading, context: str,
                     **extra: Any) -> dict[str, Any] | None:  # fmt: skip
        payload = {
            "eventType": event_type,
            "timestamp": utc_now(),
            "triggerReason": trigger,
            "seqNo": tx.seq_no,
            "transactionInfo": {"transactionId": tx.id, **info},
            "evse": dict(EVSE),
            "meterValue": [meter_value(reading, context)],
            **extra,
        }
        tx.seq_no += 1
        return await self.request("TransactionEvent", payload)

    async def start_transaction(self, token: str, remote_start_id: int | None) -> bool:
        tx = Transaction(
            str(uuid.UUID(int=self.rng.getrandbits(128))),
            token,
            remote_start_id,
            trio.current_time(),
            self.meter.energy_wh,
        )
        self.tx = tx
        info: dict[str, Any] = {"chargingState": "Charging"}
        if remote_start_id is not None:
            info["remoteStartId"] = remote_start_id
        trigger = "RemoteStart" if remote_start_id is not None else "Authorized"
        reading = self.meter.read(self.vehicle)
        answer = await self._event(
            tx, "Started", trigger, info, reading, "Transaction.Begin", idToken=_token(token)
        )
        if answer is None:
            self.tx = None
            return False
        status = (answer.get("idTokenInfo") or {}).get("status", "Accepted")
        if status != "Accepted":
            await self.end_transaction("DeAuthorized")
            return False
        return True

    async def send_meter_values(self, tx: Transaction, reading: Reading) -> None:
        state = "Charging" if reading.power_w > 0 else "SuspendedEVSE"
        await self._event(tx, "Updated", "MeterValuePeriodic", {"chargingState": state},
                          reading, "Sample.Periodic")  # fmt: skip

    async def send_load_meter_values(self, reading: Reading) -> None:
        await self.request(
            "MeterValues",
            {"evseId": EVSE["id"], "meterValue": [meter_value(reading, "Sample.Periodic")]},
        )

    async def stop_transaction(self, tx: Transaction, reason: str, reading: Reading) -> bool:
        info = {"chargingState": "EVConnected", "stoppedReason": reason}
        if tx.remote_start_id is not None:
            info["remoteStartId"] = tx.remote_start_id  # type: ignore[assignment]
        trigger = TRIGGER_OF_STOP.get(reason, "StopAuthorized")
        answer = await self._event(tx, "Ended", trigger, info, reading, "Transaction.End",
                                   idToken=_token(tx.id_token))  # fmt: skip
        return answer is not None

    # --------------------------------------------------------------- answering

    def on_ChangeAvailability(self, p: dict[str, Any]) -> Answer:
        return {"status": self.change_availability(p["operationalStatus"] == "Operative")}, None

    def on_Reset(self, p: dict[str, Any]) -> Answer:
        status = "Scheduled" if p["type"] == "OnIdle" and self.tx is not None else "Accepted"
        return {"status": status}, self.reset()

    def on_SetChargingProfile(self, p: dict[str, Any]) -> Answer:
        profile = p["chargingProfile"]
        if profile["chargingProfilePurpose"] == "TxProfile" and self.tx is None:
            return {"status": "Rejected"}, None  # K01.FR.09: TxProfile needs a transaction
        schedule = profile["chargingSchedule"][0]
        period = schedule["chargingSchedulePeriod"][0]
        if "limit" not in period:
            return {"status": "Rejected"}, None  # 2.1 setpoint-only periods: not simulated
        watts = cap_in_watts(period["limit"], schedule["chargingRateUnit"],
                             period.get("numberPhases"))  # fmt: skip
        self.set_cap(profile["id"], watts)
        return {"status": "Accepted"}, None

    def on_ClearChargingProfile(self, p: dict[str, Any]) -> Answer:
        found = self.clear_caps(p.get("chargingProfileId"))
        return {"status": "Accepted" if found else "Unknown"}, None

    def on_RequestStartTransaction(self, p: dict[str, Any]) -> Answer:
        accepted = self.accept_remote_start(p["idToken"]["idToken"], p["remoteStartId"])
        return {"status": "Accepted" if accepted else "Rejected"}, None

    def on_RequestStopTransaction(self, p: dict[str, Any]) -> Answer:
        accepted = self.accept_remote_stop(p["transactionId"], "Remote")
        return {"status": "Accepted" if accepted else "Rejected"}, None

    def _lookup(self, data: dict[str, Any]) -> tuple[str | None, Variable | None]:
        """(status if not found, the variable)."""
        component = data["component"]
        evse = (component.get("evse") or {}).get("id")
        name = component["name"]
        if not any(c == name for c, _, _ in self.variables):
            return "UnknownComponent", None
        variable = self.variables.get((name, evse, data["variable"]["name"]))
        if variable is None:
            return "UnknownVariable", None
        if data.get("attributeType", "Actual") != "Actual":
            return "NotSupportedAttributeType", None
        return None, variable

    def on_GetVariables(self, p: dict[str, Any]) -> Answer:
        results = []
        for data in p["getVariableData"]:
            status, variable = self._lookup(data)
            result = {"attributeStatus": status or "Accepted", "component": data["component"],
                      "variable": data["variable"]}  # fmt: skip
            if variable is not None:
                result["attributeValue"] = variable.value
            if "attributeType" in data:
                result["attributeType"] = data["attributeType"]
            results.append(result)
        return {"getVariableResult": results}, None

    def on_SetVariables(self, p: dict[str, Any]) -> Answer:
        results = []
        for data in p["setVariableData"]:
            status, variable = self._lookup(data)
            if variable is not None:
                status = self._write(data, variable)
            result = {"attributeStatus": status, "component": data["component"],
                      "variable": data["variable"]}  # fmt: skip
            if "attributeType" in data:
                result["attributeType"] = data["attributeType"]
            results.append(result)
        return {"setVariableResult": results}, None

    def _write(self, data: dict[str, Any], variable: Variable) -> str:
        if variable.mutability == "ReadOnly":
            return "Rejected"
        value = str(data["attributeValue"])
        if variable.data_type == "integer":
            try:
                number = int(value)
            except ValueError:
                return "Rejected"
            if number <= 0:
                return "Rejected"
            name = data["variable"]["name"]
            if name == "TxUpdatedInterval":
                self.meter_interval_s = float(number)
                self.nudge()
            elif name == "HeartbeatInterval":
                self.heartbeat_interval_s = float(number)
        elif variable.data_type == "boolean" and value.lower() not in ("true", "false"):
            return "Rejected"
        variable.value = value
        return "Accepted"

    def on_GetBaseReport(self, p: dict[str, Any]) -> Answer:
        request_id, base = p["requestId"], p["reportBase"]

        async def report() -> None:
            rows = [
                _report_row(key, variable)
                for key, variable in self.variables.items()
                if base != "ConfigurationInventory" or variable.mutability == "ReadWrite"
            ]
            chunks = [rows[i : i + REPORT_ROWS_PER_MESSAGE]
                      for i in range(0, len(rows), REPORT_ROWS_PER_MESSAGE)]  # fmt: skip
            for seq_no, chunk in enumerate(chunks):
                await self.request(
                    "NotifyReport",
                    {"requestId": request_id, "generatedAt": utc_now(), "seqNo": seq_no,
                     "tbc": seq_no < len(chunks) - 1, "reportData": chunk},
                )  # fmt: skip

        return {"status": "Accepted"}, report

    def triggers(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        send = {
            **super().triggers(),
            "MeterValues": lambda: self.send_load_meter_values(self.meter.read(self.vehicle)),
            "LogStatusNotification": lambda: self.request(
                "LogStatusNotification", {"status": "Idle"}
            ),
        }
        tx = self.tx
        if tx is not None:
            send["TransactionEvent"] = lambda: self._event(
                tx, "Updated", "Trigger", {"chargingState": "Charging"},
                self.meter.read(self.vehicle), "Trigger",
            )  # fmt: skip
        return send


class Ocpp21ChargePoint(Ocpp2xChargePoint):
    version = OCPP21.subprotocol


def _token(token: str) -> dict[str, Any]:
    return {"idToken": token, "type": "ISO14443"}


def _report_row(key: tuple[str, int | None, str], variable: Variable) -> dict[str, Any]:
    component, evse, name = key
    row: dict[str, Any] = {
        "component": {"name": component, **({"evse": {"id": evse}} if evse else {})},
        "variable": {"name": name},
        "variableAttribute": [
            {"type": "Actual", "value": variable.value, "mutability": variable.mutability}
        ],
        "variableCharacteristics": {"dataType": variable.data_type, "supportsMonitoring": False},
    }
    if variable.unit:
        row["variableCharacteristics"]["unit"] = variable.unit
    return row
