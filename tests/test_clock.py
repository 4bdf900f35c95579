"""A clock that jumps (issue 27, point 2), through the real interfaces: `ocpp-appliance
serve` as a subprocess, the `ocpp` package as charge point, the database read through a
connection of our own, the dashboard over HTTP.

The clock is moved the way the appliance allows it for tests, never by mocking its parts:
`$OCPP_APPLIANCE_TEST_CLOCK` names a file the running process reads whenever it changes,
with `offset_sec` (added to the system's clock: a step is a new offset) and
`synchronised` (what the system would say about its clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from conftest import ROOT, Appliance, wait_for

SEAM_ENV = "OCPP_APPLIANCE_TEST_CLOCK"
DAY = 86_400
#: the step forward of a Pi that was off for two days and three hours, at its NTP sync
FORWARD = 2 * DAY + 3 * 3600
#: a step back by three hours (an administrator's correction)
BACK = 3 * 3600
CLOCKLESS_START = "1970-01-01T00:01:00.000Z"
CLOCKLESS_STOP = "1970-01-01T00:03:00.000Z"


class ClockFile:
    """The file the appliance's clock follows (`$OCPP_APPLIANCE_TEST_CLOCK`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self.set(0, True)

    def set(self, offset_sec: float, synchronised: bool) -> None:
        self.offset = offset_sec
        text = f"offset_sec = {offset_sec}\nsynchronised = {str(synchronised).lower()}\n"
        partial = self.path.with_suffix(".partial")
        partial.write_text(text)
        os.replace(partial, self.path)  # the appliance never reads half a file

    def now(self) -> float:
        """What the appliance's wall clock says now."""
        return time.time() + self.offset


@pytest.fixture
def test_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClockFile:
    """A test clock at offset 0, synchronised; appliances started afterwards follow it."""
    found = ClockFile(tmp_path / "clock.toml")
    monkeypatch.setenv(SEAM_ENV, str(found.path))
    return found


def iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def log_count(appliance: Appliance, text: str) -> int:
    return sum(text in line for line in appliance.log().splitlines())


async def logged(appliance: Appliance, text: str, timeout: float = 10) -> None:
    """Wait (without blocking the charge points' event loop) until `text` is logged."""
    deadline = time.monotonic() + timeout
    while text not in appliance.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"not logged: {text!r}\n{appliance.log()}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def charge_point(url: str, identity: str, version: str) -> Any:
    """An `ocpp` package ChargePoint connected to the appliance, its reader running."""
    if version == "ocpp1.6":
        from ocpp.v16 import ChargePoint
    else:
        from ocpp.v201 import ChargePoint
    async with websockets.connect(f"{url}/{identity}", subprotocols=[version]) as ws:
        cp = ChargePoint(identity, ws, response_timeout=10)
        reader = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(scenario())


