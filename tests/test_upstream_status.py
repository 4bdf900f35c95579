"""What the user sees of each upstream (issue 24, README "A second backend" and
"`charge_point_status`"): the view's `upstreams` column, `ocpp-appliance status`, the web
API and the dashboard, and Home Assistant's entity for it. One upstream is a real
central system (the `ocpp` package on a `websockets` server), the other is not
listening; the charge point is the `ocpp` package."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from jinja2.sandbox import SandboxedEnvironment
from ocpp.v16 import call as call16
from pg import free_port
from test_upstream import Upstream, now, session16, wait_calls
from test_web_api import client

import conftest
from appliance.mqtt.topics import discovery


def two_upstreams(up: Upstream, down_port: int) -> str:
    return (
        f'\n[[upstream]]\nurl = "{up.url}"\nname = "billing"\n'
        f'\n[[upstream]]\nurl = "ws://127.0.0.1:{down_port}/ocpp"\nname = "ere"\n'
    )


def upstreams_of(appliance: conftest.Appliance, identity: str) -> dict[str, Any] | None:
    """The charge point's `upstreams` column; None until its row is committed (an upstream
    can take the charge point's calls within the commit interval of its boot)."""
    rows = appliance.query("SELECT upstreams FROM charge_point_status WHERE identity = ?", identity)
    if not rows:
        return None
    [(text,)] = rows
    return None if text is None else json.loads(text)


def test_each_upstreams_state_is_in_the_view_the_cli_the_api_and_the_dashboard(
    start_appliance,
):
    up = Upstream("ocpp1.6").start()
    appliance = start_appliance(two_upstreams(up, free_port()))

    async def scenario(cp: Any) -> None:
        await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
        await cp.call(
            call16.StartTransaction(connector_id=1, id_tag="TAG", meter_start=0, timestamp=now())
        )
        await asyncio.to_thread(wait_calls, up, "UP-S", 2)
        # while the charge point is connected: billing is, ere is not and keeps the start
        states = await asyncio.to_thread(
            conftest.wait_for,
            lambda: (
                (found := upstreams_of(appliance, "UP-S"))
                and found.get("ere", {}).get("waiting") == 1
                and found.get("billing", {}).get("connected")
                # billing's answers arrive after the upstream took the calls
                and found["billing"].get("waiting") == 0
                and found
            ),
            15,
            "both upstreams in charge_point_status",
        )
        assert states["billing"]["connected"] is True and states["billing"]["waiting"] == 0
        assert states["billing"]["reason"] is None and states["billing"]["since"] > 0
        assert states["ere"]["connected"] is False
        assert states["ere"]["reason"].startswith("cannot connect")

        shown = conftest.run_cli("status", "--config", str(appliance.folder / "appliance.toml"))
        assert shown.returncode == 0, shown.stderr
        assert re.search(
            r"upstream billing of UP-S: connected for \d+ s; 0 transaction", shown.stdout
        )
        assert re.search(
            r"upstream ere of UP-S: not connected for \d+ s \(cannot connect: .+\);"
            r" 1 transaction message waiting",
            shown.stdout,
        ), shown.stdout
        as_json = conftest.run_cli(
            "status", "--json", "--config", str(appliance.folder / "appliance.toml")
        )
        [row] = json.loads(as_json.stdout)
        assert row["upstreams"]["ere"]["waiting"] == 1

        with client(appliance) as http:
            [point] = http.get("/api/charge-points").json()
            assert point["upstreams"]["billing"]["connected"] is True
            page = http.get("/cp/UP-S").text
            overview = http.get("/").text
        for html in (page, overview):
            shown_there = re.search(r'data-field="upstreams">([^<]*)<', html)
            assert shown_there, html
            text = shown_there.group(1).replace("&#39;", "'")
            assert text.startswith("billing: connected · ere: not connected (cannot connect")
            assert text.endswith(", 1 waiting"), text

    asyncio.run(session16(appliance.url, "UP-S", scenario))
    # the charge point left: neither upstream is connected for it any more
    conftest.wait_for(
        lambda: (found := upstreams_of(appliance, "UP-S")) and not found["billing"]["connected"],
        15,
        "billing disconnected",
    )
    up.stop()


def test_without_an_upstream_the_column_is_null(start_appliance):
    appliance = start_appliance()

    async def scenario(cp: Any) -> None:
        await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))

    asyncio.run(session16(appliance.url, "NO-UP", scenario))
    appliance.wait_rows("SELECT 1 FROM charge_point_status WHERE identity = 'NO-UP'")
    assert upstreams_of(appliance, "NO-UP") is None
    shown = conftest.run_cli("status", "--config", str(appliance.folder / "appliance.toml"))
    assert "upstream" not in shown.stdout
    with client(appliance) as http:
        assert 'data-field="upstreams"' not in http.get("/cp/NO-UP").text
        assert http.get("/api/charge-points/NO-UP").json()["upstreams"] is None


def test_home_assistant_shows_whether_every_upstream_is_connected():
    """The discovery entity, its template rendered as Home Assistant does (a sandboxed
    Jinja2 with `from_json`) on what the bridge publishes (the column's JSON text)."""
    configs = discovery("ocpp-appliance", "homeassistant", "GARAGE", "GARAGE", {})
    [config] = [c for topic, c in configs.items() if topic.endswith("/upstreams/config")]
    assert config["state_topic"] == "ocpp-appliance/GARAGE/upstreams"
    assert config["json_attributes_topic"] == "ocpp-appliance/GARAGE/upstreams"
    env = SandboxedEnvironment()
    env.filters["from_json"] = json.loads
    template = env.from_string(config["value_template"])

    def state(payload: str) -> str:
        return template.render(value=payload).strip()

    both = {"a": {"connected": True}, "b": {"connected": True}}
    one = {"a": {"connected": True}, "b": {"connected": False}}
    assert state(json.dumps(both)) == "ON"
    assert state(json.dumps(one)) == "OFF"
    assert state("") == "None"  # no upstream: unknown
