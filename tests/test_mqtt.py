"""MQTT with Home Assistant discovery (README "Home Assistant and MQTT"), against a real
Mosquitto broker started on a free port, the real `ocpp-appliance serve`, charge points
of the `ocpp` package (1.6, 2.0.1, 2.1) and a separate MQTT client as Home Assistant.

The discovery payloads are checked against Home Assistant's documented MQTT discovery
options per platform (https://www.home-assistant.io/integrations/<platform>.mqtt/): the
keys, their types, the required ones and the device/state classes that fit together.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_controls import V16, V21, V201, Station, booted, stamp

import conftest

BASE = "ocpp-appliance"
USER, PASSWORD = "appliance", "broker-s3cret-Pw"
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or MOSQUITTO_PASSWD is None,
    reason="Mosquitto is not installed (apt-get install mosquitto; CI installs it)",
)


# ------------------------------------------------------------------------ the broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A real broker on a free port, with a password file and no persistence: after a
    restart it has forgotten every retained message."""

    def __init__(self, folder: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        #: with `tls` (certificate, key): a second listener, mqtts
        self.tls_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        passwords = folder / "passwords"
        passwords.touch(mode=0o600)
        for user, password in ((USER, PASSWORD), ("homeassistant", "ha")):
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence false\n"
            # as root (CI) it would switch to the user `mosquitto`, who cannot read the
            # test's folder; as anyone else this line does nothing
            "user root\n"
            "log_dest stderr\n"
        )
        if tls is not None:
            with self.config.open("a") as config:
                config.write(
                    f"listener {self.tls_port} 127.0.0.1\ncertfile {tls[0]}\nkeyfile {tls[1]}\n"
                )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        log = (self.folder / "mosquitto.log").open("a")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def mqtt_config(broker: Mosquitto, password: str = PASSWORD, extra: str = "") -> str:
    return (
        f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nusername = "{USER}"\n'
        f'password = "{password}"\nmin_interval_sec = 0.3\nstart_id_token = "HA-TOKEN"\n{extra}'
    )


# ------------------------------------------------------------- Home Assistant's side


