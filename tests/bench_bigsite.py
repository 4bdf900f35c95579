"""A big site on several processes behind HAProxy, sharing one PostgreSQL, measured
(issue 23, README "A big site on several processes"); prints JSON numbers, asserts nothing.

`--processes` real `serve --instance N` processes of one site (one shared config, site
"bench", `[central]` replicating into one PostgreSQL on this machine: tests/pg.py) behind
Debian's HAProxy on the sample packaging/haproxy.cfg (tests/haproxy.py), and
`--charge-points` simulated charge points (`ocpp-appliance simulate --protocol mix`, split
over `--simulators` simulate processes so that one simulator is not the bottleneck)
connecting through HAProxy:

1. paced: one reading per 10 s per charge point while it charges (simulated time 10×
   faster: sessions start within the first half minute) for `--paced` s: replication lag
   p50/p99 (a meter value's arrival in PostgreSQL, seen by polling every 0.2 s, minus its
   `received_at`: it includes the SQLite group commit), calls/s, the simulators' OCPP p99
   and the RSS of each process (VmRSS shortly before the charge points stop, and VmHWM,
   its peak);
2. back to back (`simulate --load`) for `--load` s: the same numbers, and how long after
   the load PostgreSQL had caught up with every process's file;
3. failover: under the paced load, the process holding the most charge points is killed
   with `kill -9`: how many of the charge points it held (its `connection_log`) booted
   again on the others (their `messages`: a BootNotification received after the kill) and
   how long until the last (and the median) one did; when HAProxy marked it DOWN.

Then the paced and back-to-back loads again on ONE process holding all the charge points
(no HAProxy: the simulators connect to it directly; still replicating), side by side with
the several processes in the final JSON line.

    .venv/bin/python tests/bench_bigsite.py      # 4 processes, 1000 charge points
    .venv/bin/python tests/bench_bigsite.py --processes 2 --charge-points 40 --paced 40 --load 10
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_fleet import p99_of, percentile, summaries_of
from haproxy import PROXY_FROM, HAProxy
from pg import Postgres

import conftest

#: the site's name in PostgreSQL
SITE = "bench"
#: simulated time 10× faster: sessions from the first half minute; a reading every 10 s
#: of wall time per charge point while it charges
SPEED = 10
EVERY = 10.0
#: every simulate process started, ended in `main`'s finally if still running
SIMULATORS: list[subprocess.Popen] = []


class Lag:
    """Polls PostgreSQL for the site's new meter values; each row's lag in seconds. `seq`
    is unique per (site, origin): one SQLite file each, so the newest seq is kept per
    origin (the origins from PostgreSQL's `replication` table)."""

    def __init__(self, url: str, site: str) -> None:
        self.url = url
        self.site = site
        self.last: dict[str, int] = {}
        self.lags: list[float] = []
        self.rows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Lag:
        with psycopg.connect(self.url, autocommit=True) as connection:
            for origin in self._origins(connection):
                row = connection.execute(
                    "SELECT coalesce(max(seq), 0) FROM meter_values WHERE site = %s"
                    " AND origin = %s",
                    (self.site, origin),
                ).fetchone()
                self.last[origin] = row[0] if row else 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _origins(self, connection: psycopg.Connection) -> list[str]:
        rows = connection.execute(
            "SELECT DISTINCT origin FROM replication WHERE site = %s", (self.site,)
        ).fetchall()
        return [origin for (origin,) in rows]

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            while not self._stop.wait(0.2):
                for origin in self._origins(connection):
                    self.last.setdefault(origin, 0)  # new since the start: all its rows
                for origin, seq in list(self.last.items()):
                    rows = connection.execute(
                        "SELECT seq, received_at FROM meter_values WHERE site = %s"
                        " AND origin = %s AND seq > %s",
                        (self.site, origin, seq),
                    ).fetchall()
                    now = time.time() * 1000  # the rows were in PostgreSQL by now
                    if rows:
                        self.last[origin] = max(r[0] for r in rows)
                        self.rows += len(rows)
                        self.lags.extend((now - r[1]) / 1000 for r in rows)


def central(server: Postgres, database: str) -> str:
    return f'\n[central]\npostgresql_url = "{server.url(database)}"\nsite = "{SITE}"\n'


def make_site(folder: Path, count: int, extra: str) -> conftest.Site:
    """A site's shared config (as conftest's `site` fixture) with room for `count`
    processes: OCPP on port + N, the web port + N, appliance-N.db."""
    while True:
        port, web_port = conftest.free_run(count), conftest.free_run(count)
        if abs(port - web_port) > count:
            break
    folder.mkdir(parents=True)
    web = f'\n[web]\nhost = "127.0.0.1"\nport = {web_port}\n'
    (folder / "appliance.toml").write_text(
        conftest.test_config(web + extra).replace("port = 0\n", f"port = {port}\n", 1)
    )
    return conftest.Site(folder, port, web_port, {})


def replicating(process: conftest.Appliance) -> bool:
    return "replicating into" in process.log()


def start_processes(site: conftest.Site, count: int) -> list[conftest.Appliance]:
    """Processes 1…count of the site, once each replicates into PostgreSQL."""
    processes = [site.start(n) for n in range(1, count + 1)]
    for process in processes:
        conftest.wait_for(functools.partial(replicating, process), 60, "replication")
    return processes


def sizes_of(charge_points: int, simulators: int) -> list[int]:
    """The charge points of each simulate process (as even as can be)."""
    count = max(1, min(simulators, charge_points))
    return [charge_points // count + (n < charge_points % count) for n in range(count)]


def simulate(
    url: str, prefix: str, sizes: list[int], seconds: float, load: bool
) -> list[subprocess.Popen]:
    """The simulate processes, `sizes[n]` charge points each (identities
    `<prefix><n>-001`…), against `url`."""
    started = [
        subprocess.Popen(
            [*conftest.appliance_command(), "simulate", "--url", url, "--count", str(size),
             "--protocol", "mix", "--identity-prefix", f"{prefix}{n}-",
             "--duration", str(seconds), "--speed", str(SPEED),
             "--meter-interval", str(EVERY * SPEED), "--json",
             *(["--load"] if load else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for n, size in enumerate(sizes)
    ]  # fmt: skip
    SIMULATORS.extend(started)
    return started


def rss_of(processes: list[conftest.Appliance]) -> dict[str, Any]:
    """Each process's resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    found: dict[str, Any] = {"rss_mb": [], "rss_peak_mb": []}
    for process in processes:
        status = {}
        try:
            for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                status[key] = value
        except OSError:
            pass
        for name, key in (("rss_mb", "VmRSS"), ("rss_peak_mb", "VmHWM")):
            kb = status.get(key, "").split()
            found[name].append(round(int(kb[0]) / 1024, 1) if kb else None)
    return found


def origin_of(process: conftest.Appliance) -> str:
    return process.query("SELECT value FROM meta WHERE key = 'origin'")[0][0]


def behind(url: str, processes: list[conftest.Appliance]) -> int:
    """Meter values in the processes' files not yet in PostgreSQL (by seq, per origin)."""
    missing = 0
    with psycopg.connect(url, autocommit=True) as connection:
        for process in processes:
            local = process.query("SELECT coalesce(max(seq), 0) FROM meter_values")[0][0]
            row = connection.execute(
                "SELECT coalesce(max(seq), 0) FROM meter_values WHERE site = %s AND origin = %s",
                (SITE, origin_of(process)),
            ).fetchone()
            missing += max(0, local - (row[0] if row else 0))
    return missing


def phase(
    url: str,
    target: str,
    prefix: str,
    sizes: list[int],
    seconds: float,
    load: bool,
    processes: list[conftest.Appliance],
) -> dict[str, Any]:
    """One load against `target` for `seconds`: calls/s, OCPP p99, lag, RSS."""
    lag = Lag(url, SITE).start()
    simulators = simulate(target, prefix, sizes, seconds, load)
    time.sleep(max(0.0, seconds - 1))  # the memory while the charge points are connected
    memory = rss_of(processes)
    summaries = summaries_of(simulators, seconds + 120)
    ended = time.monotonic()
    while behind(url, processes) and time.monotonic() - ended < 600:
        time.sleep(0.2)
    caught_up = time.monotonic() - ended
    time.sleep(0.5)  # the last poll
    lag.stop()
    unparsed = [s for s in summaries if "unparsed" in s]
    if unparsed:
        print(json.dumps({"simulators_without_a_summary": unparsed}), flush=True)
    return {
        "calls_per_s": round(sum(s.get("calls", 0) for s in summaries) / seconds, 1),
        "ocpp_p99_ms": p99_of(summaries),
        "lag_p50_s": percentile(lag.lags, 0.5),
        "lag_p99_s": percentile(lag.lags, 0.99),
        "rows_replicated": lag.rows,
        "caught_up_s_after_the_load": round(caught_up, 1),
        **memory,
        "reconnects": sum(s.get("reconnects", 0) for s in summaries),
        "errors": sum(sum(s.get("errors", {}).values()) for s in summaries),
        "error_kinds": dict(sum((Counter(s.get("errors", {})) for s in summaries), Counter())),
    }


def held_by(process: conftest.Appliance) -> set[str]:
    """The charge points connected to the process now (its connection log)."""
    rows = process.query(
        "SELECT identity FROM connection_log AS c WHERE seq = (SELECT max(seq) FROM"
        " connection_log WHERE identity = c.identity) AND event = 'connect'"
    )
    return {identity for (identity,) in rows}


def booted_since(process: conftest.Appliance, since_ms: float) -> dict[str, int]:
    """Each charge point's first BootNotification on the process after `since_ms`."""
    rows = process.query(
        "SELECT identity, min(ts) FROM messages WHERE action = 'BootNotification'"
        " AND direction = 'in' AND ts > ? GROUP BY identity",
        since_ms,
    )
    return dict(rows)


def failover(
    site: conftest.Site, proxy: HAProxy, prefix: str, sizes: list[int], charge_points: int
) -> dict[str, Any]:
    """Under the paced load, `kill -9` of the process holding the most charge points:
    until each of them has booted again on another process."""
    processes = dict(site.processes)
    simulators = simulate(proxy.url, prefix, sizes, 3600, load=False)
    try:
        conftest.wait_for(
            lambda: sum(len(held_by(p)) for p in processes.values()) >= charge_points,
            180,
            "every charge point connected",
        )
        time.sleep(10)  # sessions under way
        held = {number: held_by(process) for number, process in processes.items()}
        number = max(held, key=lambda n: len(held[n]))
        moving, victim = held[number], processes.pop(number)
        killed = time.time() * 1000
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        booted: dict[str, int] = {}
        down: float | None = None
        deadline = time.monotonic() + 300
        while not moving <= booted.keys() and time.monotonic() < deadline:
            for process in processes.values():
                for identity, ts in booted_since(process, killed).items():
                    booted[identity] = min(ts, booted.get(identity, ts))
            if down is None and proxy.servers().get(f"p{number}", "").startswith("DOWN"):
                down = time.time() * 1000
            time.sleep(0.2)
        times = [(booted[i] - killed) / 1000 for i in moving if i in booted]
    finally:
        for simulator in simulators:
            if simulator.poll() is None:
                simulator.terminate()
        summaries = summaries_of(simulators, 30)
    return {
        "killed": f"p{number}",
        "charge_points_held": len(moving),
        "moved": len(times),
        "all_booted_again_s": round(max(times), 2) if times else None,
        "median_booted_again_s": percentile(times, 0.5),
        "haproxy_marked_down_s": round((down - killed) / 1000, 1) if down else None,
        "ocpp_p99_ms": p99_of(summaries),
        "reconnects": sum(s.get("reconnects", 0) for s in summaries),
    }


def raise_open_files(needed: int) -> None:
    """The soft open-files limit up to the hard one (and beyond it where allowed), for
    this script's children: HAProxy holds two sockets per charge point, a simulator one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            print(f"open files: hard limit {hard} < {needed}", file=sys.stderr)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--charge-points", type=int, default=1000)
    parser.add_argument("--paced", type=float, default=120, help="s of the paced load")
    parser.add_argument("--load", type=float, default=20, help="s of back-to-back load")
    parser.add_argument("--simulators", type=int, default=4, help="simulate processes")
    args = parser.parse_args()
    raise_open_files(4 * args.charge_points + 1024)
    sizes = sizes_of(args.charge_points, args.simulators)
    phases = (("paced", args.paced, False), ("back_to_back", args.load, True))
    several, one = f"{args.processes}_processes", "1_process"
    results: dict[str, Any] = {
        "processes": args.processes,
        "charge_points": args.charge_points,
        "simulators": len(sizes),
        "paced": {},
        "back_to_back": {},
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-bigsite-"))
    started: list[conftest.Appliance] = []
    proxy: HAProxy | None = None
    server = Postgres()
    try:
        server.start()
        database = server.database()
        url = server.url(database)
        extra = central(server, database)

        # behind HAProxy: its PROXY headers give the processes each charge point's address
        site = make_site(folder / "site", args.processes, extra + PROXY_FROM)
        processes = start_processes(site, args.processes)
        started += processes
        proxy = HAProxy([(p.port, p.web_port) for p in processes])
        proxy.start()
        for n in range(1, args.processes + 1):
            proxy.wait_for(f"p{n}", "UP")
        for name, seconds, load in phases:
            results[name][several] = phase(url, proxy.url, "M", sizes, seconds, load, processes)
            print(json.dumps({name: {several: results[name][several]}}), flush=True)
        results["failover"] = failover(site, proxy, "M", sizes, args.charge_points)
        print(json.dumps({"failover": results["failover"]}), flush=True)
        for process in processes:
            conftest.end(process.proc)
        proxy.remove()
        proxy = None

        # the same load on one process holding all of them, no HAProxy, still replicating
        limit = max(1000, args.charge_points + 100)
        alone = make_site(folder / "one", 1, extra + f"\n[limits]\nmax_connections = {limit}\n")
        single = start_processes(alone, 1)
        started += single
        for name, seconds, load in phases:
            results[name][one] = phase(url, single[0].url, "S", sizes, seconds, load, single)
            print(json.dumps({name: {one: results[name][one]}}), flush=True)
        conftest.end(single[0].proc)
    finally:
        for simulator in SIMULATORS:
            if simulator.poll() is None:
                simulator.kill()
                simulator.wait()
        for process in started:
            conftest.end(process.proc)
        if proxy is not None:
            proxy.remove()
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
