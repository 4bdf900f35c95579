"""A reconnect storm, measured (issue 27, point 1; README "Bad peers"); prints numbers,
asserts nothing.

`--count` simulated charge points (one `ocpp-appliance simulate --count N --protocol mix`
process) are connected to a real `ocpp-appliance serve`, and booted. Then the appliance
restarts: `kill -9` (the power comes back; `--stop term`: an orderly restart, SIGTERM)
and `serve` again on the same port and database. Every charge point lost its connection
at the same moment and reconnects after its own back-off (the simulator's: 1 s, then
doubling with ±20 % jitter while the port is closed), so they all arrive within about a
second of each other: the storm. Measured, for ws:// and for wss:// (the project's TLS
config, an EC P-256 certificate as the README makes it):

- whether every charge point booted again (a BootNotification received after the
  restart, and its answer), and the refusals in `connection_log` (there should be none:
  `max_connections` is set above the fleet);
- the time from the new process listening until the last BootNotification was answered,
  and how far apart the first and the last reconnection were (`connection_log`);
- the simulator's p50 / p99 / max reconnect handshake: from its TCP connect to the 101,
  waiting in the listen backlog included (`reconnect_handshake_*` of its summary);
- a probe charge point that connects as soon as the new process listens and sends a
  Heartbeat every 50 ms through the storm: its round trips (p50 / p99 / max), i.e. what a
  connection already up sees while the handshakes run (`[limits] max_handshakes`);
- the new process's peak RSS (VmHWM) once the storm is over.

    PYTHONPATH=. .venv/bin/python tests/bench_storm.py                  # 1000, ws and wss
    PYTHONPATH=. .venv/bin/python tests/bench_storm.py --count 200 --schemes ws
    PYTHONPATH=. .venv/bin/python tests/bench_storm.py --max-handshakes 32,1000

Everything runs on this machine: the simulator's 1 000 TLS clients share its cores with
the appliance.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from test_security import make_pki, tls_config

import conftest

PREFIX = "STORM-"
PROBE = "PROBE"
#: the probe's Heartbeat interval (s)
PROBE_EVERY = 0.05


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raise_open_files(needed: int) -> None:
    """This script's soft open-files limit (its children inherit it): the simulator holds
    a socket per charge point."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        cap = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, hard))


def config(folder: Path, port: int, count: int, handshakes: int, tls: str) -> str:
    return (
        f'host = "127.0.0.1"\nport = {port}\ndatabase = "appliance.db"\n'
        f"[limits]\nmax_connections = {count + 100}\nmax_handshakes = {handshakes}\n"
        '[web]\nhost = "127.0.0.1"\nport = 0\n'
        "[device_model]\nfetch_on_boot = false\n[readings]\nconfigure = false\n" + tls
    )


def serve(folder: Path) -> conftest.Appliance:
    return conftest.launch(
        ["--config", str(folder / "appliance.toml")], folder / f"serve-{time.time_ns()}.log"
    )


