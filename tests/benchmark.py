"""Load benchmark: prints numbers, asserts nothing (machines are shared and noisy).

N charge points (OCPP 1.6) boot, then send MeterValues back to back, one CALL in flight
each. Each server runs pinned to CPU 0, the load on CPU 1. For every server and N it
prints calls/s, p50/p99 latency, the server's CPU µs per call, its RSS, the bytes it
wrote to disk per 1 000 calls beside the bytes of the frames themselves, and how much the
database grew; then the appliance's CPU per call as a ratio of the others measured in
the same run.

    python tests/benchmark.py                            # the appliance alone
    python tests/benchmark.py --shared ../shared/bench   # plus the echo ceilings and
                                                         # the ocpp-package peer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import websockets

METER_VALUES = {
    "connectorId": 1,
    "transactionId": 1,
    "meterValue": [
        {
            "timestamp": "2026-11-24T10:00:00Z",
            "sampledValue": [
                {"value": "12345", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": "55", "measurand": "SoC", "unit": "Percent"},
                {"value": "10.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                {"value": "10.2", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                {"value": "10.3", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
            ],
        }
    ],
}
BOOT = {"chargePointVendor": "Bench", "chargePointModel": "Load"}


# ------------------------------------------------------------------------ the load


async def _charge_point(
    url: str,
    index: int,
    stop_at: float,
    latencies: list,
    errors: list,
    pace: float,
    wire: list,
    offset: float = 0.0,
):
    async with websockets.connect(f"{url}/LOAD{index}", subprotocols=["ocpp1.6"]) as ws:
        counter = 0

        async def call(action: str, payload: dict) -> float:
            nonlocal counter
            counter += 1
            message_id = f"{index}-{counter}"
            started = time.perf_counter()
            frame = json.dumps([2, message_id, action, payload])
            await ws.send(frame)
            while True:
                text = await ws.recv()
                answer = json.loads(text)
                if answer[0] != 2:
                    break
                # a call from the central system (it asks for the configuration after a
                # boot): a load generator is no real charger and says so
                await ws.send(json.dumps([4, answer[1], "NotImplemented", "load generator", {}]))
            wire.append(len(frame) + len(text))
            if answer[0] != 3 or answer[1] != message_id:
                errors.append(answer)
            return time.perf_counter() - started

        await call("BootNotification", BOOT)
        # paced: each charge point at its own point of the interval, as wallboxes booted
        # at different times are (with a 60 s interval they would otherwise all share
        # one commit)
        await asyncio.sleep(pace * offset)
        sample = json.loads(json.dumps(METER_VALUES))
        while time.perf_counter() < stop_at:
            # every message a new sample, as a wallbox sends them (an exact repeat would
            # be taken as a retry and applied once)
            sample["meterValue"][0]["timestamp"] = (
                f"2026-11-24T10:00:{counter % 60:02d}.{counter:06d}Z"
            )
            took = await call("MeterValues", sample)
            latencies.append(took)
            if pace:
                await asyncio.sleep(max(0.0, pace - took))


class _Ended(list):
    """Latencies that also remember when each call ended (for --timeline)."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[float] = []

    def append(self, took: float) -> None:
        super().append(took)
        self.ended.append(time.perf_counter())


def timeline(load_latencies: _Ended, slice_sec: float = 0.1) -> dict:
    """Where the slowest 1 % of calls ended: spread over the run, or bunched in a few
    slices (a stall that holds many connections at once), from the first answer (the
    connects and boots before it are not timed). Slices in which no call ended count
    too, with none."""
    pairs = list(zip(load_latencies.ended, load_latencies, strict=True))
    start = min(load_latencies.ended)
    p99 = sorted(load_latencies)[int(0.99 * len(pairs))]
    answers: list[int] = []
    slowest: list[int] = []
    for ended, took in pairs:
        index = int((ended - start) / slice_sec)
        while len(answers) <= index:
            answers.append(0)
            slowest.append(0)
        answers[index] += 1
        slowest[index] += took >= p99
    bunched = [(round(i * slice_sec, 1), n) for i, n in enumerate(slowest) if n]
    return {
        "slices": len(answers),
        "slices_without_answers": answers.count(0),
        "slices_holding_the_slowest_1pct": len(bunched),
        "slowest_1pct_by_slice_s": bunched,
        "fewest_answers_in_a_slice": min(answers),
    }


