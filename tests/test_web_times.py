"""What the viewer sees of times and readings (README "Web dashboard and API"): times in
the browser's time zone, each session's duration and energy, and a power chart from
0 W that does not bridge the hours without readings. Headless Chromium in New York
against a real appliance and a charge point of the `ocpp` package."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from test_controls import V16, Station, booted, stamp
from test_web_api import client, web_config, web_url

from appliance.web.routes import _session_row

# skips this file where selenium is missing
from test_web_browser import CHROMEDRIVER, CHROMIUM, chromium, log_in, text  # isort: skip
from selenium.webdriver.common.by import By  # isort: skip
from selenium.webdriver.support.ui import WebDriverWait  # isort: skip

ZONE = "America/New_York"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def new_york(tmp_path):
    """A browser whose time zone is New York's, not the machine's (UTC here)."""
    driver = chromium(tmp_path, ZONE)
    yield driver
    driver.quit()


def local(value: str | int) -> str:
    """A stored time (ISO 8601 or ms) as the page should show it in New York."""
    moment = (
        datetime.fromtimestamp(value / 1000, UTC)
        if isinstance(value, int)
        else datetime.fromisoformat(value.replace("Z", "+00:00"))
    )
    return moment.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")


def power(station: Station, watts: int) -> None:
    station.send(
        station.call.MeterValues(
            connector_id=1,
            meter_value=[
                {
                    "timestamp": stamp(),
                    "sampled_value": [
                        {"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"}
                    ],
                }
            ],
        )
    )


@needs_chromium
def test_times_durations_and_energy_in_the_viewers_zone(start_appliance, new_york):
    """A session of 1 h 23 min 10 s that started on the evening of 8 March in New York
    (04:30 UTC on the 9th) and ended after the night's change to summer time; every time
    on the page in New York's zone, with the UTC in its title, and in UTC without
    JavaScript."""
    appliance = start_appliance(web_config())
    with booted(Station(appliance, "CP-NY", V16).open()) as station:
        call = station.call
        done = station.send(call.StartTransaction(1, "TAG-NY", 1000, "2025-03-09T04:30:00.000Z"))
        station.send(call.StopTransaction(13_345, "2025-03-09T05:53:10.000Z", done.transaction_id))
        station.send(call.StartTransaction(1, "TAG-NOW", 20_000, stamp()))
        appliance.wait_rows("SELECT 1 FROM transactions", count=2)
        base = web_url(appliance)
        log_in(new_york, base)
        new_york.get(f"{base}/cp/CP-NY")
        wait = WebDriverWait(new_york, 30, poll_frequency=0.2)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#frames tr"))

        def state(name: str) -> str:
            return appliance.query("SELECT val FROM states WHERE id = ?", f"CP-NY.{name}")[0][0]

        rows = [
            [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in new_york.find_elements(By.CSS_SELECTOR, "#sessions tr")[1:]
        ]
        header = text(new_york, "#sessions tr")
        assert header == "Id Token Started Stopped Duration kWh Reason"
        (running, finished) = rows
        assert finished[1:] == [
            "TAG-NY",
            "2025-03-08 23:30:00",  # EST, the day before UTC's
            "2025-03-09 00:53:10",
            "1 h 23 min",
            "12.345",
            "Local",
        ]
        assert finished[2] == local("2025-03-09T04:30:00.000Z")
        cell = new_york.find_element(By.CSS_SELECTOR, "#sessions tr:last-child time")
        assert cell.get_attribute("title") == "2025-03-09 04:30:00 UTC"
        started_at = state("transactions.last.startedAt")
        assert running[1:4] == ["TAG-NOW", local(started_at), "-"]
        assert running[4].startswith("running for ") and running[4].endswith(" s"), running
        (energy,) = appliance.query("SELECT tx_energy_kwh FROM charge_point_status")[0]
        assert running[5] == f"{energy:.3f}"  # so far: live, as the overview's
        assert text(new_york, "#session dd:nth-of-type(3)") == local(started_at)

        # the connection log, the last boot, the frames: New York, no "UTC"
        assert "UTC" not in text(new_york, "#connection-log tr")
        logged = appliance.query("SELECT ts FROM connection_log ORDER BY ts DESC, rowid DESC")
        shown = [
            r.find_element(By.TAG_NAME, "td").text
            for r in new_york.find_elements(By.CSS_SELECTOR, "#connection-log tr")[1:]
        ]
        assert shown == [local(ts) for (ts,) in logged]
        assert local(state("info.lastBoot")) in text(new_york, "#info")
        frames = appliance.query(
            "SELECT ts FROM messages WHERE identity = 'CP-NY' ORDER BY seq DESC LIMIT 50"
        )
        shown = [
            r.find_element(By.TAG_NAME, "td").text
            for r in new_york.find_elements(By.CSS_SELECTOR, "#frames tr")
        ]
        assert shown == [local(ts) for (ts,) in frames]
        assert text(new_york, "#tz") == f"times: {ZONE}"
        errors = [entry for entry in new_york.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []

        # without JavaScript: the same times, in UTC, and they say so
        with client(appliance) as http:
            html = http.get("/cp/CP-NY").text
        assert '<time datetime="2025-03-09T04:30:00.000Z">2025-03-09 04:30:00 UTC</time>' in html


def seed(db, identity: str, watts: int, start_ms: int, stop_ms: int, step_ms: int) -> None:
    """Readings of the past, as the appliance stores them (its clock in received_at): an
    hour's history cannot be waited for in a test."""
    rows = [
        (identity, 1, 1, "Power.Active.Import", "W", watts, at)
        for at in range(start_ms, stop_ms, step_ms)
    ]
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as writer, writer:
        writer.executemany(
            "INSERT INTO meter_values (identity, evse_id, connector_id, measurand, unit, value,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


@needs_chromium
def test_the_chart_starts_at_0_and_breaks_where_nothing_was_read(start_appliance, new_york):
    """6 kW 50 to 40 minutes ago, then nothing, then a session at 7.2 kW that ends, and
    one at 6.8 kW: the y axis from 0 W, a break in the line over the 40 minutes without
    readings, 0 W where the first session ended, never a line at the old power."""
    appliance = start_appliance(web_config(password=False))
    with booted(Station(appliance, "CP-GAP", V16).open()) as station:
        now = time.time_ns() // 1_000_000
        seed(appliance.db, "CP-GAP", 6000, now - 50 * 60_000, now - 40 * 60_000, 10_000)
        call = station.call
        first = station.send(call.StartTransaction(1, "TAG-A", 1000, stamp()))
        power(station, 7200)
        time.sleep(1.1)
        power(station, 7200)
        station.send(call.StopTransaction(1500, stamp(), first.transaction_id))
        time.sleep(7)  # past the hour view's 6 s buckets: the end is a point of its own
        station.send(call.StartTransaction(1, "TAG-B", 1500, stamp()))
        power(station, 6800)
        time.sleep(1.1)
        power(station, 6800)
        appliance.wait_rows("SELECT 1 FROM charge_point_status WHERE power_w = 6800")

        new_york.get(f"{web_url(appliance)}/cp/CP-GAP")
        wait = WebDriverWait(new_york, 30, poll_frequency=0.2)
        wait.until(lambda d: d.find_element(By.ID, "chart").get_attribute("data-last") == "6800")
        plot = "window.powerChart.plot"
        y = new_york.execute_script(f"return [{plot}.scales.y.min, {plot}.scales.y.max]")
        assert y[0] == 0 and y[1] >= 7200, y
        # the total's points in time order; null: a break; undefined: no point of its own
        values = new_york.execute_script(
            f"return {plot}.data[1].map((v) => v === null ? 'break' : v === undefined ? '' : v)"
        )
        said = [v for v in values if v != ""]
        changes = [v for i, v in enumerate(said) if i == 0 or v != said[i - 1]]
        assert changes == [6000, "break", 7200, 0, 6800], changes
        assert said.count(6000) >= 50

        # the time axis in New York's time: each label is its tick's local hour:minute
        ticks = new_york.execute_script(
            f"return {plot}.axes[0]._splits.map((s, i) => [s, {plot}.axes[0]._values[i]])"
        )
        assert ticks
        for at, label in ticks:
            moment = datetime.fromtimestamp(at, ZoneInfo(ZONE))
            assert label.startswith(moment.strftime("%-I:%M")), (label, moment)
        errors = [entry for entry in new_york.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []


def test_a_session_row_says_how_long_it_ran():
    """Finished: stop - start by the charge point's clock, or by the appliance's where
    that clock is implausible (set while the session ran); running: since when."""
    point = {"tx_active": 1}
    base = {
        "transaction_id": "7",
        "started_at": "2025-03-09T04:30:00.000Z",
        "stopped_at": "2025-03-09T05:53:10.000Z",
        "received_at": 1_000_000,
        "updated_at": 1_000_000 + 42_000,
        "time_suspect": 0,
    }
    assert _session_row(base, point, "8")["duration"] == "1 h 23 min"
    assert _session_row({**base, "time_suspect": 1}, point, "8")["duration"] == "42 s"
    long = {**base, "stopped_at": "2025-03-11T07:00:00+00:00"}
    assert _session_row(long, point, "8")["duration"] == "2 d 02 h"
    running = _session_row({**base, "stopped_at": None}, point, "7")
    assert running["duration"] is None and running["current"]
    assert running["since"] == int(datetime(2025, 3, 9, 4, 30, tzinfo=UTC).timestamp() * 1000)
    suspect = _session_row({**base, "stopped_at": None, "time_suspect": 1}, point, "7")
    assert suspect["since"] == 1_000_000
    assert _session_row({**base, "stopped_at": None}, {"tx_active": 0}, "7")["since"] is None
