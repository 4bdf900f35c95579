"""Readings the appliance asks for (issue 26, README "Readings the appliance asks for"):
after each boot the appliance reads what a charge point measures and writes only what
differs from `[readings]` — safely. The charge points are the `ocpp` package's (1.6,
2.0.1, 2.1) keeping a real configuration / Device Model across connections and applying
what is written; they sample what their settings say, so the next transaction's meter
values show whether the settings took. The appliance is the real `serve` process."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_controls import V16, V21, V201, Station, stamp
from test_reconnect import outcome_row, transaction_event

import conftest

#: the Device Model fetched after boot, [readings] as it comes (conftest turns it off
#: where a test does not name it)
FETCH = "[device_model]\nfetch_on_boot = true\n[readings]\n"
V2X = [V201, V21]
DEFAULT = [
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "SoC",
    "Current.Offered",
    "Power.Offered",
]
#: how a charge point out of the box measures: the energy register every 60 s
FACTORY_16 = {
    "MeterValuesSampledData": ("Energy.Active.Import.Register", False),
    "MeterValueSampleInterval": ("60", False),
    "ClockAlignedDataInterval": ("0", False),
    "MeterValuesAlignedData": ("", False),
    "MeterValuesSampledDataMaxLength": ("12", True),
    "HeartbeatInterval": ("300", False),
}
#: MicroOcpp's 2.0.1 Device Model: no sampling during a transaction until TxUpdatedInterval
FACTORY_2X: dict[tuple[str, str], tuple[str, bool, str | None]] = {
    ("SampledDataCtrlr", "TxUpdatedMeasurands"): ("Energy.Active.Import.Register", False, None),
    ("SampledDataCtrlr", "TxUpdatedInterval"): ("0", False, None),
    ("SampledDataCtrlr", "TxEndedMeasurands"): ("", False, None),
    ("AlignedDataCtrlr", "Measurands"): ("", False, None),
    ("AlignedDataCtrlr", "Interval"): ("0", False, None),
    ("OCPPCommCtrlr", "HeartbeatInterval"): ("300", False, None),
}


# ------------------------------------------------------------------ the charger


@dataclass
class Charger:
    """One charge point across connections: its settings (value, read-only[, values
    list]) stay, what is written is applied and counted. `refuses`: measurands it does
    not take (a list holding one is Rejected); `reboots`: after each accepted write it
    reboots (closes and connects again); `forgets`: after a reboot its settings are the
    factory ones again (a write it does not keep)."""

    appliance: Any
    identity: str
    version: str
    settings: dict[Any, Any]
    refuses: set[str] = field(default_factory=set)
    reboots: bool = False
    forgets: bool = False
    boots: int = 0
    #: (setting, value, answer) of every write, in order
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    station: Station | None = None
    rebooting: threading.Event = field(default_factory=threading.Event)
    rebooted: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.factory = dict(self.settings)

    # ---------------------------------------------------------------- the wire

    def connect(self) -> Station:
        """Connect, boot, and be ready for what the appliance asks."""
        station = self.station = Station(self.appliance, self.identity, self.version)
        if self.version == V16:
            station.answers["GetConfiguration"] = self._configuration
            station.answers["ChangeConfiguration"] = self._change
        else:
            station.answers["GetBaseReport"] = self._base_report
            station.answers["SetVariables"] = self._set_variables
        station.open()
        wire = station.cp._connection
        send = wire.send

        async def send_then_reboot(text: str) -> None:
            await send(text)
            if self.rebooting.is_set():  # the answer to the write is out: gone
                await wire.ws.close()
                self.rebooted.set()

        wire.send = send_then_reboot
        station.boot()
        self.boots += 1
        return station

    def run(self, quiet: float = 1.5, limit: int = 12) -> None:
        """Boot, let the appliance work until no write came for `quiet` s; reboot when a
        write asks for it, up to `limit` boots."""
        for _ in range(limit):
            station = self.connect()
            seen, since = -1, time.monotonic()
            while not self.rebooted.is_set() and time.monotonic() - since < quiet:
                time.sleep(0.05)
                if len(self.writes) != seen:
                    seen, since = len(self.writes), time.monotonic()
            station.close()
            if not self.rebooted.is_set():
                return
            self.rebooting.clear()
            self.rebooted.clear()
            if self.forgets:
                self.settings = dict(self.factory)
        raise AssertionError(f"{self.identity}: still rebooting after {limit} boots")

    def _accepted(self) -> None:
        """A charger that reboots goes away right after its answer is out."""
        if not self.reboots:
            return
        self.rebooting.set()

    # ---------------------------------------------------------------------- 1.6

    def _configuration(self, request: dict) -> dict:
        keys = [
            {"key": key, "readonly": readonly, "value": value}
            for key, (value, readonly) in self.settings.items()
        ]
        return {"configuration_key": keys}

    def _change(self, request: dict) -> dict:
        key, value = request["key"], request["value"]
        status = self._apply(key, value)
        self.writes.append((key, value, status))
        return {"status": status}

    def _apply(self, key: Any, value: str) -> str:
        if key not in self.settings:
            return "NotSupported" if self.version == V16 else "UnknownVariable"
        current = self.settings[key]
        if current[1]:
            return "Rejected"
        listed = current[2] if len(current) > 2 else None
        items = [m for m in value.split(",") if m]
        if any(m in self.refuses or (listed and m not in listed) for m in items):
            return "Rejected"
        self.settings[key] = (value, *current[1:])
        self._accepted()
        return "Accepted"

    # ---------------------------------------------------------------------- 2.x

    def _base_report(self, request: dict) -> dict:
        request_id = request["request_id"]
        station = self.station
        assert station is not None
        data = []
        for (component, variable), (value, readonly, listed) in self.settings.items():
            characteristics: dict[str, Any] = {"data_type": "string", "supports_monitoring": False}
            if variable.endswith("Measurands"):
                characteristics["data_type"] = "MemberList"
            elif variable.endswith("Interval"):
                characteristics["data_type"] = "integer"
            if listed is not None:
                characteristics["values_list"] = listed
            data.append(
                {
                    "component": {"name": component},
                    "variable": {"name": variable},
                    "variable_attribute": [
                        {
                            "type": "Actual",
                            "value": value,
                            "mutability": "ReadOnly" if readonly else "ReadWrite",
                        }
                    ],
                    "variable_characteristics": characteristics,
                }
            )

        async def report() -> None:
            await asyncio.sleep(0.1)
            parts = [data[:3], data[3:]]  # in two parts (tbc), as Part 2 B07 allows
            for number, part in enumerate(parts):
                await station.cp.call(
                    station.call.NotifyReport(
                        request_id=request_id,
                        generated_at=stamp(),
                        seq_no=number,
                        report_data=part,
                        tbc=number < len(parts) - 1,
                    )
                )

        assert station.loop is not None
        station.loop.create_task(report())
        return {"status": "Accepted"}

    def _set_variables(self, request: dict) -> dict:
        results = []
        for entry in request["set_variable_data"]:
            key = (entry["component"]["name"], entry["variable"]["name"])
            status = self._apply(key, entry["attribute_value"])
            self.writes.append((".".join(key), entry["attribute_value"], status))
            results.append(
                {
                    "attribute_status": status,
                    "component": entry["component"],
                    "variable": entry["variable"],
                }
            )
        return {"set_variable_result": results}

    # ------------------------------------------------------------- measuring

    def sampled(self) -> list[str]:
        key = "MeterValuesSampledData" if self.version == V16 else SAMPLED_2X
        return [m for m in self.settings[key][0].split(",") if m]

    def interval(self) -> int:
        key = "MeterValueSampleInterval" if self.version == V16 else INTERVAL_2X
        return int(self.settings[key][0])


SAMPLED_2X = ("SampledDataCtrlr", "TxUpdatedMeasurands")
INTERVAL_2X = ("SampledDataCtrlr", "TxUpdatedInterval")


def samples(measurands: list[str]) -> list[dict[str, Any]]:
    """What a three-phase meter sampling `measurands` sends (1.6 field names; 7.2 kW)."""
    per_phase = {
        "Power.Active.Import": ("2400", "W", ["L1", "L2", "L3"]),
        "Current.Import": ("10.4", "A", ["L1", "L2", "L3"]),
        "Voltage": ("231", "V", ["L1-N", "L2-N", "L3-N"]),
    }
    single = {
        "Energy.Active.Import.Register": ("1500", "Wh"),
        "SoC": ("40", "Percent"),
        "Current.Offered": ("16", "A"),
        "Power.Offered": ("11000", "W"),
    }
    found: list[dict[str, Any]] = []
    for measurand in measurands:
        if measurand in per_phase:
            value, unit, phases = per_phase[measurand]
            found += [
                {"value": value, "measurand": measurand, "unit": unit, "phase": phase}
                for phase in phases
            ]
        elif measurand in single:
            value, unit = single[measurand]
            found.append({"value": value, "measurand": measurand, "unit": unit})
    return found


def sample_a_transaction(charger: Charger) -> Station:
    """Connect, start a transaction and send one periodic sample of what the charger's
    settings say it measures (a charger samples nothing during a transaction with a
    0 interval); still connected."""
    station = charger.connect()
    try:
        measurands = charger.sampled() if charger.interval() > 0 else []
        if charger.version == V16:
            tid = station.send(
                station.call.StartTransaction(
                    connector_id=1, id_tag="TAG", meter_start=0, timestamp=stamp()
                )
            ).transaction_id
            if measurands:
                station.send(
                    station.call.MeterValues(
                        connector_id=1,
                        transaction_id=tid,
                        meter_value=[{"timestamp": stamp(), "sampled_value": samples(measurands)}],
                    )
                )
        else:
            transaction_event(station, "Started", 0, stamp(), "tx-1")
            if measurands:
                values = [
                    {
                        "value": float(s["value"]),
                        "measurand": s["measurand"],
                        "unit_of_measure": {"unit": s["unit"]},
                        **({"phase": s["phase"]} if "phase" in s else {}),
                    }
                    for s in samples(measurands)
                ]
                meter_value = [{"timestamp": stamp(), "sampled_value": values}]
                transaction_event(station, "Updated", 1, stamp(), "tx-1", meter_value)
        time.sleep(1.5)  # a commit interval: what it sent is in the database
    except BaseException:
        station.close()
        raise
    return station


def power_phases(appliance: Any, cp: str) -> list[str]:
    rows = appliance.query(
        "SELECT DISTINCT phase FROM meter_values WHERE identity = ?"
        " AND measurand = 'Power.Active.Import' ORDER BY phase",
        cp,
    )
    return [phase for (phase,) in rows]


def factory(version: str) -> dict[Any, Any]:
    return dict(FACTORY_16) if version == V16 else dict(FACTORY_2X)


def key(version: str, name: str) -> Any:
    """A setting's key in the charger's table: 1.6 its name, 2.x (component, variable)."""
    if version == V16:
        return name
    component, _, variable = name.partition(".")
    return (component, variable)


SAMPLED = {V16: "MeterValuesSampledData", V201: "SampledDataCtrlr.TxUpdatedMeasurands"}
SAMPLED[V21] = SAMPLED[V201]
INTERVAL = {V16: "MeterValueSampleInterval", V201: "SampledDataCtrlr.TxUpdatedInterval"}
INTERVAL[V21] = INTERVAL[V201]


def state_of(version: str, name: str) -> str:
    """Where the setting is in the object tree, below the identity."""
    if version == V16:
        return f"config.{name}"
    component, _, variable = name.partition(".")
    return f"dm.{component}.{variable}.Actual.value"


# ====================================================================== tests


@pytest.mark.parametrize("version", [V16, V201, V21])
def test_after_boot_the_settings_match_and_power_per_phase_follows(start_appliance, version):
    """A charge point measuring only the energy register (every 60 s, or — MicroOcpp 2.x —
    not at all during a transaction) gets [readings]'s defaults after its boot: the
    measurands, a 10 s interval, clock-aligned energy every 300 s; each write is in
    `control_outcomes`, the tree shows the new values, and the next transaction's meter
    values carry power per phase (issue 26, points 1–3)."""
    appliance = start_appliance(FETCH)
    cp = f"METER-{version[4:].replace('.', '')}"
    charger = Charger(appliance, cp, version, factory(version))
    assert charger.sampled() == ["Energy.Active.Import.Register"]
    charger.run()

    assert charger.sampled() == DEFAULT
    assert charger.interval() == 10
    if version == V16:
        expected = {
            "MeterValuesSampledData": ",".join(DEFAULT),
            "MeterValueSampleInterval": "10",
            "MeterValuesAlignedData": "Energy.Active.Import.Register",
            "ClockAlignedDataInterval": "300",
        }
    else:
        expected = {
            "SampledDataCtrlr.TxUpdatedMeasurands": ",".join(DEFAULT),
            "SampledDataCtrlr.TxUpdatedInterval": "10",
            "SampledDataCtrlr.TxEndedMeasurands": "Energy.Active.Import.Register",
            "AlignedDataCtrlr.Measurands": "Energy.Active.Import.Register",
            "AlignedDataCtrlr.Interval": "300",
        }
    assert {name: value for name, value, _ in charger.writes} == expected
    assert all(status == "Accepted" for *_, status in charger.writes), charger.writes
    assert len(charger.writes) == len(expected)  # each once; the heartbeat left alone
    for name, value in expected.items():
        row = outcome_row(appliance, f"{cp}.{state_of(version, name)}")
        assert row[:3] == (value, 1, None), (name, row)
        assert row[3] == value  # in force
        [(shown,)] = appliance.query(
            "SELECT val FROM states WHERE id = ?", f"{cp}.{state_of(version, name)}"
        )
        assert str(shown) == value, (name, shown)
    notes = appliance.query("SELECT note FROM control_outcomes WHERE id LIKE ?", f"{cp}.%")
    assert all("[readings]" in note for (note,) in notes), notes
    assert "readings: " in appliance.log()

    assert power_phases(appliance, cp) == []
    with sample_a_transaction(charger):
        assert power_phases(appliance, cp) == ["L1", "L2", "L3"]
        [(power,)] = appliance.query(
            "SELECT power_w FROM charge_point_status WHERE identity = ?", cp
        )
        assert power == 7200
    assert len(charger.writes) == len(expected)  # the reconnect's boot: nothing differs


@pytest.mark.parametrize("version", [V16, V201])
def test_a_charge_point_that_refuses_soc_gets_the_list_without_it(start_appliance, version):
    """The whole list is Rejected (it has no SoC: an AC wallbox); dropping one measurand
    at a time from the least important finds the one it refuses: it ends with every other
    measurand, each list written once; the outcome says what was not taken. At its next
    boot nothing is written again (issue 26, point 2)."""
    appliance = start_appliance(FETCH)
    cp = f"NO-SOC-{version[4:].replace('.', '')}"
    charger = Charger(appliance, cp, version, factory(version), refuses={"SoC"})
    charger.run()

    without = [m for m in DEFAULT if m != "SoC"]
    assert charger.sampled() == without
    lists = [value for name, value, _ in charger.writes if name == SAMPLED[version]]
    assert len(lists) == len(set(lists))  # no list twice
    assert lists[0] == ",".join(DEFAULT) and lists[-1] == ",".join(without)
    assert [s for n, _, s in charger.writes if n == SAMPLED[version]][-1] == "Accepted"
    row = outcome_row(appliance, f"{cp}.{state_of(version, SAMPLED[version])}")
    assert row[:3] == (",".join(without), 1, None)
    [(note,)] = appliance.query(
        "SELECT note FROM control_outcomes WHERE id = ?",
        f"{cp}.{state_of(version, SAMPLED[version])}",
    )
    assert "without SoC: not taken" in note

    count = len(charger.writes)
    charger.run()  # boots again
    assert len(charger.writes) == count


def test_a_measurand_outside_the_values_list_is_not_asked_for(start_appliance):
    """2.x: the variable's reported valuesList has no SoC and no offered power: the list
    written holds only what it lists, at the first try (issue 26, point 2)."""
    appliance = start_appliance(FETCH)
    cp = "LISTED-201"
    settings = factory(V201)
    listed = (
        "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered"
    )
    settings[SAMPLED_2X] = ("Energy.Active.Import.Register", False, listed)
    charger = Charger(appliance, cp, V201, settings)
    charger.run()
    lists = [value for name, value, _ in charger.writes if name == SAMPLED[V201]]
    assert lists == [listed]


def test_16_the_list_is_cut_to_its_maximum_length(start_appliance):
    """MeterValuesSampledDataMaxLength = 3: the three most important measurands."""
    appliance = start_appliance(FETCH)
    settings = factory(V16)
    settings["MeterValuesSampledDataMaxLength"] = ("3", True)
    charger = Charger(appliance, "SHORT-16", V16, settings)
    charger.run()
    assert charger.sampled() == DEFAULT[:3]


@pytest.mark.parametrize("version", [V16, V201])
def test_a_read_only_or_unknown_setting_is_not_written(start_appliance, version):
    """The sampling interval reported read-only, the aligned settings not reported at all:
    neither is written; the rest is (issue 26, point 3)."""
    appliance = start_appliance(FETCH)
    cp = f"READONLY-{version[4:].replace('.', '')}"
    settings = factory(version)
    interval = key(version, INTERVAL[version])
    settings[interval] = ("60", True, *settings[interval][2:])
    for name in list(settings):
        if "Aligned" in str(name):
            del settings[name]
    charger = Charger(appliance, cp, version, settings)
    charger.run()
    written = {name for name, *_ in charger.writes}
    assert INTERVAL[version] not in written
    assert not any("Aligned" in name for name in written)
    assert SAMPLED[version] in written
    assert charger.interval() == 60
    assert re.search(rf"left alone: .*{INTERVAL[version]}: read-only", appliance.log())


@pytest.mark.parametrize(
    "config",
    [
        "configure = false\n",
        '[charge_points."HANDS-OFF".readings]\nconfigure = false\n',
    ],
    ids=["all", "one"],
)
def test_configure_false_writes_nothing(start_appliance, config):
    """`configure = false` (for all, or for this charge point): nothing is written."""
    appliance = start_appliance(FETCH + config)
    charger = Charger(appliance, "HANDS-OFF", V16, factory(V16))
    charger.run()
    assert charger.station is not None
    assert [c.action for c in charger.station.calls] == ["GetConfiguration"]
    assert charger.writes == []
    other = Charger(appliance, "OTHER", V16, factory(V16))
    other.run()
    if config.startswith("configure"):
        assert other.writes == []
    else:  # only the one named is left alone
        assert len(other.writes) == 4


@pytest.mark.parametrize("version", [V16, V201])
def test_a_charge_point_that_reboots_after_each_write_is_not_written_twice(
    start_appliance, version
):
    """It reboots after every accepted write (ABB Terra, lbbrhzn/ocpp#1275): each boot
    finds one more setting matching, no setting is written twice, and it stops rebooting
    (its boots counted) (issue 26, point 3)."""
    appliance = start_appliance(FETCH)
    cp = f"REBOOTS-{version[4:].replace('.', '')}"
    charger = Charger(appliance, cp, version, factory(version), reboots=True)
    charger.run()
    names = [name for name, *_ in charger.writes]
    assert len(names) == len(set(names)), charger.writes
    # a write that crossed the reboot on the wire may have taken without its answer
    assert 2 <= charger.boots <= len(names) + 1
    assert charger.writes[-1][2] == "Accepted"
    assert charger.sampled() == DEFAULT


def test_a_write_the_charge_point_does_not_keep_is_not_repeated(start_appliance):
    """It accepts, reboots and comes back with its factory settings: written once, then
    left alone with a log line (no reboot loop)."""
    appliance = start_appliance(FETCH)
    charger = Charger(appliance, "FORGETS", V16, factory(V16), reboots=True, forgets=True)
    charger.run()
    names = [name for name, *_ in charger.writes]
    assert names.count("MeterValuesSampledData") == 1
    assert charger.boots <= len(FACTORY_16)
    assert "did not keep" in appliance.log()


def test_readings_config_is_checked(tmp_path):
    """A measurand name that OCPP does not have is refused at start, naming the key."""
    config = tmp_path / "appliance.toml"
    config.write_text('[readings]\nmeasurands = ["Energy.Active.Import.Register", "Power"]\n')
    result = conftest.run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "readings.measurands" in result.stderr and "not an OCPP measurand" in result.stderr


# ------------------------------------------------------------- the search, pure


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(DEFAULT), unique=True), st.sets(st.sampled_from(DEFAULT)))
def test_the_search_ends_with_every_measurand_the_charge_point_takes(order, refused):
    """Whatever it refuses: the list in force in the end is the wanted one without exactly
    the refused measurands (in the wanted order), no list is written twice, and at most
    twice as many lists as measurands are written (README "Readings the appliance asks
    for": one measurand at a time)."""
    from appliance.readings.plan import trials

    wanted = tuple(order)
    if not wanted:
        return
    written: list[tuple[str, ...]] = []
    in_force: tuple[str, ...] | None = None
    search = trials(wanted)
    candidate = next(search)
    try:
        while True:
            written.append(candidate)
            taken = not set(candidate) & refused
            if taken:
                in_force = candidate
            candidate = search.send(taken)
    except StopIteration:
        pass
    expected = tuple(m for m in wanted if m not in refused)
    assert (in_force or ()) == expected
    assert len(written) == len(set(written))
    assert len(written) <= 2 * len(wanted)
