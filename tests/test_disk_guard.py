"""The disk guard (README "Storage design", issue 27 point 4) on a small file system of
its own: a tmpfs with a size limit holds the database, a ballast file takes the space
away and gives it back, a real `ocpp-appliance serve` writes, and a charge point of the
`ocpp` package (1.6) sends a transaction with meter values.

Below `[storage] min_free_disk_mb` the frames of MeterValues, Heartbeat and
StatusNotification are not stored, below half of it the payload states (`….raw`,
`.data.*`) neither; transactions, meter values and the other states always are. The
guard says so in the log (once per change), `ocpp-appliance status`, `/api/status` and a
200 of `/healthz`, and lifts by itself. A disk that is really full (SQLITE_FULL) does
not stop the appliance: it answers on, keeps the rows in memory, and writes them once
there is space again.

Mounting a tmpfs needs root: the tests are skipped without it, and fail instead under
CI (which runs as root: README "Tests"), so that they cannot silently not run there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_interop import run_ocpp_charge_point

import conftest
from appliance.store.disk import MB, PAYLOAD_STATE, Level, free_bytes, level_for
from conftest import Appliance, end, launch, run_cli, wait_for

#: the small file system, and the floor the appliance keeps on it
DISK_MB = 64
FLOOR_MB = 16
IDENTITY = "DISKY"


# ------------------------------------------------------------------ the file system


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB mounted for this test alone."""
    where = tmp_path / "disk"
    where.mkdir()
    reason = None
    if shutil.which("mount") is None:
        reason = "no mount(8) on this machine"
    else:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            reason = f"mounting a tmpfs needs root: {mounted.stderr.strip()}"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must run the disk guard's tests: {reason}")
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def ballast(disk: Path) -> Path:
    return disk / "ballast"


