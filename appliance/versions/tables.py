"""Static per-version OCPP action tables: who initiates each action, and what a CSMS
without special logic answers.

Keys are the WebSocket subprotocol names (rpc.dialects). Action
names are the exact OCPP-J action strings, which are also the schema file stems in
``schemas/``. ``tests/test_tables.py`` proves every table against those schemas.

The response payloads in ``MINIMAL_RESPONSES`` are shared module-level objects: callers
must ``copy.deepcopy`` one before filling in real values (time, interval, echoed ids).
"""

from __future__ import annotations

import copy
from typing import Any

from appliance.rpc import dialects

OCPP16 = dialects.OCPP16.subprotocol
OCPP201 = dialects.OCPP201.subprotocol
OCPP21 = dialects.OCPP21.subprotocol

# Placeholder timestamp; the caller replaces it with the CSMS clock.
_PLACEHOLDER_TIME = "2026-01-01T00:00:00Z"

# The status of an idTagInfo / idTokenInfo for a token that `[authorization] id_tokens`
# does not hold. 1.6 AuthorizationStatus has no "Unknown": Invalid is "not known or not
# valid". 2.x has Unknown for exactly this (Part 2 C01); its Invalid means known but not
# valid (expired, blocked), which a plain list cannot say.
REFUSED_TOKEN_STATUS = {OCPP16: "Invalid", OCPP201: "Unknown", OCPP21: "Unknown"}

#: where a charge point says which charging rate units its profiles may use, and its words
#: for A and W: 1.6 configuration key ChargingScheduleAllowedChargingRateUnit (CSL of
#: Current, Power; §9.4), 2.x SmartChargingCtrlr.RateUnit (MemberList of A, W; Part 2
#: Appendix 3). README "Controls": a charge limit goes in the unit the charger takes.
_RATE_UNITS_2X = ("dm.SmartChargingCtrlr.RateUnit.Actual.value", {"A": "A", "W": "W"})
RATE_UNITS: dict[str, tuple[str, dict[str, str]]] = {
    OCPP16: ("config.ChargingScheduleAllowedChargingRateUnit", {"Current": "A", "Power": "W"}),
    OCPP201: _RATE_UNITS_2X,
    OCPP21: _RATE_UNITS_2X,
}

# README "Readings the appliance asks for" (issue 26): the measurands each version names
# (MeasurandEnumType, 1.6 §7.31; tests/test_tables.py proves them against the schemas)
_MEASURANDS_BOTH = frozenset(
    {
        "Current.Export",
        "Current.Import",
        "Current.Offered",
        "Energy.Active.Export.Interval",
        "Energy.Active.Export.Register",
        "Energy.Active.Import.Interval",
        "Energy.Active.Import.Register",
        "Energy.Reactive.Export.Interval",
        "Energy.Reactive.Export.Register",
        "Energy.Reactive.Import.Interval",
        "Energy.Reactive.Import.Register",
        "Frequency",
        "Power.Active.Export",
        "Power.Active.Import",
        "Power.Factor",
        "Power.Offered",
        "Power.Reactive.Export",
        "Power.Reactive.Import",
        "SoC",
        "Voltage",
    }
)
_MEASURANDS_201 = _MEASURANDS_BOTH | {
    "Energy.Active.Net",
    "Energy.Apparent.Export",
    "Energy.Apparent.Import",
    "Energy.Apparent.Net",
    "Energy.Reactive.Net",
}
MEASURAND_NAMES: dict[str, frozenset[str]] = {
    OCPP16: _MEASURANDS_BOTH | {"RPM", "Temperature"},
    OCPP201: _MEASURANDS_201,
    OCPP21: _MEASURANDS_201
    | {
        "Current.Export.Minimum",
        "Current.Export.Offered",
        "Current.Import.Minimum",
        "Current.Import.Offered",
        "Display.BatteryEnergyCapacity",
        "Display.ChargingComplete",
        "Display.InletHot",
        "Display.MaximumSOC",
        "Display.MinimumSOC",
        "Display.PresentSOC",
        "Display.RemainingTimeToMaximumSOC",
        "Display.RemainingTimeToMinimumSOC",
        "Display.RemainingTimeToTargetSOC",
        "Display.TargetSOC",
        "Energy.Active.Import.CableLoss",
        "Energy.Active.Import.LocalGeneration.Register",
        "Energy.Active.Setpoint.Interval",
        "EnergyRequest.Bulk",
        "EnergyRequest.Maximum",
        "EnergyRequest.Maximum.V2X",
        "EnergyRequest.Minimum",
        "EnergyRequest.Minimum.V2X",
        "EnergyRequest.Target",
        "Power.Active.Residual",
        "Power.Active.Setpoint",
        "Power.Export.Minimum",
        "Power.Export.Offered",
        "Power.Import.Minimum",
        "Power.Import.Offered",
        "Voltage.Maximum",
        "Voltage.Minimum",
    },
}
#: every measurand any version names (what `[readings] measurands` may hold)
ALL_MEASURANDS = frozenset().union(*MEASURAND_NAMES.values())