async def _load(
    url: str, count: int, duration: float, pace: float = 0.0, latencies: list | None = None
) -> dict:
    latencies = [] if latencies is None else latencies
    errors: list = []
    wire: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _charge_point(url, i, started + duration, latencies, errors, pace, wire, i / count)
            for i in range(count)
        )
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)  # not in place: --timeline pairs them with their ends

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "n": count,
        "calls": len(latencies),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantile(0.5), 3) if latencies else None,
        "p99_ms": round(quantile(0.99), 3) if latencies else None,
        "errors": len(errors),
        "frame_bytes_per_1000_calls": round(sum(wire) * 1000 / max(len(wire), 1)),
    }


def _simulator_load(url: str, count: int, duration: float) -> dict:
    """The same load driven by `ocpp-appliance simulate --load` (mixed into the row: the
    simulator's own CPU per call)."""
    import resource

    script = Path(sys.executable).with_name("ocpp-appliance")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "appliance"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*_pin(1), *command, "simulate", "--url", url, "--count", str(count), "--load",
         "--duration", str(duration), "--json", "--identity-prefix", "LOAD"],
        capture_output=True, text=True, timeout=duration + 120,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"simulate failed: {done.stderr.strip()}")
    summary = json.loads(done.stdout)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "n": count,
        "calls": summary["calls"],
        "calls_per_s": summary["calls_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": summary["max_ms"],
        "errors": sum(summary["errors"].values()),
        "reconnects": summary["reconnects"],
        "simulator_cpu_us_per_call": round(cpu * 1e6 / max(summary["calls"], 1), 1),
    }


# ---------------------------------------------------------------------- measuring


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _written_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not start")


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


def _size(database: Path | None) -> int:
    if database is None:
        return 0
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*"))


def _checkpoint(database: Path) -> None:
    """Copy what the WAL holds into the database from a connection of our own: what the
    history left is then not written by the measured calls (at a 60 s pace that alone
    would double the bytes a call)."""
    with closing(sqlite3.connect(database, timeout=10)) as connection:
        for _ in range(50):  # busy while a commit runs: try again
            if not connection.execute("PRAGMA wal_checkpoint(FULL)").fetchone()[0]:
                return
            time.sleep(0.1)


#: where a thread waits rather than works: py-spy can count a sleeping thread as active
#: (trio's idle worker thread on its lock, the writer on its condition, the event loop
#: in epoll with nothing ready)
WAITS = ("Condition.wait (", "Event.wait (", "WorkerThread._work (", "get_events (")


