"""A big site on several processes sharing one PostgreSQL (issue 23; README "A big site on
several processes"): 1.6 transaction ids two processes hand out never collide; a session
started on one process and stopped on another is one session in PostgreSQL; a process
killed behind HAProxy: its charge points boot again on the other, presence and central
commands follow them. Real `serve` processes, Debian's PostgreSQL and HAProxy,
`ocpp-appliance simulate` and raw OCPP-J charge points."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

from pg import needs_postgres
from test_central import central
from test_central_commands import command, done
from websockets.exceptions import InvalidHandshake
from websockets.sync.client import connect

import conftest

pytestmark = needs_postgres


def granted(appliance: conftest.Appliance, timeout: float = 20) -> list[list[int]]:
    """The blocks of transaction ids PostgreSQL granted the process, once it has one."""
    query = "SELECT value FROM meta WHERE key = 'transaction_id_grants'"
    rows = conftest.wait_for(lambda: appliance.query(query), timeout, "a block of ids")
    used = "transaction ids: from PostgreSQL's block"
    conftest.wait_for(lambda: used in appliance.log(), timeout, "the block in use")
    return json.loads(rows[0][0])


class Charger:
    """A 1.6 charge point on a raw WebSocket: one CALL at a time, answers by id."""

    def __init__(self, url: str, identity: str, retry_s: float = 0) -> None:
        """Connected; through a load balancer that has not noticed a dead process yet,
        retried for up to `retry_s` as a charge point's reconnect loop would."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                opened = connect(f"{url}/{identity}", subprotocols=["ocpp1.6"], open_timeout=10)
                break
            except (OSError, InvalidHandshake):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.ws = opened.__enter__()  # closed by close()
        self.count = 0

    def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        message_id = str(self.count)
        self.ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            frame = json.loads(self.ws.recv(timeout=20))
            if frame[0] == 3 and frame[1] == message_id:
                return frame[2]
            if frame[0] == 2:  # a call of the appliance's (GetConfiguration): answered empty
                self.ws.send(json.dumps([3, frame[1], {}]))

    def boot(self) -> None:
        answer = self.call(
            "BootNotification", {"chargePointVendor": "Test", "chargePointModel": "Big"}
        )
        assert answer["status"] == "Accepted"

    def start(self, meter_start: int, connector: int = 1) -> int:
        answer = self.call(
            "StartTransaction",
            {"connectorId": connector, "idTag": "TAG", "meterStart": meter_start,
             "timestamp": "2026-12-05T08:00:00Z"},
        )  # fmt: skip
        return int(answer["transactionId"])

    def close(self) -> None:
        self.ws.close()