#: where each version keeps what it measures: role → the setting's name (1.6: a
#: configuration key, §9.1; 2.x: Component.Variable of the Device Model, Part 2 Appendix 3
#: SampledDataCtrlr and AlignedDataCtrlr). A role a version lacks is absent.
_READING_SETTINGS_2X = {
    "measurands": "SampledDataCtrlr.TxUpdatedMeasurands",
    "interval": "SampledDataCtrlr.TxUpdatedInterval",
    "endedMeasurands": "SampledDataCtrlr.TxEndedMeasurands",
    "alignedMeasurands": "AlignedDataCtrlr.Measurands",
    "alignedInterval": "AlignedDataCtrlr.Interval",
}
READING_SETTINGS: dict[str, dict[str, str]] = {
    OCPP16: {
        "measurands": "MeterValuesSampledData",
        "interval": "MeterValueSampleInterval",
        "alignedMeasurands": "MeterValuesAlignedData",
        "alignedInterval": "ClockAlignedDataInterval",
    },
    OCPP201: _READING_SETTINGS_2X,
    OCPP21: _READING_SETTINGS_2X,
}
#: 1.6 §9.1: the most measurands a list takes is a key of its own (2.x: the variable's
#: maxLimit, the longest CSV string it takes)
LIST_LENGTH_SETTINGS: dict[str, dict[str, str]] = {
    OCPP16: {
        "MeterValuesSampledData": "MeterValuesSampledDataMaxLength",
        "MeterValuesAlignedData": "MeterValuesAlignedDataMaxLength",
    },
    OCPP201: {},
    OCPP21: {},
}

# Calls whose exact repeat is a retry after a lost answer, not a new fact: each carries
# its own time (and 2.x TransactionEvent its seqNo), and a charger resends them until
# answered, also after a reconnect (1.6 §4.1 "transaction-related messages", 2.x Part 2
# E.Transactions "queued"). A repeat is answered again but applied once.
RETRIED = frozenset({"MeterValues", "StartTransaction", "StopTransaction", "TransactionEvent"})

# --------------------------------------------------------------------------------------
# OCPP 1.6 edition 2 + "Improved security for OCPP 1.6-J" whitepaper (edition 3)
# --------------------------------------------------------------------------------------

# OCPP 1.6 §4 "Operations Initiated by Charge Point" (4.1-4.10), plus the four
# whitepaper messages that are "sent by the Charge Point to the Central System":
# LogStatusNotification, SecurityEventNotification, SignCertificate and
# SignedFirmwareStatusNotification.
_V16_FROM_CP = frozenset(
    {
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
        # security whitepaper
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignCertificate",
        "SignedFirmwareStatusNotification",
    }
)

# OCPP 1.6 §5 "Operations Initiated by Central System" (5.1-5.19; DataTransfer is §5.6
# as well as §4.3), plus the whitepaper messages "sent by the Central System to the
# Charge Point".
_V16_FROM_CSMS = frozenset(
    {
        "CancelReservation",
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "ClearChargingProfile",
        "DataTransfer",
        "GetCompositeSchedule",
        "GetConfiguration",
        "GetDiagnostics",
        "GetLocalListVersion",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
        "UpdateFirmware",
        # security whitepaper
        "CertificateSigned",
        "DeleteCertificate",
        "ExtendedTriggerMessage",
        "GetInstalledCertificateIds",
        "GetLog",
        "InstallCertificate",
        "SignedUpdateFirmware",
    }
)

