"""Version-neutral updates: what the per-version mappings make of a message, and what the
tree applies. No OCPP version appears here."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from appliance.domain.meter import Reading


@dataclass(frozen=True, slots=True)
class StationBooted:
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    charge_box_serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None
    boot_reason: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    pass


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """evse_id None: the whole station (1.6 connector 0)."""

    evse_id: int | None
    connector_id: int | None
    status: str
    error_code: str | None = None
    vendor_error_code: str | None = None
    info: str | None = None
    timestamp: str | None = None


@dataclass(frozen=True, slots=True)
class MeterSample:
    """The sampled values of one message, for one EVSE/connector (None: not said)."""

    evse_id: int | None
    connector_id: int | None
    transaction_id: str | None
    readings: list[Reading]


@dataclass(frozen=True, slots=True)
class TransactionEvent:
    """A session's start, update or end, from 1.6 Start/StopTransaction or 2.x
    TransactionEvent. Fields a message does not carry are None."""

    transaction_id: str
    event: str  # Started | Updated | Ended
    timestamp: str | None
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    seq_no: int | None = None
    offline: bool = False
    stop_reason: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    #: the latest energy register seen in this event (live session energy)
    meter_now_wh: float | None = None
    #: 2.x `chargingState` (Charging, SuspendedEV, SuspendedEVSE, EVConnected, Idle)
    charging_state: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceModelValue:
    """One attribute of a variable of a component, from a 2.x NotifyReport."""

    component: str
    component_instance: str | None
    evse_id: int | None
    connector_id: int | None
    variable: str
    variable_instance: str | None
    attribute_type: str
    value: Any
    writable: bool
    unit: str | None
    data_type: str | None
    #: variableCharacteristics: the values a list or option takes (CSV), the largest
    #: value (of a list: its longest CSV text)
    values_list: str | None = None
    max_limit: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceModelReport:
    values: list[DeviceModelValue]
    #: the GetBaseReport it answers, and whether more parts follow (`tbc`)
    request_id: int | None = None
    more: bool = False


@dataclass(frozen=True, slots=True)
class ConfigurationReport:
    """1.6 GetConfiguration's `configurationKey` entries (key, value, readonly)."""

    keys: list[Any]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of a charge point as it reported it: a 1.6 configuration key, or a
    2.x Device Model variable's Actual value (README "Readings the appliance asks for")."""

    #: the version's name: `MeterValuesSampledData`, `SampledDataCtrlr.TxUpdatedInterval`
    name: str
    #: where it is in the object tree, below the identity (`config.<key>`, `dm.…`)
    state: str
    value: str | None
    writable: bool
    #: 2.x: the values a list may hold; the longest CSV text it takes
    values_list: tuple[str, ...] | None = None
    max_limit: float | None = None
    #: the update that records a value written to it (in the tree, as if reported)
    written: Callable[[str], Update] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class VendorData:
    """DataTransfer data or customData: where a VIN may hide (README "`states` and
    `objects`", info.vin)."""

    data: Any


Update = (
    StationBooted
    | HeartbeatReceived
    | ConnectorStatus
    | MeterSample
    | TransactionEvent
    | DeviceModelReport
    | ConfigurationReport
    | VendorData
)


def start_key(
    identity: str, connector: object, id_tag: object, meter_start: object, started_at: object
) -> Hashable:
    """What makes a 1.6 StartTransaction the same start: compared exactly (an integer
    register is never compared through a float, README "On the wire")."""
    if isinstance(meter_start, float) and meter_start.is_integer():
        meter_start = int(meter_start)  # the REAL column gives back 1000.0 for 1000
    return (identity, connector, id_tag, type(meter_start).__name__, meter_start, started_at)
