"""The topic layout and every payload, pure (no broker, no database): what a value looks
like on the wire, which topic a command comes in on, and Home Assistant's discovery
configs (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery, and each
platform's page: sensor, binary_sensor, number, select, switch, button).

Topics (README "Home Assistant and MQTT"), `<cp>` the charge point's escaped id (the
prefix of its states: percent-encoded, so never a `/`, `+` or `#`):

    <base>/status                     online / offline (the appliance; last will offline)
    <base>/<cp>/available             online / offline (the charge point is connected)
    <base>/<cp>/<column>              a column of charge_point_status (power_w, state, …)
    <base>/<cp>/control/<name>        controls the status view does not show
    <base>/<cp>/set/<control>         commands in (→ <cp>.control.<control>)
    <base>/<cp>/outcome/<control>     their outcome, JSON {ok, value, response, error}
    <base>/<cp>/<id path>             publish_all: every state, dots → slashes
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from appliance import __version__
from appliance.domain.status import STATES

ONLINE, OFFLINE = "online", "offline"

#: charge_point_status columns that are not published: the identity is in the topic,
#: `reading_age_s` changes every second by itself (a consumer computes it from
#: `last_reading`)
NOT_PUBLISHED = frozenset({"identity", "prefix", "reading_age_s"})

#: readings that change with every sample: at most once a second per charge point
FAST = frozenset(
    {
        "power_w",
        "power_l1",
        "power_l2",
        "power_l3",
        "current_l1",
        "current_l2",
        "current_l3",
        "voltage_l1",
        "voltage_l2",
        "voltage_l3",
        "last_seen",
        "last_reading",
    }
)
FAST_INTERVAL_SEC = 1.0

#: the controls the appliance publishes under <cp>/control/ (the others are in the view)
CONTROL_STATES = ("availability", "chargeLimitType")

#: a control name as it may appear in a command topic: the path under `control.`
_CONTROL = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")

#: the sliders of Home Assistant's charge-limit number: 32 A is the largest current of a
#: Type 2 wallbox; 22 kW is three phases at 32 A (230 V). The appliance itself takes
#: 0..500 A / 0..1 000 000 W (README "Controls").
LIMIT_MAX = {"A": 32, "W": 22_080}


def text(value: Any) -> str:
    """A value as its payload: numbers as JSON writes them, text as it is, NULL as an
    empty payload (nothing known)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return json.dumps(value)


def value_of(payload: bytes) -> Any:
    """A command's value: JSON where the payload is JSON (`16`, `true`, `"A"`), else the
    text itself (`A`); an empty payload is NULL (it clears the charge limit)."""
    raw = payload.decode("utf-8", "replace").strip()
    if raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@dataclass(frozen=True, slots=True)
class Command:
    prefix: str
    control: str

    @property
    def state_id(self) -> str:
        return f"{self.prefix}.control.{self.control}"


def command_of(base: str, topic: str) -> Command | None:
    """The command a topic stands for, or None: only `<base>/<cp>/set/<control>` (the
    control's dotted path may also be written with slashes) is one; everything else is
    ignored."""
    if not topic.startswith(base + "/"):
        return None
    parts = topic[len(base) + 1 :].split("/")
    if len(parts) < 3 or parts[1] != "set" or not parts[0]:
        return None
    control = ".".join(parts[2:])
    if not _CONTROL.fullmatch(control):
        return None
    return Command(parts[0], control)


def outcome_topic(base: str, state_id: str) -> str:
    """Where the outcome of a write to `state_id` goes: under the control's name below
    `control.`, else (config., dm.) the path below the charge point."""
    prefix, _, rest = state_id.partition(".")
    name = rest.removeprefix("control.")
    return f"{base}/{prefix}/outcome/{name}"