# --------------------------------------------------------------------------------------
# OCPP 2.0.1 Part 2 (each message's "sent by ... to ..." line in the Messages section)
# --------------------------------------------------------------------------------------

_V201_FROM_CP = frozenset(
    {
        "Authorize",
        "BootNotification",
        "ClearedChargingLimit",
        "DataTransfer",
        "FirmwareStatusNotification",
        # ISO 15118 (block M): the station asks the CSMS to relay to the V2G PKI / OCSP.
        "Get15118EVCertificate",
        "GetCertificateStatus",
        "Heartbeat",
        "LogStatusNotification",
        "MeterValues",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyEvent",
        "NotifyMonitoringReport",
        "NotifyReport",
        # L03: a Local Controller reports its firmware-publishing progress.
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "SecurityEventNotification",
        "SignCertificate",
        "StatusNotification",
        "TransactionEvent",
    }
)

_V201_FROM_CSMS = frozenset(
    {
        "CancelReservation",
        "CertificateSigned",
        "ChangeAvailability",
        "ClearCache",
        "ClearChargingProfile",
        "ClearDisplayMessage",
        "ClearVariableMonitoring",
        "CostUpdated",
        "CustomerInformation",
        "DataTransfer",
        "DeleteCertificate",
        "GetBaseReport",
        "GetChargingProfiles",
        "GetCompositeSchedule",
        "GetDisplayMessages",
        "GetInstalledCertificateIds",
        "GetLocalListVersion",
        "GetLog",
        "GetMonitoringReport",
        "GetReport",
        "GetTransactionStatus",
        "GetVariables",
        "InstallCertificate",
        "PublishFirmware",
        "RequestStartTransaction",
        "RequestStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "SetDisplayMessage",
        "SetMonitoringBase",
        "SetMonitoringLevel",
        "SetNetworkProfile",
        "SetVariableMonitoring",
        "SetVariables",
        "TriggerMessage",
        "UnlockConnector",
        "UnpublishFirmware",
        "UpdateFirmware",
    }
)

# --------------------------------------------------------------------------------------
# OCPP 2.1 Part 2: a strict superset of 2.0.1 (no action was removed or reversed).
# --------------------------------------------------------------------------------------

_V21_FROM_CP = _V201_FROM_CP | frozenset(
    {
        # Battery swap station reports BatteryIn/BatteryOut; the response is empty and
        # "the request cannot be rejected" (BatterySwapResponse schema description).
        "BatterySwap",
        # N11-N15 periodic event streams: the station owns the streams. After the CSMS
        # sets a monitor with periodicEventStream params it opens the stream
        # (constantStreamData carries its own variableMonitoringId), streams data as
        # SEND, and closes it, e.g. when the monitor is cleared (N13). The CSMS only
        # lists (Get, N12) and re-paces (Adjust, N14) them.
        "OpenPeriodicEventStream",
        "NotifyPeriodicEventStream",
        "ClosePeriodicEventStream",
        # ISO 15118-20: station asks the CSMS for OCSP status of a whole chain.
        "GetCertificateChainStatus",
        # DER control: the station reports alarms / start-stop of DER functions and
        # answers GetDERControl with ReportDERControl ("requestId from GetDERControl").
        "NotifyDERAlarm",
        "NotifyDERStartStop",
        "ReportDERControl",
        # Station tells the CSMS it (de)activated priority charging locally; the CSMS
        # side of that feature is UsePriorityCharging.
        "NotifyPriorityCharging",
        # Payment: the station's payment terminal result, and a VAT-number check for a
        # company receipt (response carries "company" address found by the CSMS).
        "NotifySettlement",
        "VatNumberValidation",
        # Dynamic charging profiles: station pulls an update; the push variant is
        # UpdateDynamicSchedule (CSMS -> station).
        "PullDynamicScheduleUpdate",
    }
)

