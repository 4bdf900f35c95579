"""The web API through real HTTP against a real appliance (a subprocess) with charge
points of the `ocpp` package (README "Web dashboard and API")."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
import websockets.sync.client
from test_controls import V16, Station, booted, stamp

import conftest
from appliance.passwords import hash_password, new_token

PASSWORD = "correct-horse-battery-staple"
#: ln = 10: the cheapest scrypt the config accepts, so the test spends no time in the KDF
PASSWORD_HASH = hash_password(PASSWORD, ln=10)
TOKEN, TOKEN_HASH = new_token()
_WEB = re.compile(r"web dashboard and API on (https?)://[^:]+:(\d+)/")


def web_url(appliance: conftest.Appliance) -> str:
    found = conftest.wait_for(lambda: _WEB.search(appliance.log()), 10, "the web listener")
    return f"{found.group(1)}://127.0.0.1:{found.group(2)}"


def client(appliance: conftest.Appliance, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=web_url(appliance), timeout=30, **kwargs)


def csrf(http: httpx.Client) -> dict[str, str]:
    """The double-submit header: the CSRF cookie a first GET set, sent back as a header."""
    if "oa_csrf" not in http.cookies:
        http.get("/api/me")
    return {"x-csrftoken": http.cookies["oa_csrf"]}


def web_config(password: bool = True) -> str:
    lines = ["[web]", 'host = "127.0.0.1"', "port = 0"]
    if password:
        lines += [f'password_hash = "{PASSWORD_HASH}"', f'api_token_hashes = ["{TOKEN_HASH}"]']
    return "\n" + "\n".join(lines) + "\n"


def charging(station: Station) -> None:
    """A 1.6 session with two meter readings of power and energy."""
    call = station.call
    station.send(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
    station.send(call.StartTransaction(1, "TAG1", 1000, stamp()))
    for watts, wh in ((7200, 1100), (7000, 1200)):
        station.send(
            call.MeterValues(
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
        )


def test_read_only_without_a_password(start_appliance):
    appliance = start_appliance(web_config(password=False))
    with Station(appliance, "CP-RO", V16) as station, client(appliance) as http:
        booted(station)
        charging(station)
        points = conftest.wait_for(
            lambda: [p for p in http.get("/api/charge-points").json() if p["power_w"] == 7000],
            10,
            "power in the API",
        )
        assert points[0]["identity"] == "CP-RO" and points[0]["state"] == "charging"
        assert points[0]["connected"] == 1 and points[0]["energy_wh"] == 1200

        one = http.get("/api/charge-points/CP-RO").json()
        assert one["tx_active"] == 1
        # the running session's start: the charge point's own time (its clock is plausible)
        started = appliance.query("SELECT started_at FROM transactions")[0][0]
        started_ms = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() * 1000
        assert abs(one["tx_started"] - started_ms) <= 2, (one["tx_started"], started)
        overview = http.get("/").text
        assert re.search(r'data-field="tx_duration" data-ms="\d+">\d+ s<', overview), overview
        assert http.get("/api/charge-points/NOPE").status_code == 404

        states = http.get("/api/charge-points/CP-RO/states", params={"glob": "info.*"}).json()
        by_id = {s["id"]: s["val"] for s in states}
        assert by_id["CP-RO.info.vendor"] == "TestVendor"
        assert all(s["id"].startswith("CP-RO.info.") for s in states)

        series = http.get(
            "/api/charge-points/CP-RO/meter-values",
            params={"measurand": "Power.Active.Import", "range": "hour", "points": 10},
        ).json()
        values = [p["value"] for p in series["points"]]
        assert values and 7000 <= values[-1] <= 7200 and len(values) <= 10
        assert http.get("/api/charge-points/CP-RO/meter-values?range=year").status_code == 400

        station.send(station.call.StopTransaction(1250, stamp(), 1))
        sessions = conftest.wait_for(
            lambda: [s for s in http.get("/api/sessions").json() if s["energy_wh"] == 250],
            10,
            "the finished session",
        )
        assert sessions[0]["id_token"] == "TAG1"
        assert http.get("/api/charge-points/CP-RO").json()["tx_started"] is None
        assert http.get("/api/sessions", params={"until": "2001-01-01"}).json() == []
        text = http.get("/api/charge-points/CP-RO/sessions.csv")
        assert text.headers["content-type"].startswith("text/csv")
        header, row = text.text.splitlines()[:2]
        assert header.startswith("identity,transaction_id,") and "TAG1" in row
        assert http.get("/api/sessions?format=csv").text == text.text

        log = http.get("/api/charge-points/CP-RO/connection-log").json()
        assert log[0]["event"] == "connect" and log[0]["identity"] == "CP-RO"

        # frames and controls need a login; the page says how to set a password
        assert http.get("/api/charge-points/CP-RO/frames").status_code == 401
        refused = http.post(
            "/api/charge-points/CP-RO/controls",
            json={"id": "control.chargeLimit", "value": 16},
            headers=csrf(http),
        )
        assert refused.status_code == 401 and "password_hash" in refused.json()["error"]
        assert "ocpp-appliance hash-password" in http.get("/").text
        page = http.get("/cp/CP-RO").text
        assert "TestVendor" in page and 'id="frames"' not in page and "TAG1" in page

        # the event stream: a snapshot first
        with http.stream("GET", "/api/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            assert next(lines) == "event: status"
            assert '"identity":"CP-RO"' in next(lines)


def test_refused_charge_points_are_listed_with_the_reason(start_appliance):
    appliance = start_appliance(
        web_config(password=False)
        + f'\n[charge_points."CP-PW"]\npassword_hash = "{PASSWORD_HASH}"\n'
    )
    with pytest.raises(websockets.exceptions.InvalidStatus):
        websockets.sync.client.connect(f"{appliance.url}/CP-PW", subprotocols=["ocpp1.6"])
    with client(appliance) as http:
        refused = conftest.wait_for(lambda: http.get("/api/refused").json(), 10, "a refusal")
        assert refused[0]["identity"] == "CP-PW"
        assert "authentication required" in refused[0]["reason"]
        assert "authentication required" in http.get("/").text
        only = http.get("/api/connection-log", params={"event": "refused"}).json()
        assert only and {r["event"] for r in only} == {"refused"}


def test_login_csrf_controls_tokens_and_the_throttle(start_appliance):
    appliance = start_appliance(web_config())
    with Station(appliance, "CP-W", V16) as station, client(appliance) as http:
        booted(station)
        # CSRF: a state-changing request without the header is refused, even a login
        assert http.post("/api/login", json={"password": PASSWORD}).status_code == 403
        wrong = http.post("/api/login", json={"password": "nope"}, headers=csrf(http))
        assert wrong.status_code == 401
        ok = http.post("/api/login", json={"password": PASSWORD}, headers=csrf(http))
        assert ok.status_code == 200
        cookie = next(v for k, v in ok.headers.multi_items() if k == "set-cookie")
        assert cookie.startswith("oa_session=")
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert http.get("/api/me").json()["logged_in"] is True

        # a control: the outcome comes back
        answer = http.post(
            "/api/charge-points/CP-W/controls",
            json={"writes": {"control.chargeLimitType": "A", "control.chargeLimit": 16}},
            headers=csrf(http),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["ok"] is True
        assert any(c.action == "SetChargingProfile" for c in station.calls)
        limit = http.get("/api/charge-points/CP-W").json()
        assert (limit["charge_limit"], limit["charge_limit_unit"]) == (16, "A")
        # refused by the appliance: the reason, nothing sent
        bad = http.post(
            "/api/charge-points/CP-W/controls",
            json={"id": "control.chargeLimit", "value": 7000},
            headers=csrf(http),
        )
        assert bad.status_code == 422 and "chargeLimit must be 0..500 A" in bad.json()["error"]
        # refused by the database's trigger: read-only
        readonly = http.post(
            "/api/charge-points/CP-W/controls",
            json={"id": "control.lastError", "value": "x"},
            headers=csrf(http),
        )
        assert readonly.status_code == 400
        not_a_control = http.post(
            "/api/charge-points/CP-W/controls",
            json={"id": "info.vendor", "value": "x"},
            headers=csrf(http),
        )
        assert not_a_control.status_code == 400

        frames = http.get("/api/charge-points/CP-W/frames", params={"action": "BootNotification"})
        body = frames.json()
        assert frames.status_code == 200 and "BootNotification" in body["actions"]
        assert {f["action"] for f in body["frames"]} == {"BootNotification"}
        assert 'id="frames"' in http.get("/cp/CP-W").text

        assert http.post("/api/logout", headers=csrf(http)).status_code == 200
        assert http.get("/api/charge-points/CP-W/frames").status_code == 401

    # an API token: no cookie, no CSRF
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with Station(appliance, "CP-W", V16) as station, client(appliance) as script:
        booted(station)
        done = script.post(
            "/api/charge-points/CP-W/controls",
            json={"id": "control.availability", "value": 0},
            headers=bearer,
        )
        assert done.status_code == 200 and done.json()["ok"] is True
        assert any(c.action == "ChangeAvailability" for c in station.calls)
        assert script.get("/api/charge-points/CP-W/frames", headers=bearer).status_code == 200
        wrong = script.get("/api/charge-points/CP-W/frames", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401

    # the throttle: 3 wrong passwords are free, then each attempt waits first
    with client(appliance) as http:
        took = []
        for _ in range(5):
            started = time.monotonic()
            answer = http.post("/api/login", json={"password": "guess"}, headers=csrf(http))
            took.append(time.monotonic() - started)
            assert answer.status_code == 401
        assert max(took[:2]) < 0.4 and took[3] >= 0.45 and took[4] >= 0.95, took

    # never a secret in the log or the database
    log = appliance.log()
    dump = "\n".join(str(r) for r in appliance.query("SELECT * FROM states"))
    dump += "\n".join(str(r) for r in appliance.query("SELECT * FROM messages"))
    for secret in (PASSWORD, PASSWORD_HASH, TOKEN, TOKEN_HASH):
        assert secret not in log and secret not in dump


def readme_curl_commands() -> list[str]:
    """The `curl` lines of the README's "Web dashboard and API" section, continuations
    joined, as a user copies them."""
    readme = (conftest.ROOT / "README.md").read_text()
    section = readme.split("## Web dashboard and API", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("curl"):
                commands.append(command.strip())
    return commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_examples_run(start_appliance, tmp_path):
    """Every curl example of the README runs against a real appliance (box:9080 → its
    address) and does what the README says."""
    appliance = start_appliance(web_config())
    commands = readme_curl_commands()
    assert len(commands) >= 5, commands
    with booted(Station(appliance, "GARAGE", V16).open()) as station:
        charging(station)
        appliance.wait_rows(
            "SELECT 1 FROM charge_point_status WHERE identity = 'GARAGE' AND power_w = 7000"
        )
        url = web_url(appliance)
        station.answers["SetChargingProfile"] = {"status": "Accepted"}
        for command in commands:
            streaming = " -sN " in f" {command} "
            line = command.replace("http://box:9080", url)
            if streaming:
                line = line.replace("curl -sN", "curl -sN --max-time 2")
            done = subprocess.run(
                ["bash", "-c", line],
                cwd=tmp_path,
                env={**os.environ, "TOKEN": TOKEN},
                capture_output=True,
                text=True,
                timeout=30,
            )
            if streaming:
                assert done.returncode == 28, done  # curl's "time is up": it was streaming
                assert "event: status" in done.stdout and "GARAGE" in done.stdout, done.stdout
                continue
            assert done.returncode == 0, (line, done.stderr)
            if "> sessions.csv" in line:
                assert "TAG1" in (tmp_path / "sessions.csv").read_text()
            else:
                assert "GARAGE" in done.stdout or '"ok"' in done.stdout, (line, done.stdout)
        assert station.take_one()[0] == "SetChargingProfile"


def test_sighup_applies_the_password_and_keeps_the_listener(start_appliance):
    """README "Web dashboard and API": `host`, `port` and `enabled` take a restart (the log
    says so, the dashboard stays where it is); a new password applies at once and ends
    every session."""
    appliance = start_appliance(web_config())
    with client(appliance) as http:
        assert http.post("/api/login", json={"password": PASSWORD}, headers=csrf(http)).is_success
        assert http.get("/api/me").json()["logged_in"] is True
        new_password = PASSWORD + "-new"
        config = appliance.folder / "appliance.toml"
        text = config.read_text().replace(PASSWORD_HASH, hash_password(new_password, ln=10))
        web = '[web]\nhost = "127.0.0.1"\nport = 0\n'
        assert web in text
        config.write_text(
            text.replace(web, '[web]\nenabled = false\nhost = "127.0.0.1"\nport = 1\n')
        )
        before = appliance.log().count("SIGHUP: config reloaded")
        appliance.proc.send_signal(signal.SIGHUP)
        conftest.wait_for(
            lambda: appliance.log().count("SIGHUP: config reloaded") > before, 10, "the reload"
        )
        assert "web.enabled, web.port changed: takes a restart" in appliance.log()
        # the same listener; the old session is over, the new password logs in
        assert http.get("/api/me").json()["logged_in"] is False
        old = http.post("/api/login", json={"password": PASSWORD}, headers=csrf(http))
        assert old.status_code == 401
        new = http.post("/api/login", json={"password": new_password}, headers=csrf(http))
        assert new.status_code == 200


def test_a_locked_database_is_a_503_with_the_reason(start_appliance):
    """Another program holds the database's write lock for longer than a write waits:
    the control is not the request's fault, so 503 with the reason and Retry-After (not
    400, not a traceback); once the lock is gone the same request works."""
    appliance = start_appliance(web_config())
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    control = {"id": "control.availability", "value": 0}
    url = "/api/charge-points/CP-LOCK/controls"
    station = Station(appliance, "CP-LOCK", V16)
    with booted(station.open()), client(appliance) as script:
        with contextlib.closing(sqlite3.connect(appliance.db, isolation_level=None)) as db:
            db.execute("BEGIN EXCLUSIVE")
            locked = script.post(url, json=control, headers=bearer)
            db.execute("ROLLBACK")
        assert locked.status_code == 503, locked.text
        assert "is locked by another program: try again" in locked.json()["error"]
        assert locked.headers["retry-after"] == "10"
        done = script.post(url, json=control, headers=bearer)
        assert done.status_code == 200 and done.json()["ok"] is True
        assert station.take_one()[0] == "ChangeAvailability"
    assert "Traceback" not in appliance.log()