class HomeAssistant:
    """A separate MQTT client: what it received, retained or not, by topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, str, bool]] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ha-test")
        client.username_pw_set("homeassistant", "ha")
        client.reconnect_delay_set(0.2, 0.5)  # type: ignore[arg-type]
        client.on_connect = lambda c, *_: c.subscribe([("homeassistant/#", 1), (f"{BASE}/#", 1)])
        client.on_message = self._on_message
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        self.client = client

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append(
                (time.monotonic(), message.topic, message.payload.decode(), message.retain)
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: str) -> float:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)
        return time.monotonic()

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def latest(self) -> dict[str, str]:
        with self.lock:
            return {topic: payload for _, topic, payload, _ in self.messages}

    def wait(
        self,
        topic: str,
        check: Callable[[str], bool] = lambda payload: True,
        timeout: float = 10,
        since: float = 0.0,
    ) -> tuple[float, str, bool]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for at, t, payload, retain in self.messages:
                    if t == topic and at >= since and check(payload):
                        return at, payload, retain
            time.sleep(0.02)
        with self.lock:
            seen = [(t, p) for _, t, p, _ in self.messages if t == topic]
        raise AssertionError(f"nothing on {topic} matched within {timeout} s; got {seen}")

    def outcome(self, cp: str, control: str, since: float) -> dict[str, Any]:
        _, payload, retain = self.wait(f"{BASE}/{cp}/outcome/{control}", since=since)
        assert not retain
        return json.loads(payload)


def retained(broker: Mosquitto, topic_filter: str, wait: float = 0.5) -> dict[str, str]:
    """What a client that subscribes now gets as retained messages: topic → payload."""
    found: dict[str, str] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="late-subscriber")
    client.username_pw_set("homeassistant", "ha")
    client.on_connect = lambda c, *_: c.subscribe(topic_filter, 1)

    def collect(c: Any, u: Any, message: Any) -> None:
        if message.retain:
            found[message.topic] = message.payload.decode()

    client.on_message = collect
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    time.sleep(wait)
    client.disconnect()
    client.loop_stop()
    return found


@pytest.fixture
def home_assistant(broker: Mosquitto) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(broker)
    yield ha
    ha.close()


# ------------------------------------------- Home Assistant's MQTT discovery schema

#: options every MQTT entity takes (https://www.home-assistant.io/integrations/mqtt/)
COMMON: dict[str, Any] = {
    "name": (str, type(None)),
    "unique_id": str,
    "object_id": str,
    "device": dict,
    "origin": dict,
    "availability": list,
    "availability_topic": str,
    "availability_mode": str,
    "entity_category": str,
    "enabled_by_default": bool,
    "icon": str,
    "qos": int,
    "json_attributes_topic": str,
    "encoding": str,
}
NUMBER = (int, float)
#: per platform: its own options (and their types), and which are required
PLATFORMS: dict[str, tuple[dict[str, Any], set[str]]] = {
    "sensor": (
        {
            "state_topic": str,
            "device_class": str,
            "unit_of_measurement": str,
            "state_class": str,
            "options": list,
            "suggested_display_precision": int,
            "value_template": str,
            "expire_after": int,
            "force_update": bool,
        },
        {"state_topic"},
    ),
    "binary_sensor": (
        {
            "state_topic": str,
            "device_class": str,
            "payload_on": str,
            "payload_off": str,
            "value_template": str,
            "expire_after": int,
            "force_update": bool,
        },
        {"state_topic"},
    ),
    "number": (
        {
            "command_topic": str,
            "state_topic": str,
            "device_class": str,
            "unit_of_measurement": str,
            "min": NUMBER,
            "max": NUMBER,
            "step": NUMBER,
            "mode": str,
            "value_template": str,
            "command_template": str,
            "retain": bool,
            "optimistic": bool,
        },
        {"command_topic"},
    ),
    "select": (
        {
            "command_topic": str,
            "state_topic": str,
            "options": list,
            "value_template": str,
            "command_template": str,
            "retain": bool,
            "optimistic": bool,
        },
        {"command_topic", "options"},
    ),
    "switch": (
        {
            "command_topic": str,
            "state_topic": str,
            "device_class": str,
            "payload_on": str,
            "payload_off": str,
            "state_on": str,
            "state_off": str,
            "value_template": str,
            "retain": bool,
            "optimistic": bool,
        },
        {"command_topic"},
    ),
    "button": (
        {
            "command_topic": str,
            "payload_press": str,
            "device_class": str,
            "command_template": str,
            "retain": bool,
        },
        {"command_topic"},
    ),
}
DEVICE = {
    "identifiers": (list, str),
    "name": str,
    "manufacturer": str,
    "model": str,
    "sw_version": str,
    "hw_version": str,
    "serial_number": str,
    "connections": list,
    "configuration_url": str,
    "suggested_area": str,
    "via_device": str,
}
#: device classes per platform (the subset a charger can use, from each platform's page)
DEVICE_CLASSES = {
    "sensor": {
        "power": {"W", "kW"},
        "energy": {"Wh", "kWh", "MWh"},
        "battery": {"%"},
        "current": {"A", "mA"},
        "voltage": {"V", "mV"},
        "enum": {None},
        "timestamp": {None},
    },
    "number": {"current": {"A", "mA"}, "power": {"W", "kW"}},
    "binary_sensor": {"connectivity": {None}, "battery_charging": {None}, "plug": {None}},
    "switch": {"outlet": {None}, "switch": {None}},
    "button": {"restart": {None}, "identify": {None}, "update": {None}},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}


def schema_problems(platform: str, config: dict[str, Any]) -> list[str]:
    own, required = PLATFORMS[platform]
    allowed = COMMON | own
    problems = [f"missing {key}" for key in required if key not in config]
    for key, value in config.items():
        if key not in allowed:
            problems.append(f"{key}: not an option of {platform}")
        elif not isinstance(value, allowed[key]) or isinstance(value, bool) != (
            allowed[key] is bool
        ):
            problems.append(f"{key}: {value!r} is not {allowed[key]}")
    for key, value in config.get("device", {}).items():
        if key not in DEVICE or not isinstance(value, DEVICE[key]):
            problems.append(f"device.{key}: {value!r}")
    if not config.get("device", {}).get("identifiers"):
        problems.append("device without identifiers")
    for entry in config.get("availability", []):
        if set(entry) - {"topic", "payload_available", "payload_not_available", "value_template"}:
            problems.append(f"availability entry {entry}")
    if config.get("availability_mode", "all") not in ("all", "any", "latest"):
        problems.append("availability_mode")
    if config.get("entity_category", "config") not in ("config", "diagnostic"):
        problems.append("entity_category")
    if "device_class" in config:
        units = DEVICE_CLASSES.get(platform, {}).get(config["device_class"])
        if units is None:
            problems.append(f"device_class {config['device_class']} not of {platform}")
        elif config.get("unit_of_measurement") not in units:
            problems.append(
                f"unit {config.get('unit_of_measurement')} for {config['device_class']}"
            )
    if "state_class" in config:
        if config["state_class"] not in STATE_CLASSES:
            problems.append(f"state_class {config['state_class']}")
        if config.get("device_class") == "energy" and config["state_class"] == "measurement":
            problems.append("energy cannot be a measurement")
    if config.get("device_class") == "enum" and ("state_class" in config or not config["options"]):
        problems.append("enum: options, no state_class")
    if platform == "number" and not config.get("min", 0) < config.get("max", 100):
        problems.append("min >= max")
    if platform == "select" and not all(isinstance(o, str) for o in config["options"]):
        problems.append("select options must be strings")
    if config.get("mode", "auto") not in ("auto", "box", "slider"):
        problems.append("mode")
    return problems


# ------------------------------------------------------------------------- helpers


def discovery_of(ha: HomeAssistant, cp: str) -> dict[str, tuple[str, dict[str, Any], bool]]:
    """config topic → (platform, config, retained) of a charge point's entities."""
    node = f"ocpp_{cp}"
    found = {}
    with ha.lock:
        for _, topic, payload, retain in ha.messages:
            parts = topic.split("/")
            if parts[0] == "homeassistant" and parts[2:3] == [node] and parts[-1] == "config":
                found[topic] = (parts[1], json.loads(payload) if payload else {}, retain)
    return found