def outcome_payload(value: Any, ok: Any, response: Any, error: Any) -> str:
    parsed = response
    if isinstance(response, str):
        try:
            parsed = json.loads(response)
        except ValueError:
            parsed = response
    return json.dumps(
        {"ok": bool(ok), "value": value, "response": parsed, "error": error or None},
        ensure_ascii=False,
    )


def state_topic(base: str, state_id: str) -> str:
    """publish_all: `CP1.meterValues.powerW` → `<base>/CP1/meterValues/powerW`."""
    return f"{base}/{state_id.replace('.', '/')}"


# ------------------------------------------------------------- Home Assistant discovery

#: (platform, object id, config without topics) of every entity of a charge point;
#: the state topic is `<base>/<cp>/<object id>` unless the config names another
_SENSORS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "sensor",
        "power_w",
        {"name": "Power", "device_class": "power", "unit_of_measurement": "W",
         "state_class": "measurement"},
    ),
    (
        "sensor",
        "energy_kwh",
        # the Energy dashboard takes a total_increasing energy sensor in kWh
        {"name": "Energy", "device_class": "energy", "unit_of_measurement": "kWh",
         "state_class": "total_increasing", "suggested_display_precision": 2},
    ),
    (
        "sensor",
        "tx_energy_kwh",
        {"name": "Session energy", "device_class": "energy", "unit_of_measurement": "kWh",
         "state_class": "total_increasing", "suggested_display_precision": 2},
    ),
    (
        "sensor",
        "soc",
        {"name": "State of charge", "device_class": "battery", "unit_of_measurement": "%",
         "state_class": "measurement"},
    ),
    *[
        (
            "sensor",
            f"{kind}_l{phase}",
            {"name": f"{label} L{phase}", "device_class": kind, "unit_of_measurement": unit,
             "state_class": "measurement", "enabled_by_default": phase == 1},
        )
        for kind, label, unit in (
            ("current", "Current", "A"),
            ("voltage", "Voltage", "V"),
            ("power", "Power", "W"),
        )
        for phase in (1, 2, 3)
    ],
    (
        "sensor",
        "state",
        {"name": "State", "device_class": "enum", "options": list(STATES)},
    ),
    (
        "sensor",
        "last_seen",
        {"name": "Last seen", "device_class": "timestamp", "entity_category": "diagnostic",
         # milliseconds since the epoch → ISO 8601, as the timestamp class wants it
         "value_template": "{{ (value | int(0) / 1000) | timestamp_custom("
         "'%Y-%m-%dT%H:%M:%S+00:00', false) if value else None }}"},
    ),
    (
        "sensor",
        "protocol",
        {"name": "Protocol", "entity_category": "diagnostic", "icon": "mdi:protocol"},
    ),
    (
        "binary_sensor",
        "connected",
        {"name": "Connected", "device_class": "connectivity", "payload_on": "1",
         "payload_off": "0", "entity_category": "diagnostic"},
    ),
    (
        # README "A second backend": on while every upstream of the charge point is
        # connected; each one's state (connected, since, waiting, reason) as attributes
        "binary_sensor",
        "upstreams",
        {"name": "Upstream connected", "device_class": "connectivity",
         "entity_category": "diagnostic", "json_attributes_topic": "upstreams",
         "value_template": "{{ None if not value else ('ON' if (value | from_json).values()"
         " | rejectattr('connected') | list | length == 0 else 'OFF') }}"},
    ),
    (
        "binary_sensor",
        "charging",
        {"name": "Charging", "device_class": "battery_charging", "state_topic": "state",
         "value_template": "{{ 'ON' if value == 'charging' else 'OFF' }}"},
    ),
    (
        "select",
        "number_phases",
        {"name": "Phases", "options": ["1", "2", "3"], "command_topic": "set/numberOfPhases",
         "icon": "mdi:sine-wave", "entity_category": "config"},
    ),
    (
        "switch",
        "availability",
        {"name": "Available", "state_topic": "control/availability",
         "command_topic": "set/availability", "payload_on": "1", "payload_off": "0",
         "state_on": "1", "state_off": "0", "icon": "mdi:ev-station"},
    ),
    *[
        (
            "button",
            object_id,
            {"name": name, "command_topic": f"set/{control}", "payload_press": "true",
             **extra},
        )
        for object_id, name, control, extra in (
            ("soft_reset", "Soft reset", "softReset.trigger",
             {"device_class": "restart", "entity_category": "config"}),
            ("hard_reset", "Hard reset", "hardReset.trigger",
             {"device_class": "restart", "entity_category": "config",
              "enabled_by_default": False}),
            ("start_session", "Start session", "requestStartTransaction.trigger",
             {"icon": "mdi:play"}),
            ("stop_session", "Stop session", "requestStopTransaction.trigger",
             {"icon": "mdi:stop"}),
        )
    ],
]  # fmt: skip

