"""`/healthz` on the web port (README "A big site on several processes"): 200 `ok` while
the process takes charge points and writes its database, 503 with the reason while it
cannot — the load balancer's health check. Through a real `serve` and real HTTP."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
from test_web_api import web_config
from websockets.sync.client import ClientConnection, connect

from appliance.store.migrations import BUSY_TIMEOUT_MS
from conftest import Appliance, in_process_server, wait_for


def healthz(appliance: Appliance, **kwargs: str) -> httpx.Response:
    url = f"http://127.0.0.1:{appliance.web_port}/healthz"
    return httpx.get(url, timeout=10, headers=kwargs)


def heartbeat(ws: ClientConnection, number: int) -> None:
    """One Heartbeat, answered: the charge point keeps sending while the test waits."""
    ws.send(json.dumps([2, f"h{number}", "Heartbeat", {}]))
    assert json.loads(ws.recv())[0] == 3


def test_ok_without_a_login_and_without_a_cookie(start_appliance):
    # a dashboard password and an API token are set: /healthz needs neither
    appliance = start_appliance(web_config(password=True))
    answer = healthz(appliance)
    assert answer.status_code == 200
    assert answer.text == "ok"
    assert answer.headers["content-type"].startswith("text/plain")
    # answered before the session and CSRF layers: a check every 2 s sets no cookie
    assert "set-cookie" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"
    # the API itself still wants its login
    api = httpx.get(f"http://127.0.0.1:{appliance.web_port}/api/charge-points/X/frames")
    assert api.status_code == 401


def test_503_while_the_database_is_locked_for_long_and_ok_again_after(start_appliance):
    appliance = start_appliance()
    with connect(f"{appliance.url}/LOCKED", subprotocols=["ocpp1.6"]) as ws:
        heartbeat(ws, 0)
        assert healthz(appliance).status_code == 200
        # another program (a user's sqlite3 shell) holds the write lock
        locker = sqlite3.connect(appliance.db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        sent = iter(range(1, 10_000))

        def refused() -> httpx.Response | None:
            heartbeat(ws, next(sent))  # answered on, whatever the database does
            time.sleep(0.2)
            answer = healthz(appliance)
            return answer if answer.status_code == 503 else None

        answer = wait_for(refused, 30, "/healthz 503 while the database is locked")
        # not at the first wait for the lock: once the writer gave up its commit
        assert time.monotonic() - locked_at >= BUSY_TIMEOUT_MS / 1000 - 0.5
        assert answer.text == "database writer failing: database is locked"
        assert "\n" not in answer.text
        assert answer.headers["retry-after"] == "2"
        locker.execute("COMMIT")
        locker.close()
        wait_for(lambda: healthz(appliance).status_code == 200, 15, "/healthz 200 again")
        # what was answered meanwhile was written after all
        appliance.wait_rows(
            "SELECT 1 FROM messages WHERE identity = 'LOCKED' AND action = 'Heartbeat'"
            " AND direction = 'in'",
            count=next(sent) - 1,
        )
    assert appliance.stop() == 0


def test_503_at_max_connections_and_ok_again_below(start_appliance):
    appliance = start_appliance("[limits]\nmax_connections = 2\n")
    with connect(f"{appliance.url}/FIRST", subprotocols=["ocpp1.6"]) as first:
        heartbeat(first, 1)
        assert healthz(appliance).status_code == 200
        with connect(f"{appliance.url}/SECOND", subprotocols=["ocpp1.6"]) as second:
            heartbeat(second, 1)
            answer = healthz(appliance)
            assert answer.status_code == 503
            assert answer.text == "connection limit reached (2 of max_connections = 2)"
        wait_for(lambda: healthz(appliance).status_code == 200, 10, "/healthz 200 again")


async def test_not_ready_once_the_listener_stops(tmp_path):
    from appliance.app import unready

    async with in_process_server(tmp_path) as appliance:
        server = appliance.server
        assert unready(server, server.store) is None
        await server.shutdown()
        assert unready(server, server.store) == "the OCPP listener is not accepting connections"