def _spy(pid: int, seconds: float, raw: Path) -> subprocess.Popen | None:
    """py-spy sampling the server for `seconds` (None where py-spy is not installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print(json.dumps({"profile": "skipped: py-spy not installed (pip install py-spy)"}))
        return None
    command = [spy, "record", "--threads", "-r", "250", "-f", "raw", "-o", str(raw)]
    command += ["-d", str(max(1, int(seconds))), "-p", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def profile_summary(raw: Path, top: int = 15) -> dict:
    """A py-spy raw (collapsed) profile as each thread's share of the working samples and
    the functions that spend most of them themselves (their lines added up)."""
    threads: dict[str, int] = {}
    functions: dict[str, int] = {}
    working = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or frames[-1].startswith(WAITS):
            continue
        n = int(count)
        working += n
        thread = frames[0].partition("): ")[2] or frames[0]
        threads[thread] = threads.get(thread, 0) + n
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        functions[leaf] = functions.get(leaf, 0) + n

    def share(n: int) -> float:
        return round(100 * n / max(working, 1), 1)

    ranked = sorted(functions.items(), key=lambda item: -item[1])[:top]
    return {
        "samples": working,
        "threads_pct": {t: share(n) for t, n in sorted(threads.items(), key=lambda i: -i[1])},
        "self_pct": [[share(n), function] for function, n in ranked],
    }


def _profiled(name: str, pid: int, url: str, count: int, duration: float, pace: float) -> None:
    """The same load once more with py-spy attached (sampling slows the server a little:
    not in the figures above), and what it found."""
    raw = Path(tempfile.mkdtemp(prefix="ocpp-spy-")) / "profile.raw"
    try:
        spy = _spy(pid, duration, raw)
        if spy is None:
            return
        asyncio.run(_load(url, count, duration, pace))
        try:
            _, error = spy.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, error = spy.communicate()
        if raw.exists():
            print(json.dumps({"profile": name, "n": count, **profile_summary(raw)}), flush=True)
        else:  # e.g. not allowed to attach (ptrace): py-spy says why
            print(json.dumps({"profile": name, "failed": error.strip()[-300:]}), flush=True)
    finally:
        shutil.rmtree(raw.parent, ignore_errors=True)


def measure(
    name: str,
    command: list[str],
    port: int,
    counts: list[int],
    duration: float,
    pace: float = 0,
    database: Path | None = None,
    simulator: bool = False,
    env: dict[str, str] | None = None,
    history: float = 0,
    profile: int | None = None,  # the count after whose measure py-spy samples a rerun
) -> list:
    server = subprocess.Popen(_pin(0) + command, stderr=subprocess.DEVNULL, env=env)
    results = []
    try:
        _wait_port(port)
        if hasattr(os, "sched_setaffinity") and shutil.which("taskset"):
            os.sched_setaffinity(0, {1})
        for count in counts:
            if history:
                # the same charge points first send back to back, unmeasured: the tables
                # and their per-identity indexes then hold history of each of them, as
                # after days of use (a fresh file's first pages are shared by all)
                asyncio.run(_load(f"ws://127.0.0.1:{port}", count, history))
                time.sleep(2)  # its last commit
                if database is not None:
                    _checkpoint(database)
            cpu0, disk0 = _cpu_seconds(server.pid), _written_bytes(server.pid)
            size0 = _size(database)
            url = f"ws://127.0.0.1:{port}"
            if simulator:
                load = _simulator_load(url, count, duration)
            else:
                load = asyncio.run(_load(url, count, duration, pace))
            cpu1, disk1 = _cpu_seconds(server.pid), _written_bytes(server.pid)
            calls = max(load["calls"], 1)
            row = {
                "server": name,
                **load,
                "server_cpu_us_per_call": round((cpu1 - cpu0) * 1e6 / calls, 1),
                "rss_kb": _rss_kb(server.pid),
            }
            if disk0 is not None and disk1 is not None:
                row["disk_bytes_per_1000_calls"] = round((disk1 - disk0) * 1000 / calls)
            if database is not None:
                time.sleep(1.5)  # the last commit
                row["db_growth_bytes_per_call"] = round((_size(database) - size0) / calls)
            print(json.dumps(row), flush=True)
            results.append(row)
            if count == profile:
                _profiled(name, server.pid, url, count, duration, pace)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return results


def store_throughput(seconds: float = 5.0) -> dict:
    """How many meter_values rows (plus their messages and states) the writer commits
    per second, fed as fast as the event loop would feed it."""
    from appliance.store import Store
    from appliance.tree import Tree
    from appliance.versions import v16

    folder = Path(tempfile.mkdtemp(prefix="ocpp-store-"))
    store = Store(folder / "s.db", 1000)
    opened = store.open()
    tree = Tree(store, opened)
    frame = json.dumps([2, "1", "MeterValues", METER_VALUES])
    from appliance.domain import MeterSample
    from appliance.store import FrameRow, now_ms
    from appliance.versions import VERSIONS, Context

    ctx = Context("CP", "ocpp1.6", 60, None)  # type: ignore[arg-type]
    readings = v16.readings(ctx, METER_VALUES["meterValue"])
    del VERSIONS

    started = time.perf_counter()
    messages = 0
    while time.perf_counter() - started < seconds:
        for cp in range(10):
            identity = f"CP{cp}"
            store.put(
                FrameRow(now_ms(), identity, "ocpp1.6", "in", 2, "1", "MeterValues", frame, None)
            )
            tree.apply(identity, MeterSample(1, 1, "1", readings))
            messages += 1
        while store._queue.qsize() > 20_000:  # keep memory bounded: wait for the writer
            time.sleep(0.01)
    store.close()
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "store_messages_per_s": round(messages / elapsed),
        "store_meter_rows_per_s": round(messages * len(readings) / elapsed),
    }


async def _controls(url: str, database: Path, pid: int, idle_seconds: float, writes: int) -> dict:
    """Idle CPU with 10 charge points connected, then the time from a database write to
    the CALL arriving at the charge point."""
    import sqlite3

    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def charge_point(index: int, stop: asyncio.Event) -> None:
        async with websockets.connect(f"{url}/IDLE{index}", subprotocols=["ocpp1.6"]) as ws:
            await ws.send(json.dumps([2, "b", "BootNotification", BOOT]))
            await ws.recv()
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                frame = json.loads(text)
                if frame[0] == 2:
                    arrived.put_nowait(time.perf_counter())
                    await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))

    stop = asyncio.Event()
    tasks = [asyncio.create_task(charge_point(i, stop)) for i in range(10)]
    await asyncio.sleep(3)  # connected, control defaults written
    cpu0 = _cpu_seconds(pid)
    await asyncio.sleep(idle_seconds)
    idle_percent = (_cpu_seconds(pid) - cpu0) / idle_seconds * 100
    while not arrived.empty():  # the calls after boot (fetch_on_boot) are not ours
        arrived.get_nowait()
    db = sqlite3.connect(database, timeout=10)
    latencies = []
    for i in range(writes):
        started = time.perf_counter()
        with db:
            db.execute(
                "UPDATE states SET val = ?, ack = 0 WHERE id = 'IDLE0.control.availability'",
                (i % 2,),
            )
        latencies.append(await asyncio.wait_for(arrived.get(), 30) - started)
        await asyncio.sleep(0.05)
    db.close()
    stop.set()
    await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "idle_cpu_percent_10_cps": round(idle_percent, 2),
        "write_to_call_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "write_to_call_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
    }


def simulated_days(days: int, charge_points: int = 10, interval_s: int = 60) -> dict:
    """Database size after `days` of `charge_points` sending one MeterValues (6 sampled
    values) every `interval_s`, written through the real store with simulated clocks;
    then after retention (messages 7 days instead of the default 30)."""
    from appliance.store import Retention, Store, connect
    from appliance.store.sql import INSERT_MESSAGE

    folder = Path(tempfile.mkdtemp(prefix="ocpp-days-"))
    path = folder / "days.db"
    store = Store(path, 1000, Retention(messages_days=30, meter_values_days=365))
    store.open()
    store.close()
    db = connect(path)
    frame_in = json.dumps([2, "a" * 36, "MeterValues", METER_VALUES], separators=(",", ":"))
    frame_out = json.dumps([3, "a" * 36, {}])
    readings = METER_VALUES["meterValue"][0]["sampledValue"]
    start = int(time.time() * 1000) - days * 86_400_000
    step = interval_s * 1000
    for day in range(days):
        messages, meters = [], []
        for minute in range(0, 86_400_000, step):
            ts = start + day * 86_400_000 + minute
            for cp in range(charge_points):
                identity = f"CP{cp}"
                for direction, frame in (("in", frame_in), ("out", frame_out)):
                    messages.append(
                        (
                            ts,
                            identity,
                            "ocpp1.6",
                            direction,
                            2,
                            "a" * 36,
                            "MeterValues",
                            frame,
                            None,
                        )
                    )
                for r in readings:
                    meters.append(
                        (identity, 1, 1, "1", "2026-11-24T10:00:00Z", r["measurand"],
                         r.get("phase"), None, None, r["unit"], float(r["value"]), ts, 0)
                    )  # fmt: skip
        with db:
            db.executemany(INSERT_MESSAGE, messages)
            db.executemany(
                "INSERT INTO meter_values (identity, evse_id, connector_id, transaction_id,"
                " sampled_at, measurand, phase, location, context, unit, value, received_at,"
                " time_suspect) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                meters,
            )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = path.stat().st_size
    store.retention = Retention(messages_days=7, meter_values_days=365)
    while store.prune(db):
        pass
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pruned = path.stat().st_size
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    per_cp_day = full / days / charge_points
    return {
        "days": days,
        "charge_points": charge_points,
        "meter_interval_s": interval_s,
        "db_mb_keep_all_30d": round(full / 1e6, 1),
        "db_mb_messages_7d": round(pruned / 1e6, 1),
        "growth_kb_per_cp_per_day": round(per_cp_day / 1000, 1),
    }


def write_lock_probe(database: Path, stop: threading.Event, waits: list[float]) -> None:
    """Another writer, as a user's script would be: how long must it wait for the lock?"""
    import sqlite3

    db = sqlite3.connect(database, timeout=30, isolation_level=None)
    while not stop.is_set():
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        waits.append(time.perf_counter() - started)
        db.execute("COMMIT")
        time.sleep(0.02)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", default="1,10,100", help="charge point counts (default 1,10,100)")
    parser.add_argument("--duration", type=float, default=6, help="seconds per measurement")
    parser.add_argument("--shared", help="../shared/bench: add its echo ceiling and ocpp peer")
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also measure the appliance of another checkout (e.g. `git worktree add` of the"
        " commit before a change), side by side in the same run",
    )
    parser.add_argument(
        "--node-modules",
        default="/tmp/rpc/node_modules",
        help="with --shared: where `npm install --prefix /tmp/rpc ocpp-rpc@2.2.1` put ocpp-rpc"
        " for the Node peer (skipped if absent)",
    )
    parser.add_argument(
        "--store", action="store_true", help="only measure the rows per second the store sustains"
    )
    parser.add_argument(
        "--days", type=int, help="only measure the database size after DAYS of 10 charge points"
    )
    parser.add_argument(
        "--write-lock",
        action="store_true",
        help="only measure the longest wait of another writer under load (100 charge points)",
    )
    parser.add_argument(
        "--controls",
        action="store_true",
        help="only measure idle CPU with 10 charge points and write-to-CALL latency",
    )
    parser.add_argument(
        "--paced",
        type=float,
        default=0,
        metavar="SECONDS",
        help="each charge point sends one MeterValues every SECONDS instead of back to back, "
        "each at its own point of the interval (e.g. -n 10 --paced 1 --duration 60 for the "
        "disk-write measure)",
    )
    parser.add_argument(
        "--history",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement the same charge points send back to back for SECONDS,"
        " unmeasured, so the database holds history of each as after days of use (e.g. -n 10"
        " --history 30 --paced 1 --duration 120: the disk-write measure in the steady state)",
    )
    parser.add_argument(
        "--simulator",
        action="store_true",
        help="drive the load with `ocpp-appliance simulate --load` (adds its CPU per call)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the largest count's measure, the same load again with py-spy attached to"
        " the appliance (and --before's): each thread's share and the functions that spend"
        " the most (needs py-spy)",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="only the appliance, back to back: where in time the slowest 1 %% of calls ended"
        " (by 100 ms slices)",
    )
    parser.add_argument(
        "--commit-interval-ms",
        type=int,
        metavar="MS",
        help='the appliance\'s commit_interval_ms (README "Configuration"; default its own)',
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.n.split(",")]
    if args.store:
        print(json.dumps(store_throughput(args.duration)))
        return
    if args.days:
        print(json.dumps(simulated_days(args.days)))
        return

    folder = Path(tempfile.mkdtemp(prefix="ocpp-bench-"))
    config = folder / "appliance.toml"
    # fetch_on_boot off: the load generator answers no configuration requests
    config.write_text(
        f'host = "127.0.0.1"\nport = {args.port}\ndatabase = "bench.db"\n'
        + (
            f"[storage]\ncommit_interval_ms = {args.commit_interval_ms}\n"
            if args.commit_interval_ms
            else ""
        )
        + "[device_model]\nfetch_on_boot = false\n"
    )
    script = Path(sys.executable).with_name("ocpp-appliance")
    appliance = [str(script)] if script.exists() else [sys.executable, "-m", "appliance"]
    if args.write_lock:
        server = subprocess.Popen([*appliance, "serve", "--config", str(config)])
        try:
            _wait_port(args.port)
            stop, waits = threading.Event(), []
            probe = threading.Thread(
                target=write_lock_probe, args=(folder / "bench.db", stop, waits)
            )
            probe.start()
            load = asyncio.run(_load(f"ws://127.0.0.1:{args.port}", 100, args.duration))
            stop.set()
            probe.join()
            waits.sort()
            print(json.dumps({
                **load,
                "other_writer_waits": len(waits),
                "other_writer_wait_p50_ms": round(waits[len(waits) // 2] * 1000, 1),
                "other_writer_wait_max_ms": round(waits[-1] * 1000, 1),
            }))  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        return
    if args.timeline:
        server = subprocess.Popen(
            [*_pin(0), *appliance, "serve", "--config", str(config)], stderr=subprocess.DEVNULL
        )
        try:
            _wait_port(args.port)
            if hasattr(os, "sched_setaffinity") and shutil.which("taskset"):
                os.sched_setaffinity(0, {1})
            ended = _Ended()
            url = f"ws://127.0.0.1:{args.port}"
            load = asyncio.run(_load(url, counts[-1], args.duration, latencies=ended))
            print(json.dumps({**load, **timeline(ended)}))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        return
    if args.controls:
        server = subprocess.Popen([*appliance, "serve", "--config", str(config)])
        try:
            _wait_port(args.port)
            url = f"ws://127.0.0.1:{args.port}"
            print(json.dumps(asyncio.run(_controls(url, folder / "bench.db", server.pid, 10, 200))))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        return

    servers: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("appliance", [*appliance, "serve", "--config", str(config)], None)
    ]
    if args.before:
        before = folder / "before"
        before.mkdir()
        (before / "appliance.toml").write_text(
            config.read_text().replace(f"port = {args.port}", f"port = {args.port + 10}")
            + "[web]\nport = 9081\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())}
        command = [sys.executable, "-m", "appliance", "serve", "--config"]
        servers.append(("appliance_before", [*command, str(before / "appliance.toml")], env))
    if args.shared:
        shared = Path(args.shared)
        # the same core behind websockets' own trio server: the transport decision
        # (README "Architecture") measured inside the appliance
        library = Path(__file__).with_name("serve_on_websockets_trio.py")
        python = sys.executable
        servers += [
            ("appliance_on_websockets_trio", [python, str(library), str(config)], None),
            ("echo_trio_sansio", [python, str(shared / "echo_trio_sansio.py")], None),
            ("echo_websockets_trio", [python, str(shared / "echo_ws_trio.py")], None),
            ("echo_trio_websocket", [python, str(shared / "echo_trio.py")], None),
            ("ocpp_peer", [python, str(shared / "peer_mh.py")], None),
        ]
        if shutil.which("node") and Path(args.node_modules).is_dir():
            env = {**os.environ, "NODE_PATH": args.node_modules}
            servers.append(("node_ocpp_rpc", ["node", str(shared / "peer_rpc.js")], env))

    results: dict[str, dict[int, float]] = {}
    for offset, (name, command, env) in enumerate(servers):
        port = args.port + offset
        if name == "appliance_before":
            port = args.port + 10
        elif name != "appliance":
            command = [*command, str(port)]
        database = None
        if name == "appliance":
            database = folder / "bench.db"
        elif name == "appliance_before":
            database = folder / "before" / "bench.db"
        rows = measure(
            name,
            command,
            port,
            counts,
            args.duration,
            args.paced,
            database,
            args.simulator,
            env,
            args.history,
            max(counts) if args.profile and name in ("appliance", "appliance_before") else None,
        )
        results[name] = {row["n"]: row["server_cpu_us_per_call"] for row in rows}

    shutil.rmtree(folder, ignore_errors=True)
    for other in results:
        if other == "appliance":
            continue
        ratios = {
            n: round(results["appliance"][n] / results[other][n], 2)
            for n in counts
            if results[other].get(n)
        }
        print(json.dumps({"appliance_cpu_per_call_ratio_to": other, **ratios}))


if __name__ == "__main__":
    main()