_V21_FROM_CSMS = _V201_FROM_CSMS | frozenset(
    {
        "AFRRSignal",
        "AdjustPeriodicEventStream",
        "ChangeTransactionTariff",
        "ClearDERControl",
        "ClearTariffs",
        "GetDERControl",
        "GetPeriodicEventStream",
        "GetTariffs",
        # After ISO 15118-20 authorization the CSMS tells the station which energy
        # transfer modes it accepts ("Modes of energy transfer that are accepted by
        # CSMS", request schema).
        "NotifyAllowedEnergyTransfer",
        # The CSMS runs the web payment page behind the station's QR code, so only it
        # knows a payment has started; it tells the station which EVSE to hold and for
        # how long ("timeout"). Earlier 2.1 drafts called this QRCodeScanned.
        "NotifyWebPaymentStarted",
        "RequestBatterySwap",
        "SetDERControl",
        "SetDefaultTariff",
        "UpdateDynamicSchedule",
        "UsePriorityCharging",
    }
)

FROM_CHARGE_POINT: dict[str, frozenset[str]] = {
    OCPP16: _V16_FROM_CP,
    OCPP201: _V201_FROM_CP,
    OCPP21: _V21_FROM_CP,
}
"""Every action a charge point / Charging Station initiates towards the CSMS."""

FROM_CSMS: dict[str, frozenset[str]] = {
    OCPP16: _V16_FROM_CSMS,
    OCPP201: _V201_FROM_CSMS,
    OCPP21: _V21_FROM_CSMS,
}
"""Every action the CSMS initiates towards a charge point / Charging Station."""

SEND_ONLY: dict[str, frozenset[str]] = {
    OCPP16: frozenset(),
    OCPP201: frozenset(),
    # OCPP-J 2.1 (Part 4) adds message type 6 SEND: unconfirmed, no CALLRESULT, and
    # NotifyPeriodicEventStream (N15) is the only message using it; its schema is the
    # lone file without a Request/Response suffix.
    OCPP21: frozenset({"NotifyPeriodicEventStream"}),
}
"""Actions carried as OCPP-J SEND [6]: never answered, so no response payload."""

# --------------------------------------------------------------------------------------
# Minimal responses. Policy: acknowledge notifications with the empty object, accept
# tokens, and for services this CSMS does not offer answer with the truthful negative
# status the schema provides (never a fake Accepted).
# --------------------------------------------------------------------------------------

_V16_RESPONSES: dict[str, dict[str, Any]] = {
    "Authorize": {"idTagInfo": {"status": "Accepted"}},
    # The caller replaces currentTime and interval (heartbeat seconds).
    "BootNotification": {
        "status": "Accepted",
        "currentTime": _PLACEHOLDER_TIME,
        "interval": 300,
    },
    "DataTransfer": {"status": "Accepted"},
    "DiagnosticsStatusNotification": {},
    "FirmwareStatusNotification": {},
    "Heartbeat": {"currentTime": _PLACEHOLDER_TIME},
    "MeterValues": {},
    # 1.6 §6.46: the CSMS allocates the integer transactionId; 0 is a placeholder the
    # caller replaces with the stored transaction's id.
    "StartTransaction": {"transactionId": 0, "idTagInfo": {"status": "Accepted"}},
    "StatusNotification": {},
    # idTagInfo is optional (a transaction may stop without an idTag).
    "StopTransaction": {},
    "LogStatusNotification": {},
    "SecurityEventNotification": {},
    # No CA behind this CSMS: it cannot get the CSR signed.
    "SignCertificate": {"status": "Rejected"},
    "SignedFirmwareStatusNotification": {},
}

_V201_RESPONSES: dict[str, dict[str, Any]] = {
    "Authorize": {"idTokenInfo": {"status": "Accepted"}},
    "BootNotification": {
        "currentTime": _PLACEHOLDER_TIME,
        "interval": 300,
        "status": "Accepted",
    },
    "ClearedChargingLimit": {},
    "DataTransfer": {"status": "Accepted"},
    "FirmwareStatusNotification": {},
    # No link to a V2G PKI / contract certificate pool: Failed. exiResponse is required
    # even then; empty is schema-valid.
    "Get15118EVCertificate": {"status": "Failed", "exiResponse": ""},
    # No OCSP responder access: Failed (ocspResult is optional).
    "GetCertificateStatus": {"status": "Failed"},
    "Heartbeat": {"currentTime": _PLACEHOLDER_TIME},
    "LogStatusNotification": {},
    "MeterValues": {},
    "NotifyChargingLimit": {},
    "NotifyCustomerInformation": {},
    "NotifyDisplayMessages": {},
    # K15 status table: Accepted means a schedule will follow and Processing that one is
    # being prepared; Rejected (service not available) is the truthful answer here.
    "NotifyEVChargingNeeds": {"status": "Rejected"},
    # K15-K17: the EV's own schedule; with no CSMS profile to violate, it is acceptable.
    "NotifyEVChargingSchedule": {"status": "Accepted"},
    "NotifyEvent": {},
    "NotifyMonitoringReport": {},
    "NotifyReport": {},
    "PublishFirmwareStatusNotification": {},
    "ReportChargingProfiles": {},
    "ReservationStatusUpdate": {},
    "SecurityEventNotification": {},
    "SignCertificate": {"status": "Rejected"},
    "StatusNotification": {},
    # TransactionEventResponse.idTokenInfo is required when the request carried an
    # idToken (Part 2 message definition); the caller may drop it when there was none.
    "TransactionEvent": {"idTokenInfo": {"status": "Accepted"}},
}

