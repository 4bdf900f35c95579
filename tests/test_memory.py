"""What issue 21's memory levers could break: schemas compiled on first use (every one
still compiles, a fresh appliance still refuses bad frames of every version with that
version's code), the dashboard built with its first connection (it answers; a stop
before any frees its port), the retried calls the hub remembers, the CLI's list of
simulator protocols, the task that gives memory back after a peak, and a closed
connection's station freed without waiting for a garbage collection."""

from __future__ import annotations

import gc
import json
import socket
import weakref
from collections import Counter

import httpx
import pytest
import trio
from websockets.sync.client import connect

from appliance import app
from appliance.rpc import DIALECTS, Fault, SchemaSet
from appliance.rpc.validation import schema_root
from appliance.station.hub import REMEMBERED_CALLS, Stations
from conftest import in_process_server

BOOT = {
    "ocpp1.6": ("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}),
    "ocpp2.0.1": (
        "BootNotification",
        {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}},
    ),
    "ocpp2.1": (
        "BootNotification",
        {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}},
    ),
}


@pytest.mark.parametrize("version", list(DIALECTS))
def test_every_schema_compiles_on_demand(version: str) -> None:
    """Nothing is compiled at start; a check compiles its own schema; every file of the
    version compiles (a broken one would otherwise show only when a peer first uses it)."""
    schemas = SchemaSet(DIALECTS[version])
    assert schemas.compiled == 0
    action, payload = BOOT[version]
    assert schemas.check_request(action, payload) is None
    assert schemas.compiled == 1
    violation = schemas.check_request(action, {})
    assert violation is not None and violation.fault is Fault.OCCURRENCE
    schemas.compile_all()
    files = [e for e in (schema_root() / DIALECTS[version].schema_folder).iterdir()]
    assert schemas.compiled == len([e for e in files if e.name.endswith(".json")])
    # compiled earlier or later, a check says the same
    assert schemas.check_request(action, {}) == violation


@pytest.mark.parametrize("version", list(DIALECTS))
async def test_a_fresh_appliance_refuses_a_bad_frame_with_the_versions_code(
    tmp_path, version: str
) -> None:
    strict = '[charge_points."CP"]\nvalidation = "strict"\n'
    async with in_process_server(tmp_path, strict) as running:

        def charge_point() -> list:
            with connect(f"{running.url}/CP", subprotocols=[version]) as ws:
                ws.send(json.dumps([2, "1", BOOT[version][0], {}]))
                return json.loads(ws.recv())

        answer = await trio.to_thread.run_sync(charge_point)
    assert answer[:3] == [4, "1", DIALECTS[version].error_code(Fault.OCCURRENCE)]


async def test_a_closed_connections_station_is_freed_at_once(tmp_path) -> None:
    """Without a garbage collection (in the field the collector's oldest generation runs
    rarely): after a charge point disconnects and another comes and goes, nothing keeps
    the first one's station, its session and its connection's buffers."""
    async with in_process_server(tmp_path) as running:

        def charge_point(identity: str) -> weakref.ref:
            with connect(f"{running.url}/{identity}", subprotocols=["ocpp1.6"]) as ws:
                ws.send(json.dumps([2, "1", *BOOT["ocpp1.6"]]))
                ws.recv()
                return weakref.ref(running.stations[identity])

        async def visit(identity: str) -> weakref.ref:
            station = await trio.to_thread.run_sync(charge_point, identity)
            with trio.fail_after(10):
                while identity in running.stations:
                    await trio.sleep(0.01)
            await trio.sleep(0.2)  # every subscriber has had the Disconnected event
            return station

        gc.disable()
        try:
            first = await visit("GONE-1")
            await visit("GONE-2")
            assert first() is None
        finally:
            gc.enable()


def _tasks() -> list[str]:
    """The names of every task of the running appliance (the test's own included)."""
    names: list[str] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        names.append(task.name)
        pending.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return names