def meter_values(station: Station, watts: float, wh: float) -> None:
    if station.version == V16:
        request = station.call.MeterValues(
            connector_id=1,
            meter_value=[
                {
                    "timestamp": stamp(),
                    "sampled_value": [
                        {"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"},
                        {"value": str(wh), "measurand": "Energy.Active.Import.Register"},
                    ],
                }
            ],
        )
    else:
        request = station.call.MeterValues(
            evse_id=1,
            meter_value=[
                {
                    "timestamp": stamp(),
                    "sampled_value": [
                        {
                            "value": watts,
                            "measurand": "Power.Active.Import",
                            "unit_of_measure": {"unit": "W"},
                        },
                        {"value": wh, "measurand": "Energy.Active.Import.Register"},
                    ],
                }
            ],
        )
    station.send(request)


def connects(appliance: conftest.Appliance, cp: str) -> int:
    rows = appliance.query(
        "SELECT count(*) FROM connection_log WHERE identity = ? AND event = 'connect'", cp
    )
    return rows[0][0]


# --------------------------------------------------------------------------- tests


def test_discovery_readings_and_commands_for_every_version(start_appliance, broker, home_assistant):
    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker))
    ha.wait(f"{BASE}/status", lambda p: p == "online")
    stations = {v: Station(appliance, f"HA-{v[4:].replace('.', '')}", v) for v in (V16, V201, V21)}
    try:
        for station in stations.values():
            booted(station.open())
        for version, station in stations.items():
            cp = station.identity
            ha.wait(f"{BASE}/{cp}/available", lambda p: p == "online")
            ha.wait(f"{BASE}/{cp}/connected", lambda p: p == "1")
            # discovery: retained, one device per charge point, the documented schema
            deadline = time.monotonic() + 10
            while len(configs := discovery_of(ha, cp)) < 24 and time.monotonic() < deadline:
                time.sleep(0.05)
            platforms = {platform for platform, _, _ in configs.values()}
            assert platforms == {"sensor", "binary_sensor", "number", "select", "switch", "button"}
            kept = retained(broker, f"homeassistant/+/ocpp_{cp}/+/config")
            assert set(kept) == set(configs)
            for topic, (platform, config, _) in configs.items():
                assert json.loads(kept[topic]) == config
                assert schema_problems(platform, config) == [], (topic, config)
                assert config["device"]["manufacturer"] == "TestVendor"
                assert config["device"]["model"] == "Model-T"
                assert config["device"]["name"] == cp
            energy = next(
                c for _, c, _ in configs.values() if c["unique_id"].endswith("_energy_kwh")
            )
            assert (
                energy["device_class"],
                energy["unit_of_measurement"],
                energy["state_class"],
            ) == (
                "energy",
                "kWh",
                "total_increasing",
            )
            assert energy["state_topic"] == f"{BASE}/{cp}/energy_kwh"
            unique = [c["unique_id"] for _, c, _ in configs.values()]
            assert len(set(unique)) == len(unique)

            # a MeterValues frame becomes the published power within 2 s
            sent = time.monotonic()
            meter_values(station, 7400, 12345)
            at, _, _ = ha.wait(f"{BASE}/{cp}/power_w", lambda p: p == "7400", timeout=5, since=sent)
            assert at - sent < 2.0, f"{version}: power published after {at - sent:.2f} s"
            assert retained(broker, f"{BASE}/{cp}/power_w", 0.2) == {f"{BASE}/{cp}/power_w": "7400"}
            ha.wait(f"{BASE}/{cp}/energy_kwh", lambda p: float(p) == 12.345, since=sent)

            # a command on the command topic → the right CALL, and its outcome published
            sent = ha.publish(f"{BASE}/{cp}/set/chargeLimit", "16")
            action, payload = station.take_one()
            assert action == "SetChargingProfile"
            if version == V16:
                profile = payload["csChargingProfiles"]
                assert profile["chargingProfilePurpose"] == "TxDefaultProfile"
            else:
                profile = payload["chargingProfile"]
                assert profile["chargingProfilePurpose"] == "ChargingStationMaxProfile"
            [schedule] = (
                [profile["chargingSchedule"]] if version == V16 else profile["chargingSchedule"]
            )
            assert schedule["chargingSchedulePeriod"][0]["limit"] == 16
            outcome = ha.outcome(cp, "chargeLimit", sent)
            assert outcome == {
                "ok": True,
                "value": 16,
                "response": {"status": "Accepted"},
                "error": None,
            }
            ha.wait(f"{BASE}/{cp}/charge_limit", lambda p: p == "16", since=sent)

            sent = ha.publish(f"{BASE}/{cp}/set/softReset.trigger", "true")
            action, payload = station.take_one()
            assert action == "Reset"
            assert payload == ({"type": "Soft"} if version == V16 else {"type": "OnIdle"})
            assert ha.outcome(cp, "softReset.trigger", sent)["ok"] is True

            # Home Assistant's start button: the configured idToken goes with it
            sent = ha.publish(f"{BASE}/{cp}/set/requestStartTransaction.trigger", "true")
            action, payload = station.take_one()
            if version == V16:
                assert (action, payload["idTag"]) == ("RemoteStartTransaction", "HA-TOKEN")
            else:
                assert action == "RequestStartTransaction"
                assert payload["idToken"]["idToken"] == "HA-TOKEN"

        # a forgotten charge point leaves Home Assistant: its configs emptied, retained
        gone = stations[V21].identity
        stations[V21].close()
        with contextlib.closing(sqlite3.connect(appliance.db, timeout=10)) as db, db:
            db.execute("DELETE FROM charge_points WHERE identity = ?", (gone,))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            configs = discovery_of(ha, gone)
            if all(config == {} for _, config, _ in configs.values()):
                break
            time.sleep(0.05)
        assert all(config == {} for _, config, _ in discovery_of(ha, gone).values())
    finally:
        for station in stations.values():
            station.close()