def query(db: Path, sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return c.execute(sql, params).fetchall()


def booted_since(db: Path, since_ms: int) -> int:
    """Charge points of the fleet whose BootNotification since `since_ms` was answered."""
    return query(
        db,
        "SELECT count(DISTINCT i.identity) FROM messages i JOIN messages o"
        " ON o.identity = i.identity AND o.message_id = i.message_id"
        " AND o.direction = 'out' AND o.message_type = 3"
        " WHERE i.direction = 'in' AND i.action = 'BootNotification' AND i.ts >= ?"
        " AND i.identity LIKE ?",
        since_ms,
        PREFIX + "%",
    )[0][0]


def last_boot_answer_ms(db: Path, since_ms: int) -> int:
    """When the last charge point's first BootNotification since `since_ms` was answered."""
    return query(
        db,
        "SELECT max(answered) FROM (SELECT min(o.ts) AS answered FROM messages i"
        " JOIN messages o ON o.identity = i.identity AND o.message_id = i.message_id"
        " AND o.direction = 'out' AND o.message_type = 3"
        " WHERE i.direction = 'in' AND i.action = 'BootNotification' AND i.ts >= ?"
        " AND i.identity LIKE ? GROUP BY i.identity)",
        since_ms,
        PREFIX + "%",
    )[0][0]


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Probe:
    """A charge point that connects as soon as it is started and sends a Heartbeat every
    PROBE_EVERY s: (time sent, round trip) of each."""

    def __init__(self, url: str, context: ssl.SSLContext | None) -> None:
        self.url = url
        self.context = context
        self.rtts: list[tuple[float, float]] = []
        self.connect_s: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            with connect(
                f"{self.url}/{PROBE}", subprotocols=["ocpp1.6"], ssl=self.context, open_timeout=60
            ) as ws:
                self.connect_s = time.perf_counter() - started
                n = 0
                while not self._stop.is_set():
                    n += 1
                    sent = time.perf_counter()
                    ws.send(json.dumps([2, f"p{n}", "Heartbeat", {}]))
                    while json.loads(ws.recv(timeout=60))[1] != f"p{n}":
                        pass
                    self.rtts.append((sent, time.perf_counter() - sent))
                    time.sleep(PROBE_EVERY)
        except Exception as exc:  # reported with the numbers
            self.error = f"{type(exc).__name__}: {exc}"

    def during(self, start: float, end: float) -> dict[str, Any]:
        found = sorted(rtt for sent, rtt in self.rtts if start <= sent <= end)
        if not found:
            return {"heartbeats": 0}
        return {
            "heartbeats": len(found),
            "p50_ms": round(statistics.median(found) * 1000, 1),
            "p99_ms": round(found[min(len(found) - 1, int(0.99 * len(found)))] * 1000, 1),
            "max_ms": round(found[-1] * 1000, 1),
        }


def storm(scheme: str, count: int, handshakes: int, stop: str, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    port = free_port()
    tls, cafile, context = "", None, None
    if scheme == "wss":
        pki = make_pki(folder / "pki", [])
        tls, cafile = tls_config(pki), str(pki.server_ca)
        context = ssl.create_default_context(cafile=cafile)
    (folder / "appliance.toml").write_text(config(folder, port, count, handshakes, tls))
    db = folder / "appliance.db"
    appliance = serve(folder)
    url = f"{scheme}://127.0.0.1:{port}"
    simulator = subprocess.Popen(
        [*conftest.appliance_command(), "simulate", "--url", url, "--count", str(count),
         "--protocol", "mix", "--identity-prefix", PREFIX, "--json",
         *(["--cafile", cafile] if cafile else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    probe = None
    try:
        deadline = time.monotonic() + 300
        while booted_since(db, 0) < count:
            if time.monotonic() > deadline or simulator.poll() is not None:
                raise RuntimeError(f"the fleet did not boot: {booted_since(db, 0)} of {count}")
            time.sleep(0.5)
        time.sleep(2)  # the boots' StatusNotifications

        # the restart
        stopped_ms = time.time_ns() // 1_000_000
        appliance.proc.send_signal(signal.SIGKILL if stop == "kill" else signal.SIGTERM)
        appliance.proc.wait(60)
        appliance = serve(folder)
        listening = time.perf_counter()
        listening_ms = time.time_ns() // 1_000_000
        probe = Probe(url, context)
        probe.start()

        deadline = time.monotonic() + 600
        while (booted := booted_since(db, stopped_ms)) < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        storm_end = time.perf_counter()
        time.sleep(2)
        last_ms = last_boot_answer_ms(db, stopped_ms)
        rss = peak_rss_mb(appliance.proc.pid)
        connects = query(
            db,
            "SELECT min(ts), max(ts), count(*) FROM connection_log WHERE event = 'connect'"
            " AND ts >= ? AND identity LIKE ?",
            stopped_ms,
            PREFIX + "%",
        )[0]
        refused = query(
            db,
            "SELECT reason, count(*) FROM connection_log WHERE event = 'refused' AND ts >= ?"
            " GROUP BY reason",
            stopped_ms,
        )
        probe.stop()
        simulator.send_signal(signal.SIGINT)
        out, _ = simulator.communicate(timeout=60)
        summary = json.loads(out.strip().splitlines()[-1])
        return {
            "scheme": scheme,
            "charge_points": count,
            "max_handshakes": handshakes,
            "restart": stop,
            "booted_again": booted,
            "refused": dict(refused),
            "last_boot_answered_s": round((last_ms - listening_ms) / 1000, 2) if last_ms else None,
            "reconnections_spread_s": (
                round((connects[1] - connects[0]) / 1000, 2) if connects[2] else None
            ),
            "reconnect_handshake_p50_ms": summary.get("reconnect_handshake_p50_ms"),
            "reconnect_handshake_p99_ms": summary.get("reconnect_handshake_p99_ms"),
            "reconnect_handshake_max_ms": summary.get("reconnect_handshake_max_ms"),
            "simulator_errors": summary.get("errors"),
            "probe_connect_ms": round(probe.connect_s * 1000, 1) if probe.connect_s else None,
            "probe_during_storm": probe.during(listening, storm_end),
            "probe_after_storm": probe.during(storm_end, storm_end + 10),
            "probe_error": probe.error,
            "peak_rss_mb": rss,
        }
    finally:
        if probe is not None:
            probe.stop()
        for process in (simulator, appliance.proc):
            if process.poll() is None:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--schemes", default="ws,wss", help="ws, wss or both (ws,wss)")
    parser.add_argument(
        "--max-handshakes", default="32", help="[limits] max_handshakes; a list compares"
    )
    parser.add_argument("--stop", choices=["kill", "term"], default="kill")
    args = parser.parse_args()
    raise_open_files(args.count + 1024)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        for scheme in args.schemes.split(","):
            for handshakes in (int(n) for n in args.max_handshakes.split(",")):
                folder = Path(tmp) / f"{scheme}-{handshakes}"
                result = storm(scheme, args.count, handshakes, args.stop, folder)
                print(json.dumps(result), flush=True)
                results.append(result)
    print()
    print(
        "| | booted again | refused | last boot answered | p99 handshake | probe p99 / max "
        "| peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        probe = r["probe_during_storm"]
        print(
            f"| {r['scheme']}, max_handshakes = {r['max_handshakes']} "
            f"| {r['booted_again']} of {r['charge_points']} "
            f"| {sum(r['refused'].values())} "
            f"| {r['last_boot_answered_s']} s "
            f"| {r['reconnect_handshake_p99_ms']} ms "
            f"| {probe.get('p99_ms')} / {probe.get('max_ms')} ms "
            f"| {r['peak_rss_mb']} MB |"
        )


if __name__ == "__main__":
    main()