_V21_RESPONSES: dict[str, dict[str, Any]] = {
    **copy.deepcopy(_V201_RESPONSES),
    # 2.1 adds NoChargingProfile to the enum: the CSMS will not send a profile.
    "NotifyEVChargingNeeds": {"status": "NoChargingProfile"},
    "BatterySwap": {},
    "ClosePeriodicEventStream": {},
    # No OCSP responder access. certificateStatus needs minItems 1 and every item needs
    # certificateHashData/source/nextUpdate: the caller echoes one item per request
    # entry (its certificateHashData and source) and sets nextUpdate.
    "GetCertificateChainStatus": {
        "certificateStatus": [
            {
                "certificateHashData": {
                    "hashAlgorithm": "SHA256",
                    "issuerNameHash": "",
                    "issuerKeyHash": "",
                    "serialNumber": "",
                },
                "source": "OCSP",
                "status": "Failed",
                "nextUpdate": _PLACEHOLDER_TIME,
            }
        ]
    },
    "NotifyDERAlarm": {},
    "NotifyDERStartStop": {},
    "NotifyPriorityCharging": {},
    "NotifySettlement": {},
    # This CSMS does not consume streams, so it declines to open one.
    "OpenPeriodicEventStream": {"status": "Rejected"},
    # No dynamic schedules are managed here.
    "PullDynamicScheduleUpdate": {"status": "Rejected"},
    "ReportDERControl": {},
    # No VAT registry lookup: Rejected. vatNumber is required; the caller echoes the
    # request's vatNumber (and evseId, if any).
    "VatNumberValidation": {"vatNumber": "", "status": "Rejected"},
}

MINIMAL_RESPONSES: dict[str, dict[str, dict[str, Any]]] = {
    OCPP16: _V16_RESPONSES,
    OCPP201: _V201_RESPONSES,
    OCPP21: _V21_RESPONSES,
}
"""Schema-valid default CALLRESULT payload per charge-point-initiated action."""


#: README "A second backend": the charge point's messages that wait durably while an
#: upstream is away — the transaction messages a charge point queues itself when
#: offline (1.6: Start/StopTransaction and the MeterValues of a transaction; 2.x
#: TransactionEvent, Part 2 E04)
OFFLINE_QUEUED: dict[str, frozenset[str]] = {
    OCPP16: frozenset({"StartTransaction", "StopTransaction", "MeterValues"}),
    OCPP201: frozenset({"TransactionEvent"}),
    OCPP21: frozenset({"TransactionEvent"}),
}
#: the messages whose transactionId is the one the central system gave at the start
#: (1.6), so an upstream gets its own number in them
GIVEN_TRANSACTION_ID: dict[str, frozenset[str]] = {
    OCPP16: frozenset({"MeterValues", "StopTransaction"}),
    OCPP201: frozenset(),
    OCPP21: frozenset(),
}
#: where an answer carries the verdict on a token (README "A second backend": with
#: authorize = "upstream" the upstream's takes its place)
TOKEN_VERDICT: dict[str, dict[str, str]] = {
    OCPP16: {"Authorize": "idTagInfo", "StartTransaction": "idTagInfo"},
    OCPP201: {"Authorize": "idTokenInfo", "TransactionEvent": "idTokenInfo"},
    OCPP21: {"Authorize": "idTokenInfo", "TransactionEvent": "idTokenInfo"},
}