def test_bad_commands_get_an_error_outcome_and_change_nothing(
    start_appliance, broker, home_assistant
):
    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker))
    cp = "HA-BAD"
    with Station(appliance, cp, V201) as station:
        booted(station)
        ha.wait(f"{BASE}/{cp}/available", lambda p: p == "online")

        sent = ha.publish(f"{BASE}/NOBODY/set/chargeLimit", "16")
        outcome = ha.outcome("NOBODY", "chargeLimit", sent)
        assert outcome["ok"] is False and "unknown charge point" in outcome["error"]

        sent = ha.publish(f"{BASE}/{cp}/set/noSuchControl", "1")
        outcome = ha.outcome(cp, "noSuchControl", sent)
        assert outcome["ok"] is False and "no such control" in outcome["error"]

        sent = ha.publish(f"{BASE}/{cp}/set/chargeLimit", "-5")
        outcome = ha.outcome(cp, "chargeLimit", sent)
        assert outcome["ok"] is False and "chargeLimit must be" in outcome["error"]

        sent = ha.publish(f"{BASE}/{cp}/set/numberOfPhases", "7")
        outcome = ha.outcome(cp, "numberOfPhases", sent)
        assert outcome["ok"] is False and "numberOfPhases" in outcome["error"]

        # topics the appliance does not define are ignored
        ha.publish(f"{BASE}/{cp}/power_w", "99999")
        ha.publish(f"{BASE}/{cp}/set/", "1")
        ha.publish(f"{BASE}/{cp}/do/chargeLimit", "1")
        station.assert_quiet(1.0)
        assert appliance.query(
            "SELECT val FROM states WHERE id IN (?, ?) ORDER BY id",
            f"{cp}.control.chargeLimit",
            f"{cp}.control.numberOfPhases",
        ) == [(None,), (3,)]
        assert "Traceback" not in appliance.log()