def page(appliance: Appliance, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{appliance.web_port}{path}", timeout=10) as r:
        return str(r.read().decode())


def durations(html_text: str) -> list[str]:
    """The session table's duration cells of a charge point's page, as text."""
    cells = re.findall(r'<td class="duration">(.*?)</td>', html_text, re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells]


def short(text: str) -> bool:
    """A duration of seconds or minutes: the dashboard writes "42 s", "12 min"."""
    return re.fullmatch(r"(running for )?\d+ (s|min)", text) is not None


# ----------------------------------------------------------------- a clock that steps


def test_a_step_is_logged_once_and_sessions_spanning_it_keep_their_duration(
    test_clock, start_appliance
):
    """The clock steps forward by 2 d 3 h (NTP after two days off), later back by 3 h,
    while two sessions run: one of a charge point with a good clock, one of a clockless
    one (1970, README "`transactions`": its duration is the appliance's). The log says
    each step once; both sessions are minutes long, on the dashboard too; the frames
    keep their order in `seq` although their `ts` went back."""
    from ocpp.v16 import call

    appliance = start_appliance()
    real_start = time.time()

    async def scenario() -> dict[str, Any]:
        answers: dict[str, Any] = {}
        async with (
            charge_point(appliance.url, "STEP-GOOD", "ocpp1.6") as good,
            charge_point(appliance.url, "STEP-1970", "ocpp1.6") as clockless,
        ):
            for cp in (good, clockless):
                await cp.call(
                    call.BootNotification(charge_point_vendor="Step", charge_point_model="T"),
                    suppress=False,
                )
            started = {}
            for cp, when in ((good, iso(time.time())), (clockless, CLOCKLESS_START)):
                answer = await cp.call(
                    call.StartTransaction(
                        connector_id=1, id_tag="TAG", meter_start=1000, timestamp=when
                    ),
                    suppress=False,
                )
                started[cp.id] = answer.transaction_id
            answers["before"] = await good.call(call.Heartbeat(), suppress=False)

            test_clock.set(FORWARD, True)
            await logged(appliance, "the clock stepped forward by 2 d 3 h")
            answers["after"] = await good.call(call.Heartbeat(), suppress=False)
            # the running session, as the dashboard shows it now
            answers["running"] = await asyncio.to_thread(page, appliance, "/cp/STEP-1970")

            for cp, when in ((good, iso(time.time())), (clockless, CLOCKLESS_STOP)):
                await cp.call(
                    call.StopTransaction(
                        meter_stop=4000, timestamp=when, transaction_id=started[cp.id]
                    ),
                    suppress=False,
                )
            test_clock.set(FORWARD - BACK, True)
            await logged(appliance, "the clock stepped back by 3 h")
            await good.call(call.Heartbeat(), suppress=False)
            await clockless.call(call.Heartbeat(), suppress=False)
        return answers

    answers = run(scenario)

    # synchronised: currentTime is the appliance's clock, before and after the step
    assert abs(seconds(answers["before"].current_time) - real_start) < 60
    assert abs(seconds(answers["after"].current_time) - (real_start + FORWARD)) < 60

    sessions = appliance.wait_rows(
        "SELECT identity, started_at, stopped_at, received_at, updated_at, time_suspect"
        " FROM transactions WHERE stopped_at IS NOT NULL ORDER BY identity",
        count=2,
    )
    (clockless_row, good_row) = sessions
    identity, _, _, received, updated, suspect = clockless_row
    assert (identity, suspect) == ("STEP-1970", 1)
    # the appliance's clock measured it: the step is not part of it
    assert 0 <= updated - received < 10 * 60 * 1000, (received, updated)
    # ... and the start is on the clock as it is now (moved by the step)
    assert received >= (real_start + FORWARD - 60) * 1000
    identity, started_at, stopped_at, received, updated, suspect = good_row
    assert (identity, suspect) == ("STEP-GOOD", 0)
    assert 0 <= seconds(stopped_at) - seconds(started_at) < 10 * 60
    assert 0 <= updated - received < 10 * 60 * 1000

    # what a user sees: minutes, not days, while it ran and once it ended
    running = answers["running"]
    assert "running for" in running
    assert all(short(d) for d in durations(running) if d != "-"), durations(running)
    ended = durations(page(appliance, "/cp/STEP-1970"))
    assert ended and short(ended[0]), ended

    # frames: `seq` is the order they crossed the wire; `ts` is the clock, which went back
    # (the last Heartbeat's answer, after the step back, may land a commit later)
    def stored() -> list[tuple]:
        return appliance.query(
            "SELECT seq, ts, payload FROM messages WHERE identity = 'STEP-GOOD' ORDER BY seq"
        )

    wait_for(lambda: [1 for _, _, p in stored() if json.loads(p)[0] == 3][5:], 10, "6 answers")
    frames = stored()
    stamps = [ts for _, ts, _ in frames]
    jumps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(jumps) > (FORWARD - 60) * 1000  # the step forward is in the history
    assert min(jumps) < -(BACK - 60) * 1000  # and the step back
    assert stamps != sorted(stamps)  # ordering by ts would mix the frames up
    calls = [json.loads(p)[2] for _, _, p in frames if json.loads(p)[0] == 2]
    assert calls == [
        "BootNotification",
        "StartTransaction",
        "Heartbeat",
        "Heartbeat",
        "StopTransaction",
        "Heartbeat",
    ]

    # each step is said once, with how far; nothing else looks like one
    assert log_count(appliance, "the clock stepped forward by 2 d 3 h") == 1
    assert log_count(appliance, "the clock stepped back by 3 h") == 1
    assert log_count(appliance, "the clock stepped") == 2
    assert appliance.stop() == 0


# ------------------------------------------------------------ an unsynchronised clock


def test_an_unsynchronised_clock_teaches_the_newest_time_it_knows(test_clock, start_appliance):
    """A Pi without a real-time clock: its previous run ended at T0; it boots three days
    behind, unsynchronised. Its BootNotification answers are not three days behind (its
    last run says later), a charge point's clock two hours ahead is the newest time it
    knows, and once NTP steps the clock and the system says it is synchronised, the next
    Heartbeat carries the real time. The rows keep the appliance's own clock."""
    from ocpp.v16 import call as call16
    from ocpp.v201 import call as call201

    first = start_appliance(name="pi")

    async def earlier_run() -> None:
        async with charge_point(first.url, "PI-16", "ocpp1.6") as cp:
            await cp.call(
                call16.BootNotification(charge_point_vendor="Pi", charge_point_model="T"),
                suppress=False,
            )

    run(earlier_run)
    assert first.stop() == 0
    t0 = time.time()

    test_clock.set(-3 * DAY, False)
    appliance = start_appliance(name="pi")
    assert "clock: the system says its clock is not synchronised" in appliance.log()
    ahead = seconds(iso(time.time() + 2 * 3600))  # to the millisecond, as the charge point says it

    async def scenario() -> dict[str, Any]:
        answers: dict[str, Any] = {}
        async with charge_point(appliance.url, "PI-16", "ocpp1.6") as cp16:
            answers["boot"] = await cp16.call(
                call16.BootNotification(charge_point_vendor="Pi", charge_point_model="T"),
                suppress=False,
            )
            async with charge_point(appliance.url, "PI-201", "ocpp2.0.1") as cp201:
                await cp201.call(
                    call201.BootNotification(
                        charging_station={"model": "T", "vendor_name": "Pi"}, reason="PowerUp"
                    ),
                    suppress=False,
                )
                await cp201.call(
                    call201.StatusNotification(
                        timestamp=iso(ahead),
                        connector_status="Available",
                        evse_id=1,
                        connector_id=1,
                    ),
                    suppress=False,
                )
                answers["learnt"] = await cp201.call(call201.Heartbeat(), suppress=False)
            answers["16-learnt"] = await cp16.call(call16.Heartbeat(), suppress=False)

            test_clock.set(0, True)  # NTP answers: the clock steps forward, synchronised
            await logged(appliance, "the clock stepped forward by 3 d")
            await logged(appliance, "clock: the system's clock is synchronised now")
            answers["synced"] = await cp16.call(call16.Heartbeat(), suppress=False)
        return answers

    answers = run(scenario)
    real = time.time()
    boot = seconds(answers["boot"].current_time)
    assert t0 - 1 <= boot <= real + 1, (t0, boot, real)  # not three days behind
    assert seconds(answers["learnt"].current_time) >= ahead  # the newest time it saw
    assert seconds(answers["16-learnt"].current_time) >= ahead
    assert abs(seconds(answers["synced"].current_time) - real) < 60  # the real time

    # the rows are stamped with the appliance's own clock, three days behind then
    boots = appliance.query(
        "SELECT ts FROM messages WHERE identity = 'PI-16' AND action = 'BootNotification'"
        " AND direction = 'in' ORDER BY seq"
    )
    assert len(boots) == 2
    assert abs(boots[1][0] / 1000 - (real - 3 * DAY)) < 120
    assert appliance.stop() == 0


# --------------------------------------------------------------------------- retention


def test_retention_does_not_delete_what_a_step_forward_made_look_old(test_clock, start_appliance):
    """`messages_keep_days = 1`; the clock steps forward by 2 d 3 h. Retention's first
    pass (a minute after the start) deletes what is older than a day by the time that
    really passed — a frame of two days ago — but not the frames of a minute ago that the
    step made look two days old. It says how far behind the clock it counts."""
    from websockets.sync.client import connect

    # (TEST_CONFIG ends in [storage])
    appliance = start_appliance("messages_keep_days = 1\n")
    with contextlib.closing(sqlite3.connect(appliance.db, timeout=10)) as db, db:
        db.execute(
            "INSERT INTO messages (ts, identity, direction, payload) VALUES (?, 'OLD', 'in', '[]')",
            (int((time.time() - 2 * DAY) * 1000),),
        )
    with connect(f"{appliance.url}/KEEP", subprotocols=["ocpp1.6"]) as ws:
        for n in range(3):
            ws.send(json.dumps([2, str(n), "Heartbeat", {}]))
            ws.recv()
    kept = appliance.wait_rows("SELECT seq FROM messages WHERE identity = 'KEEP'", count=6)
    test_clock.set(FORWARD, True)
    wait_for(lambda: "the clock stepped forward by 2 d 3 h" in appliance.log(), 10, "the step")

    stored = wait_for(
        lambda: appliance.query("SELECT value FROM meta WHERE key = 'retention_clock_ms'"),
        120,
        "retention's first pass",
    )
    # the pass ran (it stores its clock first, then deletes): the frame of two days ago
    # is gone ...
    wait_for(
        lambda: appliance.query("SELECT count(*) FROM messages WHERE identity = 'OLD'") == [(0,)],
        30,
        "the frame of two days ago deleted",
    )
    # ... the frames of a minute ago are kept, although the clock says 2 d 3 h later
    assert appliance.query("SELECT seq FROM messages WHERE identity = 'KEEP'") == kept
    assert stored[0][0] / 1000 < test_clock.now() - 2 * DAY
    assert "database: retention counts age from" in appliance.log()
    assert appliance.stop() == 0


PRUNE = """
import sys
from pathlib import Path
from appliance.store import Retention, Store, connect
store = Store(Path(sys.argv[1]), 50, Retention(messages_days=1))
print(store.prune(connect(Path(sys.argv[1]))))
"""


def prune_in_a_new_process(db: Path, clock_file: Path) -> int:
    """What the first retention pass of a new start deletes (a process of its own)."""
    env = {**os.environ, SEAM_ENV: str(clock_file), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PRUNE, str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.split()[-1])


@pytest.fixture
def history(tmp_path: Path) -> Iterator[Path]:
    """A database whose previous run left retention's clock ten days back (a step it
    did not count), with frames of five days ago."""
    from appliance.store import Store, connect

    path = tmp_path / "appliance.db"
    store = Store(path, 50)
    store.open()
    store.close()
    now = time.time()
    with contextlib.closing(connect(path)) as db, db:
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('retention_clock_ms', ?)",
            (int((now - 10 * DAY) * 1000),),
        )
        # three frames of five days ago, and one of now (the newest row always stays)
        db.executemany(
            "INSERT INTO messages (ts, identity, direction, payload) VALUES (?, 'CP', 'in', '[]')",
            [(int((now - 5 * DAY) * 1000),)] * 3 + [(int(now * 1000),)],
        )
    yield path


def test_a_start_with_an_unsynchronised_clock_ages_nothing_retention_did_not_count(
    history, test_clock
):
    """An unsynchronised start continues retention's clock where the previous run left
    it; a synchronised one takes the system's clock."""
    test_clock.set(0, False)
    assert prune_in_a_new_process(history, test_clock.path) == 0
    test_clock.set(0, True)
    assert prune_in_a_new_process(history, test_clock.path) == 3