def leave_free(disk: Path, megabytes: float) -> None:
    """Grow or shrink the ballast file until about `megabytes` stay free."""
    path = ballast(disk)
    have = path.stat().st_size if path.exists() else 0
    free = free_bytes(disk)
    assert free is not None
    size = max(0, have + free - int(megabytes * MB))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if size < have:
            os.ftruncate(fd, size)
        elif size > have:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def fill(disk: Path) -> None:
    """Take every byte that is left: the ballast grows until the file system says no."""
    leave_free(disk, 1)
    with ballast(disk).open("ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


# ------------------------------------------------------------------ the appliance


def start(tmp_path: Path, disk: Path) -> Appliance:
    folder = tmp_path / "appliance"
    folder.mkdir()
    database = disk / "appliance.db"
    text = conftest.test_config("")
    text = text.replace('database = "appliance.db"', f'database = "{database}"')
    text = text.replace("[storage]\n", f"[storage]\nmin_free_disk_mb = {FLOOR_MB}\n")
    config = folder / "appliance.toml"
    config.write_text(text)
    return launch(["--config", str(config)], folder / "server.log", database=str(database))


def api_status(appliance: Appliance) -> dict[str, Any]:
    answer = httpx.get(f"http://127.0.0.1:{appliance.web_port}/api/status", timeout=10)
    assert answer.status_code == 200
    return answer.json()


def healthz(appliance: Appliance) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{appliance.web_port}/healthz", timeout=10)


def cli_status(appliance: Appliance) -> str:
    config = appliance.log_file.parent / "appliance.toml"
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return result.stdout


def guard_is(appliance: Appliance, level: str) -> dict[str, Any]:
    return wait_for(
        lambda: (found := api_status(appliance))["disk"]["guard"] == level and found,
        20,
        f"the disk guard at {level!r}",
    )


def frames(appliance: Appliance, *actions: str, after: int = 0) -> list[tuple]:
    marks = ",".join("?" * len(actions))
    return appliance.query(
        f"SELECT direction, action FROM messages WHERE action IN ({marks}) AND seq > ?"
        " ORDER BY seq",
        *actions,
        after,
    )


def newest_frame(appliance: Appliance) -> int:
    return appliance.query("SELECT coalesce(max(seq), 0) FROM messages")[0][0]


def payload_state(appliance: Appliance, action: str) -> Any:
    """The `.raw` state of the latest call of `action` (README "`states` and `objects`")."""
    rows = appliance.query(
        "SELECT val FROM states WHERE id LIKE ?", f"%.ocpp.ocpp1_6.in.{action}.raw"
    )
    return json.loads(rows[0][0]) if rows else None


def connector_status(appliance: Appliance) -> Any:
    rows = appliance.query("SELECT val FROM states WHERE id LIKE '%.connector.1.status'")
    return rows[0][0] if rows else None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meter_value(wh: float) -> dict[str, Any]:
    return {
        "timestamp": now_iso(),
        "sampled_value": [
            {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "7400", "measurand": "Power.Active.Import", "unit": "W"},
        ],
    }


async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A check that waits (time.sleep) without stopping the charge point's own loop."""
    return await asyncio.to_thread(lambda: fn(*args, **kwargs))


def run_charge_point(appliance: Appliance, scenario: Any) -> Any:
    from ocpp.v16 import ChargePoint

    result, _, _ = asyncio.run(
        run_ocpp_charge_point(f"{appliance.url}/{IDENTITY}", "ocpp1.6", ChargePoint, scenario)
    )
    return result


# ------------------------------------------------------------------------ the tests


def test_the_levels_and_their_hysteresis():
    """The guard's arithmetic, as the README states it: on below the floor (frames),
    below half of it (and the payload states); each step lifts a quarter of the floor
    above where it began."""
    floor = 100 * MB
    off, frames_, leaves = Level.OFF, Level.FRAMES, Level.LEAVES
    assert level_for(101 * MB, floor, off) is off
    assert level_for(99 * MB, floor, off) is frames_
    assert level_for(110 * MB, floor, frames_) is frames_  # not yet 125
    assert level_for(125 * MB, floor, frames_) is off
    assert level_for(49 * MB, floor, off) is leaves
    assert level_for(70 * MB, floor, leaves) is leaves  # not yet 75
    assert level_for(80 * MB, floor, leaves) is frames_
    assert level_for(0, 0, off) is off  # min_free_disk_mb = 0: no guard
    assert PAYLOAD_STATE.search("GARAGE.ocpp.ocpp1_6.in.MeterValues.data.meterValue.0.x")
    assert PAYLOAD_STATE.search("GARAGE.ocpp.ocpp2_0_1.out.Reset.response")
    assert not PAYLOAD_STATE.search("GARAGE.meterValues.power")
    assert not PAYLOAD_STATE.search("GARAGE.connector.1.status")


def test_below_the_floor_frames_then_payload_states_wait_and_everything_resumes(
    tmp_path, small_disk
):
    from ocpp.v16 import call

    appliance = start(tmp_path, small_disk)
    checks: dict[str, Any] = {}

    async def scenario(cp: Any) -> None:
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        await cp.call(call.Heartbeat())
        # plenty of space: everything is stored, the guard is off everywhere
        await blocking(
            appliance.wait_rows, "SELECT 1 FROM messages WHERE action = 'Heartbeat'", count=2
        )
        checks["off"] = api_status(appliance)
        checks["healthz off"] = healthz(appliance).text
        checks["cli off"] = await blocking(cli_status, appliance)

        # ---- below the floor: the frames of the high-rate actions are not stored
        await blocking(leave_free, small_disk, FLOOR_MB - 4)
        checks["frames"] = await blocking(guard_is, appliance, "frames")
        after = newest_frame(appliance)
        await cp.call(call.StatusNotification(1, "NoError", "Preparing"))
        await cp.call(call.Heartbeat())
        start = await cp.call(call.StartTransaction(1, "TAG", 1000, now_iso()), suppress=False)
        tid = start.transaction_id
        for wh in (1500, 2000, 2500):
            await cp.call(call.MeterValues(1, [meter_value(wh)], transaction_id=tid))
        await cp.call(call.StatusNotification(1, "NoError", "Charging"))
        await cp.call(call.StopTransaction(3000, now_iso(), tid, id_tag="TAG"))
        # the stop's answer is among the last rows queued: what came before is written
        await blocking(
            appliance.wait_rows,
            "SELECT 1 FROM messages WHERE action = 'StopTransaction' AND direction = 'out'",
        )
        await blocking(wait_for, lambda: connector_status(appliance) == "Charging")
        checks["frames kept"] = frames(
            appliance, "StartTransaction", "StopTransaction", after=after
        )
        checks["frames dropped"] = frames(
            appliance, "MeterValues", "Heartbeat", "StatusNotification", after=after
        )
        checks["transaction"] = appliance.query(
            "SELECT meter_start_wh, meter_stop_wh, energy_wh FROM transactions"
            " WHERE transaction_id = ?",
            str(tid),
        )
        checks["meter values"] = appliance.query(
            "SELECT value FROM meter_values WHERE measurand = 'Energy.Active.Import.Register'"
            " ORDER BY seq"
        )
        checks["raw at frames"] = payload_state(appliance, "MeterValues")
        checks["healthz frames"] = healthz(appliance)
        checks["cli frames"] = await blocking(cli_status, appliance)

        # ---- below half the floor: the payload states wait too
        await blocking(leave_free, small_disk, FLOOR_MB / 2 - 3)
        checks["leaves"] = await blocking(guard_is, appliance, "leaves")
        await cp.call(call.MeterValues(1, [meter_value(4242)]))
        await cp.call(call.StatusNotification(1, "NoError", "Finishing"))
        await blocking(appliance.wait_rows, "SELECT 1 FROM meter_values WHERE value = 4242")
        await blocking(wait_for, lambda: connector_status(appliance) == "Finishing")
        checks["raw at leaves"] = payload_state(appliance, "MeterValues")

        # ---- space again: the guard lifts by itself, everything is stored again
        after = newest_frame(appliance)
        ballast(small_disk).unlink()
        checks["lifted"] = await blocking(guard_is, appliance, "off")
        await cp.call(call.MeterValues(1, [meter_value(5000)]))
        await cp.call(call.Heartbeat())
        await blocking(
            appliance.wait_rows,
            "SELECT 1 FROM messages WHERE action = 'Heartbeat' AND direction = 'out' AND seq > ?",
            after,
        )
        checks["frames again"] = frames(appliance, "MeterValues", "Heartbeat", after=after)
        checks["raw again"] = await blocking(
            wait_for,
            lambda: (raw := payload_state(appliance, "MeterValues")) and "5000" in str(raw) and raw,
        )
        checks["healthz again"] = healthz(appliance).text

    run_charge_point(appliance, scenario)

    # off at first: said nowhere but /api/status
    assert checks["off"]["disk"]["guard"] == "off"
    assert checks["off"]["disk"]["min_free_disk_mb"] == FLOOR_MB
    assert checks["off"]["healthz"] == "ok" and checks["off"]["database"] == "ok"
    assert checks["healthz off"] == "ok"
    assert "disk" not in checks["cli off"]

    # step 1: the frames of the high-rate actions, nothing else
    assert checks["frames"]["disk"]["free_mb"] < FLOOR_MB
    assert "MeterValues" in checks["frames"]["disk"]["not_stored"]
    assert checks["frames dropped"] == []
    assert checks["frames kept"] == [
        ("in", "StartTransaction"),
        ("out", "StartTransaction"),
        ("in", "StopTransaction"),
        ("out", "StopTransaction"),
    ]
    assert checks["transaction"] == [(1000.0, 3000.0, 2000.0)]
    assert [v for (v,) in checks["meter values"]] == [1500.0, 2000.0, 2500.0]
    assert "2500" in json.dumps(checks["raw at frames"])  # payload states still written
    answer = checks["healthz frames"]
    assert answer.status_code == 200  # the guard is no reason to move charge points
    assert answer.text.startswith("ok; disk guard on: ")
    assert "not storing the frames of Heartbeat, MeterValues, StatusNotification" in answer.text
    assert "\n" not in answer.text
    assert f"below [storage] min_free_disk_mb = {FLOOR_MB}" in checks["cli frames"]
    assert "disk guard on" in checks["cli frames"]

    # step 2: the payload states too; readings and other states still flow
    assert checks["leaves"]["disk"]["guard"] == "leaves"
    assert "payload states" in checks["leaves"]["disk"]["not_stored"]
    assert "4242" not in json.dumps(checks["raw at leaves"])
    assert "2500" in json.dumps(checks["raw at leaves"])

    # lifted: everything again
    # not stored meanwhile: 2 StatusNotification, a Heartbeat and 3 MeterValues at step 1,
    # a MeterValues and a StatusNotification at step 2; each call and its answer
    dropped = checks["lifted"]["disk"]["dropped"]
    assert dropped["frames"] == 16
    assert dropped["states"] > 0
    assert checks["frames again"] == [
        ("in", "MeterValues"),
        ("out", "MeterValues"),
        ("in", "Heartbeat"),
        ("out", "Heartbeat"),
    ]
    assert checks["healthz again"] == "ok"

    assert appliance.stop() == 0
    log = appliance.log()
    said = [line for line in log.splitlines() if "disk guard" in line]
    assert len(said) == 3, said  # once per change: on, further, off
    assert "disk guard on: " in said[0] and "below [storage]" in said[0]
    assert "below half of [storage]" in said[1]
    assert "disk guard off" in said[2]
    assert "not stored while it was on: " in said[2]


def test_a_full_disk_stops_nothing_and_loses_nothing_that_fits_again(tmp_path, small_disk):
    from ocpp.v16 import call

    appliance = start(tmp_path, small_disk)
    seen: dict[str, Any] = {}
    sent: list[int] = []

    async def scenario(cp: Any) -> None:
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        await blocking(appliance.wait_rows, "SELECT 1 FROM messages WHERE direction = 'out'")
        await blocking(fill, small_disk)
        start = await cp.call(call.StartTransaction(1, "TAG", 1000, now_iso()), suppress=False)
        seen["tid"] = tid = start.transaction_id
        # readings until a commit needs a page the file system no longer has
        wh = 1000
        while True:
            wh += 10
            answer = await cp.call(
                call.MeterValues(1, [meter_value(wh)], transaction_id=tid), suppress=False
            )
            assert answer is not None  # answered, whatever the database does
            sent.append(wh)
            if healthz(appliance).status_code == 503 or len(sent) > 2000:
                break
            await asyncio.sleep(0.02)
        seen["healthz"] = healthz(appliance)
        seen["status"] = api_status(appliance)
        seen["cli"] = await blocking(cli_status, appliance)
        stop = await cp.call(call.StopTransaction(wh + 500, now_iso(), tid), suppress=False)
        seen["stop"] = stop
        # space again: what waited in memory is written
        ballast(small_disk).unlink()
        await blocking(wait_for, lambda: healthz(appliance).status_code == 200, 30, "200")
        await blocking(
            appliance.wait_rows,
            "SELECT 1 FROM transactions WHERE meter_stop_wh IS NOT NULL",
        )

    run_charge_point(appliance, scenario)

    answer = seen["healthz"]
    assert answer.status_code == 503, (len(sent), answer.text)
    assert answer.text == "database writer failing: database or disk is full"
    assert seen["status"]["database"] == "failing: database or disk is full"
    assert seen["status"]["disk"]["guard"] == "leaves"
    assert "disk full: 0 MB free" in seen["cli"]

    # nothing that fits again was lost: the session and every reading
    tid = seen["tid"]
    assert appliance.query(
        "SELECT meter_start_wh, meter_stop_wh FROM transactions WHERE transaction_id = ?",
        str(tid),
    ) == [(1000.0, float(sent[-1] + 500))]
    stored = appliance.query(
        "SELECT value FROM meter_values WHERE measurand = 'Energy.Active.Import.Register'"
        " ORDER BY seq"
    )
    assert [v for (v,) in stored] == [float(wh) for wh in sent]

    assert appliance.stop() == 0
    log = appliance.log()
    assert "database: cannot write (database or disk is full: 0 MB free in " in log
    assert "they are written once there is space again (nothing is lost up to" in log
    assert "database: writing again (database or disk is full cleared)" in log
    with contextlib.closing(sqlite3.connect(appliance.db)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    end(appliance.proc)