#: what Home Assistant shows for a NULL (an empty payload): `None` is its "unknown"
_EMPTY_IS_UNKNOWN = "{{ value if value != '' else None }}"


def node_id(prefix: str) -> str:
    """A discovery node id: only [a-zA-Z0-9_-] (a `%` of an escaped identity is not
    allowed), made unique by the prefix's hex where anything had to be replaced."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)
    if safe != prefix:
        safe += "_" + prefix.encode().hex()[:12]
    return f"ocpp_{safe}"


def device(identity: str, prefix: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The device of a charge point, from its BootNotification."""
    found = {
        "identifiers": [node_id(prefix)],
        "name": identity,
        "manufacturer": extra.get("info.vendor"),
        "model": extra.get("info.model"),
        "sw_version": extra.get("info.firmwareVersion"),
        "serial_number": extra.get("info.serialNumber") or extra.get("info.chargeBoxSerialNumber"),
    }
    return {k: str(v) for k, v in found.items() if v is not None and v != ""} | {
        "identifiers": [node_id(prefix)]
    }


def discovery(
    base: str, discovery_prefix: str, identity: str, prefix: str, extra: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """config topic → config of every entity of one charge point."""
    node = node_id(prefix)
    here = f"{base}/{prefix}"
    appliance_up = {"topic": f"{base}/status"}
    configs: dict[str, dict[str, Any]] = {}
    for platform, object_id, template in [*_SENSORS, _limit(extra)]:
        config = dict(template)
        config["state_topic"] = f"{here}/{config.get('state_topic', object_id)}"
        for topic in ("command_topic", "json_attributes_topic"):
            if topic in config:
                config[topic] = f"{here}/{config[topic]}"
        if platform == "sensor" and "value_template" not in config:
            config["value_template"] = _EMPTY_IS_UNKNOWN
        if platform == "button":
            del config["state_topic"]
        config["unique_id"] = f"{node}_{object_id}"
        config["device"] = device(identity, prefix, extra)
        config["origin"] = {"name": "ocpp-appliance", "sw_version": __version__}
        if object_id == "connected":
            # it says whether the charge point is connected: only the appliance's own
            # availability makes it unknown
            config["availability"] = [appliance_up]
        else:
            config["availability"] = [appliance_up, {"topic": f"{here}/available"}]
            config["availability_mode"] = "all"
        configs[f"{discovery_prefix}/{platform}/{node}/{object_id}/config"] = config
    return configs


def _limit(extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The charge limit as a number, in A or W per `control.chargeLimitType`."""
    unit = "W" if extra.get("control.chargeLimitType") == "W" else "A"
    return (
        "number",
        "charge_limit",
        {
            "name": "Charge limit",
            "command_topic": "set/chargeLimit",
            "device_class": "power" if unit == "W" else "current",
            "unit_of_measurement": unit,
            "min": 0,
            "max": LIMIT_MAX[unit],
            "step": 1 if unit == "W" else 0.1,
            "mode": "box" if unit == "W" else "slider",
            "value_template": _EMPTY_IS_UNKNOWN,
        },
    )
