"""Many sites into one PostgreSQL, measured (issue 22, README "Many sites into one
PostgreSQL"); prints JSON numbers, asserts nothing.

`--sites` appliances (real `serve` processes, one folder each) × `--per-site` simulated
charge points (`ocpp-appliance simulate`), replicating into one PostgreSQL on this
machine (tests/pg.py):

1. paced: one reading per 10 s per charge point (simulated time 10× faster: idle 6–24 s,
   sessions of 60–150 s) for `--paced` s: replication lag p50/p99
   (a row's arrival in PostgreSQL, seen by polling every 0.2 s, minus `received_at`: it
   includes the SQLite group commit) and rows/s into PostgreSQL;
2. back to back (`simulate --load`) for `--load` s: the OCPP p99 and rows/s, with
   replication on, then again with [central] off;
3. an outage: PostgreSQL stopped for `--outage` s under the paced load, then started: how
   long until every site has caught up, and the rows/s of the catch-up.

    .venv/bin/python tests/bench_fleet.py [--sites 10 --per-site 50 --outage 600]
    .venv/bin/python tests/bench_fleet.py --sites 1 --per-site 100 --every 1 --outage 60
        (README's lag target: 100 charge points × 1 reading/s)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from pg import Postgres

import conftest


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)


class Lag:
    """Polls PostgreSQL for new meter values of every site; each row's lag in seconds."""

    def __init__(self, url: str, sites: list[str]) -> None:
        self.url = url
        self.last = dict.fromkeys(sites, 0)
        self.lags: list[float] = []
        self.rows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Lag:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            for site in self.last:
                row = connection.execute(
                    "SELECT coalesce(max(seq), 0) FROM meter_values WHERE site = %s", (site,)
                ).fetchone()
                self.last[site] = row[0] if row else 0
            while not self._stop.wait(0.2):
                now = time.time() * 1000
                for site, seq in self.last.items():
                    rows = connection.execute(
                        "SELECT seq, received_at FROM meter_values WHERE site = %s AND seq > %s",
                        (site, seq),
                    ).fetchall()
                    if rows:
                        self.last[site] = max(r[0] for r in rows)
                        self.rows += len(rows)
                        self.lags.extend((now - r[1]) / 1000 for r in rows)


#: simulated time 10× faster: sessions from the first half minute; a reading every
#: `--every` s of wall time per charge point while it charges
SPEED = 10
EVERY = [10.0]


def central(server: Postgres, database: str, site: str) -> str:
    return f'\n[central]\npostgresql_url = "{server.url(database)}"\nsite = "{site}"\n'


def start_sites(folder: Path, count: int, extra: Any) -> list[conftest.Appliance]:
    return [
        conftest.start_appliance_process(folder / f"site{n:02d}", extra(f"site{n:02d}"))
        for n in range(count)
    ]


def stop_sites(sites: list[conftest.Appliance]) -> None:
    for site in sites:
        site.proc.terminate()
    for site in sites:
        site.proc.wait(30)