def test_two_processes_never_hand_out_the_same_transaction_id(start_appliance, postgres):
    """Two processes of one site hand out 1.6 transaction ids at the same time, from 32-bit
    blocks PostgreSQL grants each; after a `kill -9` and a restart, none comes again."""
    database = postgres.database()
    extra = central(postgres, database, "depot")
    one, two = start_appliance(extra, name="one"), start_appliance(extra, name="two")
    blocks = granted(one) + granted(two)
    ranges = sorted(map(tuple, blocks))
    assert all(end <= first for (_, end), (first, _) in itertools.pairwise(ranges)), ranges
    found: dict[str, list[int]] = {"one": [], "two": []}

    def starts(appliance: conftest.Appliance, name: str, base: int) -> None:
        charger = Charger(appliance.url, f"{name.upper()}-{base}")
        charger.boot()
        for n in range(25):
            found[name].append(charger.start(base + n * 10))
        charger.close()

    threads = [
        threading.Thread(target=starts, args=(appliance, name, base))
        for appliance, name in ((one, "one"), (two, "two"))
        for base in (1000, 5000)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = found["one"] + found["two"]
    assert len(ids) == 100 and len(set(ids)) == 100, sorted(ids)
    assert all(0 < i < 2**31 for i in ids)
    for name, appliance in (("one", one), ("two", two)):  # each from its own blocks
        held = granted(appliance)
        assert all(any(a <= i < b for a, b in held) for i in found[name]), (held, found[name])
    # a kill -9 and a restart: the ids handed out before are never handed out again
    os.kill(one.proc.pid, signal.SIGKILL)
    one.proc.wait()
    again = conftest.start_appliance_process(one.folder)
    try:
        charger = Charger(again.url, "ONE-AGAIN")
        charger.boot()
        later = [charger.start(9000 + n) for n in range(5)]
        charger.close()
    finally:
        again.proc.terminate()
        again.proc.wait(30)
    assert not set(later) & set(ids), (later, sorted(found["one"]))


def test_a_session_stopped_on_another_process_is_one_session(start_appliance, postgres):
    """A charge point starts a session on one process, which dies (`kill -9`); it
    reconnects to another and stops the session there: the stop is answered, and
    PostgreSQL holds one session with its start, its stop and its energy."""
    database = postgres.database()
    extra = central(postgres, database, "garage")
    one, two = start_appliance(extra, name="one"), start_appliance(extra, name="two")
    granted(one)
    charger = Charger(one.url, "MOVER")
    charger.boot()
    transaction = charger.start(10_000)
    query = (
        "SELECT count(*) FROM transactions WHERE site = 'garage' AND identity = 'MOVER'"
        " AND meter_start_wh = 10000"
    )
    conftest.wait_for(lambda: postgres.sql(query, database)[0][0] == 1, 20, "the start")
    os.kill(one.proc.pid, signal.SIGKILL)
    one.proc.wait()
    charger = Charger(two.url, "MOVER")
    charger.boot()
    answer = charger.call(
        "StopTransaction",
        {"transactionId": transaction, "meterStop": 17_500, "timestamp": "2026-12-05T09:00:00Z",
         "idTag": "TAG", "reason": "EVDisconnected"},
    )  # fmt: skip
    charger.close()
    assert answer["idTagInfo"]["status"] == "Accepted"
    stopped = (
        "SELECT transaction_id, started_at, stopped_at, meter_start_wh, meter_stop_wh,"
        " energy_wh, stop_reason FROM transactions WHERE site = 'garage'"
        " AND identity = 'MOVER' AND stopped_at IS NOT NULL"
    )
    rows = conftest.wait_for(lambda: postgres.sql(stopped, database), 20, "the stop")
    assert rows == [
        (str(transaction), "2026-12-05T08:00:00Z", "2026-12-05T09:00:00Z", 10_000.0, 17_500.0,
         7_500.0, "EVDisconnected"),
    ]  # fmt: skip
    assert postgres.sql("SELECT count(*) FROM transactions WHERE identity = 'MOVER'", database) == [
        (1,)
    ]


def test_a_killed_process_behind_haproxy_hands_its_charge_points_to_the_other(
    site, haproxy, postgres
):
    """Two processes of one site behind HAProxy, 20 simulated charge points with their
    reconnect loops and one that is mid-session: the process holding it is killed with
    `kill -9`. Every charge point it held boots again on the other within seconds, the
    session ends there and is one session in PostgreSQL with its start, stop and energy,
    presence says the other process, and a command from the centre reaches a moved
    charge point there."""
    from haproxy import PROXY_FROM

    database = postgres.database()
    with site.config.open("a") as config:
        config.write(central(postgres, database, "yard") + PROXY_FROM)
    one, two = site.start(1), site.start(2)
    proxy = haproxy([(one.port, one.web_port), (two.port, two.web_port)])
    proxy.wait_for("p1", "UP")
    proxy.wait_for("p2", "UP")
    granted(one), granted(two)
    fleet = subprocess.Popen(
        [*conftest.appliance_command(), "simulate", "--url", proxy.url, "--count", "20",
         "--identity-prefix", "Y", "--protocol", "mix", "--speed", "30", "--duration", "120"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        charger = Charger(proxy.url, "MOVER")
        charger.boot()
        transaction = charger.start(2_000)
        conftest.wait_for(lambda: len(held_by(one) | held_by(two)) == 21, 30, "all 21 connected")
        held = {1: held_by(one), 2: held_by(two)}
        victim = 1 if "MOVER" in held[1] else 2
        dead, alive = (one, two) if victim == 1 else (two, one)
        moving = held[victim] - {"MOVER"}
        assert moving, held  # the victim holds some of the 20 as well
        started = "SELECT count(*) FROM transactions WHERE identity = 'MOVER'"
        conftest.wait_for(lambda: postgres.sql(started, database) == [(1,)], 20, "the start")
        os.kill(dead.proc.pid, signal.SIGKILL)
        dead.proc.wait()
        killed_at = time.monotonic()
        charger = Charger(proxy.url, "MOVER", retry_s=30)
        charger.boot()
        answer = charger.call(
            "StopTransaction",
            {"transactionId": transaction, "meterStop": 9_000,
             "timestamp": "2026-12-05T10:00:00Z", "reason": "Local"},
        )  # fmt: skip
        assert answer == {}  # 1.6: idTagInfo only when an idTag was sent
        conftest.wait_for(lambda: "MOVER" in held_by(alive), 10, "MOVER on the other")
        conftest.wait_for(lambda: moving <= booted_on(alive), 60, "the moved charge points")
        took = time.monotonic() - killed_at
        stopped = (
            "SELECT count(*), min(meter_start_wh), min(meter_stop_wh), min(energy_wh),"
            " min(stop_reason) FROM transactions WHERE site = 'yard' AND identity = 'MOVER'"
            " AND stopped_at IS NOT NULL"
        )
        rows = conftest.wait_for(
            lambda: postgres.sql(stopped, database)[0][0] and postgres.sql(stopped, database),
            20, "the stop",
        )  # fmt: skip
        assert rows == [(1, 2_000.0, 9_000.0, 7_000.0, "Local")]
        assert postgres.sql(started, database) == [(1,)]
        where = "SELECT process FROM presence WHERE site = 'yard' AND identity = %r"
        for identity in [*sorted(moving)[:3], "MOVER"]:
            conftest.wait_for(
                lambda i=identity: postgres.sql(where % i, database)
                and postgres.sql(where % i, database)[0][0].endswith(f":{alive.port}"),
                45, f"{identity}'s presence on the other process",
            )  # fmt: skip
        moved = sorted(moving)[0]
        number = command(postgres, database, "yard", moved, "control.availability", "0")
        taken_by, ok, _, error = done(postgres, database, number)
        assert (taken_by.endswith(f":{alive.port}"), ok, error) == (True, True, None)
        charger.close()
    finally:
        fleet.kill()
        fleet.wait()
    print(f"the killed process's {len(moving)} charge points booted again in {took:.1f} s")


def held_by(process: conftest.Appliance) -> set[str]:
    """The charge points connected to the process now (its connection log)."""
    rows = process.query(
        "SELECT identity FROM connection_log AS c WHERE seq = (SELECT max(seq) FROM"
        " connection_log WHERE identity = c.identity) AND event = 'connect'"
    )
    return {identity for (identity,) in rows}


def booted_on(process: conftest.Appliance) -> set[str]:
    rows = process.query(
        "SELECT DISTINCT identity FROM messages WHERE action = 'BootNotification'"
        " AND direction = 'in'"
    )
    return {identity for (identity,) in rows}