def test_broker_restart_mid_session_reconnects_and_republishes(
    start_appliance, broker, home_assistant
):
    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker))
    cp = "HA-RESTART"
    with Station(appliance, cp, V16) as station:
        booted(station)
        config_topic = f"homeassistant/sensor/ocpp_{cp}/power_w/config"
        ha.wait(config_topic)
        broker.stop()
        # the charge point goes on as if nothing happened
        for watts in (1000, 2000):
            meter_values(station, watts, 5000)
            station.heartbeat()
            time.sleep(0.5)
        ha.clear()
        broker.start()  # no persistence: every retained message is gone
        ha.wait(f"{BASE}/status", lambda p: p == "online", timeout=15)
        ha.wait(config_topic, timeout=10)
        assert config_topic in retained(broker, config_topic, 0.2)
        ha.wait(f"{BASE}/{cp}/power_w", lambda p: p == "2000")
        ha.wait(f"{BASE}/{cp}/available", lambda p: p == "online")
        # while it was down, commands still work the database way; over MQTT again now
        sent = ha.publish(f"{BASE}/{cp}/set/availability", "0")
        assert station.take_one()[0] == "ChangeAvailability"
        assert ha.outcome(cp, "availability", sent)["ok"] is True
    assert connects(appliance, cp) == 1  # no charge point noticed
    log = appliance.log()
    assert log.count("MQTT: mqtt://127.0.0.1") == 1, log  # one line for the outage
    assert PASSWORD not in log


def test_publish_all_publishes_every_state_again_after_a_broker_restart(
    start_appliance, broker, home_assistant
):
    """publish_all: every state of the tree, also those that did not change since the
    broker lost its retained messages (README "Home Assistant and MQTT")."""
    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker, extra="publish_all = true\n"))
    cp = "HA-ALL"
    with Station(appliance, cp, V201) as station:
        booted(station)
        vendor = f"{BASE}/{cp}/info/vendor"
        ha.wait(vendor, lambda p: p == "TestVendor")
        time.sleep(0.01)
        meter_values(station, 4200, 1000)  # newer changes than the vendor's
        ha.wait(f"{BASE}/{cp}/meterValues/powerW", lambda p: p == "4200")
        broker.stop()
        ha.clear()
        broker.start()  # no persistence: every retained message is gone
        ha.wait(f"{BASE}/status", lambda p: p == "online", timeout=15)
        ha.wait(vendor, lambda p: p == "TestVendor", timeout=10)  # unchanged, published again
        assert retained(broker, vendor, 0.3) == {vendor: "TestVendor"}


def test_wrong_broker_password_one_log_line_and_ocpp_unaffected(start_appliance, broker):
    wrong = "not-the-Pw-4711"
    appliance = start_appliance(mqtt_config(broker, password=wrong))
    cp = "HA-NOAUTH"
    with Station(appliance, cp, V201) as station:
        booted(station)
        time.sleep(3.5)  # several retries (1 s, 2 s, …)
        station.heartbeat()
        meter_values(station, 3000, 100)
    refused = [
        line for line in appliance.log().splitlines() if "MQTT:" in line and "refused" in line
    ]
    assert len(refused) == 1, appliance.log()
    assert "Not authorized" in refused[0] or "Bad user name or password" in refused[0]
    appliance.stop()
    for path in appliance.folder.iterdir():
        if path.is_file() and path.name != "appliance.toml":
            assert wrong.encode() not in path.read_bytes(), path