async def test_an_idle_connection_runs_no_command_worker(tmp_path) -> None:
    """Issue 21: a charge point's command worker runs only while it has commands (the
    tests of controls and readings give it some), and its calls' timer only while a call
    waits for its answer; an idle connection is its handler and its keep-alive."""
    async with in_process_server(tmp_path) as running:
        before = _tasks()

        frames: list = []

        def charge_point(ready: trio.Event, done: trio.Event) -> None:
            with connect(f"{running.url}/IDLE", subprotocols=["ocpp1.6"]) as ws:
                ws.send(json.dumps([2, "1", *BOOT["ocpp1.6"]]))
                frames.append(json.loads(ws.recv()))
                ws.send(json.dumps([2, "2", "Heartbeat", {}]))
                frames.append(json.loads(ws.recv()))
                trio.from_thread.run_sync(ready.set)
                trio.from_thread.run(done.wait)

        ready, done = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, charge_point, ready, done)
            await ready.wait()
            await trio.sleep(0.2)
            added = (Counter(_tasks()) - Counter(before)).elements()
            done.set()
    assert [frame[:2] for frame in frames] == [[3, "1"], [3, "2"]]
    assert sorted(name.rsplit(".", 1)[-1] for name in added) == [
        "_handle",
        "keep_alive",
        "run_sync",
    ]


async def test_the_dashboard_is_built_with_its_first_connection(tmp_path) -> None:
    from appliance import config as configuration
    from appliance.app import running

    path = tmp_path / "appliance.toml"
    path.write_text(
        'host = "127.0.0.1"\nport = 0\ndatabase = "appliance.db"\n'
        '[web]\nhost = "127.0.0.1"\nport = 0\n'
    )
    config = configuration.load(str(path))
    async with running(config) as appliance:
        assert appliance.dashboard.app is None
        url = f"http://127.0.0.1:{appliance.dashboard.port}"
        first = await trio.to_thread.run_sync(lambda: httpx.get(f"{url}/api/charge-points"))
        assert first.status_code == 200 and first.json() == []
        assert appliance.dashboard.app is not None
    # stopped before anyone connected: the port is free again at once
    async with running(config) as appliance:
        port = appliance.dashboard.port
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_the_hub_remembers_the_latest_retried_calls() -> None:
    hub = Stations.__new__(Stations)
    hub._applied = {}
    assert not hub.repeated("CP1", "MeterValues", "a")
    assert hub.repeated("CP1", "MeterValues", "a")
    assert not hub.repeated("CP1", "StatusNotification", "a")  # another action
    assert not hub.repeated("CP2", "MeterValues", "a")  # another charge point
    # "a" seen again every REMEMBERED_CALLS // 2 calls stays; the oldest others are
    # forgotten a batch at a time (domain/recent.py): never fewer than REMEMBERED_CALLS,
    # at most a quarter more
    sizes = []
    many = 3 * REMEMBERED_CALLS
    for n in range(many):
        assert not hub.repeated("CP1", "MeterValues", str(n))
        if n % (REMEMBERED_CALLS // 2) == 0:
            assert hub.repeated("CP1", "MeterValues", "a")
        sizes.append(len(hub._applied["CP1"]))
    assert min(sizes[REMEMBERED_CALLS:]) >= REMEMBERED_CALLS
    assert max(sizes) <= REMEMBERED_CALLS * 5 // 4
    newest = [str(n) for n in range(many - REMEMBERED_CALLS + 1, many)]
    assert all(hub.repeated("CP1", "MeterValues", text) for text in newest)
    assert hub.repeated("CP1", "MeterValues", "a")
    assert not hub.repeated("CP1", "MeterValues", "0")  # the oldest: forgotten


def test_simulate_offers_the_simulators_protocols() -> None:
    from appliance.cli import PROTOCOL_CHOICES
    from appliance.simulator import PROTOCOL_CHOICES as SIMULATOR_CHOICES

    assert PROTOCOL_CHOICES == SIMULATOR_CHOICES


async def test_memory_goes_back_once_a_peak_is_over(monkeypatch, autojump_clock) -> None:
    mb = 1 << 20
    # RSS and CPU seconds at start, then at each look (and right after each trim)
    rss = iter([30, 60, 90, 90, 70, 70, 71, 90, 60])
    cpu = iter([0.0, 20.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0, 40.0])
    looks: list[float] = []

    def resident_bytes() -> int:
        looks.append(trio.current_time())
        return next(rss) * mb

    monkeypatch.setattr(app, "resident_bytes", resident_bytes)
    monkeypatch.setattr(app.time, "process_time", lambda: next(cpu))
    trims: list[float] = []
    with trio.move_on_after(app.TRIM_SEC * 6 + 1):
        await app.give_back_memory(lambda pad: trims.append(looks[-1]) or 1)
    # growing while busy: nothing; the first quiet look after the peak: trimmed; back to
    # 70 MB, then 71: no new peak; 90 MB again: trimmed
    assert trims == [app.TRIM_SEC * 3, app.TRIM_SEC * 6]


def test_malloc_trim_is_there_or_not() -> None:
    trim = app.malloc_trim()
    if trim is not None:  # glibc
        assert trim(0) in (0, 1)
