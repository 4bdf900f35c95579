"""A simulated OCPP 1.6J charge point: one connector, Core + Smart Charging + Remote
Trigger profiles (OCPP 1.6 §4 and §5)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from appliance.rpc.dialects import OCPP16
from appliance.simulator.chargepoint import Answer, ChargePoint, Transaction, utc_now
from appliance.simulator.physics import Reading, cap_in_watts

CONNECTOR = 1
#: 1.6 §9.1 standard configuration keys the simulator keeps: key → (value, read-only)
CONFIGURATION = {
    "HeartbeatInterval": ("300", False),
    "MeterValueSampleInterval": ("60", False),
    "MeterValuesSampledData": (
        "Energy.Active.Import.Register,Power.Active.Import,SoC,Voltage,Current.Import",
        False,
    ),
    "AuthorizeRemoteTxRequests": ("false", False),
    "NumberOfConnectors": ("1", True),
    "SupportedFeatureProfiles": ("Core,SmartCharging,RemoteTrigger", True),
    "ChargeProfileMaxStackLevel": ("8", True),
}
_INTEGER_KEYS = {"HeartbeatInterval", "MeterValueSampleInterval"}


def sampled_values(reading: Reading, context: str) -> list[dict[str, Any]]:
    values = [
        {
            "value": f"{reading.energy_wh:.0f}",
            "context": context,
            "measurand": "Energy.Active.Import.Register",
            "location": "Outlet",
            "unit": "Wh",
        },
        {"value": f"{reading.power_w:.0f}", "context": context,
         "measurand": "Power.Active.Import", "unit": "W"},
        {"value": f"{reading.soc:.1f}", "context": context, "measurand": "SoC",
         "location": "EV", "unit": "Percent"},
    ]  # fmt: skip
    for phase, (volts, amps) in enumerate(zip(reading.voltage_v, reading.current_a, strict=True)):
        values.append({"value": f"{volts:.1f}", "context": context, "measurand": "Voltage",
                       "phase": f"L{phase + 1}-N", "unit": "V"})  # fmt: skip
        values.append({"value": f"{amps:.2f}", "context": context, "measurand": "Current.Import",
                       "phase": f"L{phase + 1}", "unit": "A"})  # fmt: skip
    return values


class Ocpp16ChargePoint(ChargePoint):
    version = OCPP16.subprotocol
    STATUS: ClassVar[dict[str, str]] = {
        "Available": "Available",
        "Preparing": "Preparing",
        "Charging": "Charging",
        "Finishing": "Finishing",
        "Unavailable": "Unavailable",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration = {k: [v, ro] for k, (v, ro) in CONFIGURATION.items()}
        self.configuration["MeterValueSampleInterval"][0] = f"{self.meter_interval_s:g}"

    # ------------------------------------------------------------------ sending

    def boot_payload(self) -> dict[str, Any]:
        return {
            "chargePointVendor": "ocpp-appliance",
            "chargePointModel": "Simulator 1.6",
            "chargePointSerialNumber": self.identity[-25:],
            "firmwareVersion": "sim-1",
        }

    async def send_status(self, status: str) -> None:
        await self.request(
            "StatusNotification",
            {"connectorId": CONNECTOR, "errorCode": "NoError", "status": status,
             "timestamp": utc_now()},
        )  # fmt: skip

    async def send_vin(self) -> None:
        await self.request(
            "DataTransfer", {"vendorId": "sim", "messageId": "VIN", "data": self.vin_data()}
        )

    async def authorize(self, token: str) -> bool:
        answer = await self.request("Authorize", {"idTag": token})
        return answer is not None and answer["idTagInfo"]["status"] == "Accepted"

    async def start_transaction(self, token: str, remote_start_id: int | None) -> bool:
        meter_start = self.meter.energy_wh
        answer = await self.request(
            "StartTransaction",
            {"connectorId": CONNECTOR, "idTag": token, "meterStart": int(meter_start),
             "timestamp": utc_now()},
        )  # fmt: skip
        if answer is None:
            return False
        self.tx = Transaction(
            str(answer["transactionId"]), token, remote_start_id, trio.current_time(), meter_start
        )
        if answer["idTagInfo"]["status"] != "Accepted":
            await self.end_transaction("DeAuthorized")
            return False
        return True

    async def send_meter_values(self, tx: Transaction, reading: Reading) -> None:
        await self.request(
            "MeterValues",
            {"connectorId": CONNECTOR, "transactionId": int(tx.id),
             "meterValue": [{"timestamp": utc_now(),
                             "sampledValue": sampled_values(reading, "Sample.Periodic")}]},
        )  # fmt: skip

    async def send_load_meter_values(self, reading: Reading) -> None:
        await self.request(
            "MeterValues",
            {"connectorId": CONNECTOR,
             "meterValue": [{"timestamp": utc_now(),
                             "sampledValue": sampled_values(reading, "Sample.Periodic")}]},
        )  # fmt: skip

    async def stop_transaction(self, tx: Transaction, reason: str, reading: Reading) -> bool:
        answer = await self.request(
            "StopTransaction",
            {"transactionId": int(tx.id), "idTag": tx.id_token,
             "meterStop": int(reading.energy_wh), "timestamp": utc_now(), "reason": reason,
             "transactionData": [{"timestamp": utc_now(),
                                  "sampledValue": sampled_values(reading, "Transaction.End")}]},
        )  # fmt: skip
        return answer is not None

    # --------------------------------------------------------------- answering

    def on_ChangeAvailability(self, p: dict[str, Any]) -> Answer:
        return {"status": self.change_availability(p["type"] == "Operative")}, None

    def on_Reset(self, p: dict[str, Any]) -> Answer:
        self.reset_stop_reason = "HardReset" if p["type"] == "Hard" else "SoftReset"
        return {"status": "Accepted"}, self.reset()

    def on_SetChargingProfile(self, p: dict[str, Any]) -> Answer:
        profile = p["csChargingProfiles"]
        if profile["chargingProfilePurpose"] == "TxProfile" and self.tx is None:
            return {"status": "Rejected"}, None  # 1.6 §5.16: TxProfile needs a transaction
        schedule = profile["chargingSchedule"]
        period = schedule["chargingSchedulePeriod"][0]
        watts = cap_in_watts(period["limit"], schedule["chargingRateUnit"],
                             period.get("numberPhases"))  # fmt: skip
        self.set_cap(profile["chargingProfileId"], watts)
        return {"status": "Accepted"}, None

    def on_ClearChargingProfile(self, p: dict[str, Any]) -> Answer:
        found = self.clear_caps(p.get("id"))
        return {"status": "Accepted" if found else "Unknown"}, None

    def on_RemoteStartTransaction(self, p: dict[str, Any]) -> Answer:
        accepted = self.accept_remote_start(p["idTag"], None)
        return {"status": "Accepted" if accepted else "Rejected"}, None

    def on_RemoteStopTransaction(self, p: dict[str, Any]) -> Answer:
        accepted = self.accept_remote_stop(str(p["transactionId"]), "Remote")
        return {"status": "Accepted" if accepted else "Rejected"}, None

    def on_GetConfiguration(self, p: dict[str, Any]) -> Answer:
        keys = p.get("key") or list(self.configuration)
        known = [k for k in keys if k in self.configuration]
        answer: dict[str, Any] = {
            "configurationKey": [
                {"key": k, "readonly": self.configuration[k][1], "value": self.configuration[k][0]}
                for k in known
            ]
        }
        unknown = [k for k in keys if k not in self.configuration]
        if unknown:
            answer["unknownKey"] = unknown
        return answer, None

    def on_ChangeConfiguration(self, p: dict[str, Any]) -> Answer:
        key, value = p["key"], p["value"]
        entry = self.configuration.get(key)
        if entry is None:
            return {"status": "NotSupported"}, None
        if entry[1]:
            return {"status": "Rejected"}, None
        if key in _INTEGER_KEYS:
            try:
                seconds = int(value)
            except ValueError:
                return {"status": "Rejected"}, None
            if seconds <= 0:
                return {"status": "Rejected"}, None
            if key == "MeterValueSampleInterval":
                self.meter_interval_s = float(seconds)
                self.nudge()
            else:
                self.heartbeat_interval_s = float(seconds)
        entry[0] = value
        return {"status": "Accepted"}, None

    def triggers(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        return {
            **super().triggers(),
            "MeterValues": self._triggered_meter_values,
            "DiagnosticsStatusNotification": lambda: self.request(
                "DiagnosticsStatusNotification", {"status": "Idle"}
            ),
        }

    async def _triggered_meter_values(self) -> None:
        reading = self.meter.read(self.vehicle)
        payload: dict[str, Any] = {
            "connectorId": CONNECTOR,
            "meterValue": [
                {"timestamp": utc_now(), "sampledValue": sampled_values(reading, "Trigger")}
            ],
        }
        if self.tx is not None:
            payload["transactionId"] = int(self.tx.id)
        await self.request("MeterValues", payload)