def test_check_config_masks_the_broker_password(tmp_path, broker):
    config = tmp_path / "appliance.toml"
    config.write_text(conftest.test_config(mqtt_config(broker)))
    done = conftest.run_cli("check-config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert 'password = "***"' in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(conftest.test_config(f'\n[mqtt]\nurl = "mqtt://u:{PASSWORD}@h"\n'))
    done = conftest.run_cli("check-config", "--config", str(bad))
    assert done.returncode == 2
    assert "not in the url" in done.stderr


def test_broker_absent_at_start_then_everything_published_with_publish_all(start_appliance, broker):
    broker.stop()
    appliance = start_appliance(mqtt_config(broker, extra="publish_all = true\n"))
    cp = "HA-LATE"
    with Station(appliance, cp, V201) as station:
        booted(station)  # served while the broker is absent
        meter_values(station, 4200, 1000)
        # the log says why, once
        conftest.wait_for(lambda: "MQTT: " in appliance.log(), 10, "the MQTT log line")
        assert "cannot connect: Connection refused; retrying" in appliance.log()
        broker.start()
        ha = HomeAssistant(broker)
        try:
            ha.wait(f"{BASE}/status", lambda p: p == "online", timeout=15)
            ha.wait(f"homeassistant/sensor/ocpp_{cp}/energy_kwh/config")
            ha.wait(f"{BASE}/{cp}/power_w", lambda p: p == "4200")
            # publish_all: the object tree, the id's dots as slashes
            ha.wait(f"{BASE}/{cp}/info/vendor", lambda p: p == "TestVendor")
            ha.wait(f"{BASE}/{cp}/meterValues/powerW", lambda p: p == "4200")
            sent = time.monotonic()
            meter_values(station, 5100, 1100)
            ha.wait(f"{BASE}/{cp}/meterValues/powerW", lambda p: p == "5100", since=sent)
        finally:
            ha.close()
    assert connects(appliance, cp) == 1


def test_tls_to_the_broker(start_appliance, tmp_path):
    from test_security import make_pki

    pki = make_pki(tmp_path / "pki", [])
    broker = Mosquitto(
        tmp_path / "tls-broker", tls=(pki.folder / "server.crt", pki.folder / "server.key")
    )
    broker.start()
    try:
        settings = (
            f'\n[mqtt]\nurl = "mqtts://127.0.0.1:{broker.tls_port}"\nusername = "{USER}"\n'
            f'password = "{PASSWORD}"\nca = "{pki.server_ca}"\nmin_interval_sec = 0.3\n'
        )
        appliance = start_appliance(settings)
        ha = HomeAssistant(broker)
        try:
            with Station(appliance, "HA-TLS", V16) as station:
                booted(station)
                meter_values(station, 1234, 10)
                ha.wait(f"{BASE}/HA-TLS/power_w", lambda p: p == "1234")
        finally:
            ha.close()
        assert "MQTT: connected to mqtts://127.0.0.1" in appliance.log()
    finally:
        broker.stop()


def test_a_clean_stop_says_offline(start_appliance, broker, home_assistant):
    """SIGTERM: the appliance's availability goes `offline`, retained, before it exits
    (the last will says the same should it die instead)."""
    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker))
    ha.wait(f"{BASE}/status", lambda p: p == "online")
    assert appliance.stop() == 0
    ha.wait(f"{BASE}/status", lambda p: p == "offline", timeout=5)
    assert retained(broker, f"{BASE}/status", 0.3) == {f"{BASE}/status": "offline"}


def test_a_killed_appliance_is_offline_by_its_last_will(start_appliance, broker, home_assistant):
    """kill -9 (power cut, OOM killer): no goodbye, but the broker publishes the last will
    `offline`, retained, as soon as the connection drops (README "Home Assistant and
    MQTT")."""
    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker))
    ha.wait(f"{BASE}/status", lambda p: p == "online")
    appliance.proc.kill()
    appliance.proc.wait()
    ha.wait(f"{BASE}/status", lambda p: p == "offline", timeout=10)
    assert retained(broker, f"{BASE}/status", 0.3) == {f"{BASE}/status": "offline"}


def test_sighup_applies_a_new_base_topic(start_appliance, broker, home_assistant):
    """`[mqtt]` changed in the config file and SIGHUP: a new connection publishes under
    the new base topic; the charge point notices nothing."""
    import signal

    ha = home_assistant
    appliance = start_appliance(mqtt_config(broker, extra='base_topic = "first-box"\n'))
    ha.client.subscribe([("first-box/#", 1), ("second-box/#", 1)])
    cp = "HA-RELOAD"
    with Station(appliance, cp, V16) as station:
        booted(station)
        ha.wait("first-box/status", lambda p: p == "online")
        config = appliance.folder / "appliance.toml"
        config.write_text(config.read_text().replace('"first-box"', '"second-box"'))
        appliance.proc.send_signal(signal.SIGHUP)
        ha.wait("second-box/status", lambda p: p == "online", timeout=15)
        meter_values(station, 4200, 9000)
        ha.wait(f"second-box/{cp}/power_w", lambda p: p == "4200")
    assert connects(appliance, cp) == 1
    assert "SIGHUP: config reloaded" in appliance.log()