def simulate(sites: list[conftest.Appliance], per_site: int, seconds: float, load: bool) -> list:
    processes = [
        subprocess.Popen(
            [*conftest.appliance_command(), "simulate", "--url", site.url, "--count",
             str(per_site), "--protocol", "mix", "--identity-prefix", f"S{n:02d}-",
             "--duration", str(seconds), "--speed", str(SPEED),
             "--meter-interval", str(EVERY[0] * SPEED), "--json",
             *(["--load"] if load else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for n, site in enumerate(sites)
    ]  # fmt: skip
    return summaries_of(processes, seconds + 120)


def summaries_of(simulators: list[subprocess.Popen], timeout: float) -> list[dict]:
    """Each simulator's --json summary (its last line), once it has ended."""
    found = []
    for simulator in simulators:
        try:
            out, _ = simulator.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            simulator.kill()
            out, _ = simulator.communicate()
        lines = out.strip().splitlines()
        try:
            found.append(json.loads(lines[-1]))
        except (ValueError, IndexError):
            # no summary: say what it printed last instead
            found.append(
                {"unparsed": lines[-1][:300] if lines else "", "exit": simulator.returncode}
            )
    return found


def p99_of(summaries: list[dict]) -> float | None:
    found = [s["p99_ms"] for s in summaries if s.get("p99_ms") is not None]
    return round(max(found), 1) if found else None


def counts(server: Postgres, database: str) -> int:
    return server.sql("SELECT count(*) FROM meter_values", database)[0][0]


def local_counts(sites: list[conftest.Appliance]) -> int:
    import sqlite3

    total = 0
    for site in sites:
        with sqlite3.connect(site.db) as db:
            total += db.execute("SELECT count(*) FROM meter_values").fetchone()[0]
    return total


def wait_caught_up(
    server: Postgres, database: str, sites: list[conftest.Appliance], deadline: float
) -> None:
    while counts(server, database) < local_counts(sites) and time.monotonic() < deadline:
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--per-site", type=int, default=50)
    parser.add_argument("--paced", type=float, default=120)
    parser.add_argument("--load", type=float, default=20)
    parser.add_argument("--outage", type=float, default=600)
    parser.add_argument("--every", type=float, default=10, help="s between readings (paced)")
    args = parser.parse_args()
    EVERY[0] = args.every
    server = Postgres()
    server.start()
    database = server.database()
    url = server.url(database)
    names = [f"site{n:02d}" for n in range(args.sites)]
    results: dict[str, Any] = {"sites": args.sites, "charge_points_per_site": args.per_site}
    try:
        with tempfile.TemporaryDirectory() as folder:
            base = Path(folder)
            sites = start_sites(base / "on", args.sites, lambda n: central(server, database, n))
            time.sleep(3)  # the schema is made
            lag = Lag(url, names).start()
            before, started = counts(server, database), time.monotonic()
            simulate(sites, args.per_site, args.paced, load=False)
            time.sleep(3)
            lag.stop()
            results["paced"] = {
                "lag_p50_s": percentile(lag.lags, 0.5),
                "lag_p99_s": percentile(lag.lags, 0.99),
                "rows_per_s": round(
                    (counts(server, database) - before) / (time.monotonic() - started)
                ),
            }
            print(json.dumps({"paced": results["paced"]}), flush=True)

            lag = Lag(url, names).start()
            before, started = counts(server, database), time.monotonic()
            summaries = simulate(sites, args.per_site, args.load, load=True)
            replicated_in = time.monotonic() - started
            while (
                counts(server, database) < local_counts(sites) and time.monotonic() - started < 600
            ):
                time.sleep(0.5)
            lag.stop()
            results["back_to_back"] = {
                "ocpp_p99_ms_replicating": p99_of(summaries),
                "calls_per_s": round(sum(s.get("calls", 0) for s in summaries) / args.load),
                "lag_p50_s": percentile(lag.lags, 0.5),
                "lag_p99_s": percentile(lag.lags, 0.99),
                "rows_per_s": round((counts(server, database) - before) / max(replicated_in, 1)),
                "caught_up_s_after_the_load": round(time.monotonic() - started - args.load, 1),
            }
            print(json.dumps({"back_to_back": results["back_to_back"]}), flush=True)

            # the outage, under the paced load
            load = threading.Thread(
                target=simulate, args=(sites, args.per_site, args.outage + 20, False)
            )
            load.start()
            time.sleep(10)
            held = counts(server, database)
            server.stop()
            time.sleep(args.outage)
            missing = local_counts(sites) - held
            server.start()
            started = time.monotonic()
            resumed = None  # the first retry that finds PostgreSQL back (backoff ≤ 30 s)
            while (
                counts(server, database) < local_counts(sites) and time.monotonic() - started < 1200
            ):
                if resumed is None and counts(server, database) > held:
                    resumed = time.monotonic()
                time.sleep(0.2)
            done = time.monotonic()
            resumed = resumed or done
            caught = counts(server, database)
            load.join()
            results["outage"] = {
                "outage_s": args.outage,
                "first_retry_after_restart_s": round(resumed - started, 1),
                "caught_up_s": round(done - started, 1),
                "rows_in_postgresql": caught,
                "rows_missing_at_restart": missing,
                "catch_up_rows_per_s": round(missing / max(done - resumed, 0.2)),
            }
            print(json.dumps({"outage": results["outage"]}), flush=True)
            stop_sites(sites)

            sites = start_sites(base / "off", args.sites, lambda n: "")
            summaries = simulate(sites, args.per_site, args.load, load=True)
            results["back_to_back"]["ocpp_p99_ms_not_replicating"] = p99_of(summaries)
            results["back_to_back"]["calls_per_s_not_replicating"] = round(
                sum(s.get("calls", 0) for s in summaries) / args.load
            )
            stop_sites(sites)
    finally:
        server.remove()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
