"""What the readings the appliance asks for cost on disk (issue 26, README "Readings the
appliance asks for"); prints JSON numbers, asserts nothing.

A real `serve` and one 1.6 charge point (plain websockets) in a transaction send N
MeterValues of each kind; the database is checkpointed and its size read before and
after each kind, so the growth per call includes everything stored of it (the frame in
`messages`, its rows in `meter_values`, the states, the indexes). Then per charge point
per day, for a car charging `--hours` a day:

- factory: the energy register every 60 s during the session (a typical 1.6 default);
- asked for: [readings]'s defaults on a three-phase meter (13 sampled values) every
  10 s during the session, and the energy register clock-aligned every 300 s all day.

    .venv/bin/python tests/bench_readings.py [--calls 600] [--hours 2]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from test_readings import DEFAULT, samples

import conftest


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sizes(db: Path) -> dict[str, int]:
    """Bytes in use per table, its indexes counted with it (SQLite's dbstat)."""
    connection = sqlite3.connect(db)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute(
            "SELECT coalesce(s.tbl_name, d.name), sum(d.pgsize - d.unused)"
            " FROM dbstat AS d LEFT JOIN sqlite_schema AS s ON s.name = d.name"
            " GROUP BY 1"
        ).fetchall()
        return dict(rows)
    finally:
        connection.close()


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0)
    }


class Charger:
    def __init__(self, url: str) -> None:
        self.ws = connect(f"{url}/BENCH", subprotocols=["ocpp1.6"])
        self.number = 0

    def call(self, action: str, payload: dict) -> dict:
        self.number += 1
        self.ws.send(json.dumps([2, str(self.number), action, payload]))
        while True:
            frame = json.loads(self.ws.recv())
            if frame[0] == 3 and frame[1] == str(self.number):
                return frame[2]
            if frame[0] == 2:  # the appliance's own calls: answered, not ours
                self.ws.send(
                    json.dumps(
                        [
                            3,
                            frame[1],
                            {"configurationKey": []}
                            if frame[2] == "GetConfiguration"
                            else {"status": "Accepted"},
                        ]
                    )
                )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        appliance = conftest.start_appliance_process(Path(folder))
        try:
            charger = Charger(appliance.url)
            charger.call(
                "BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "B"}
            )
            tid = charger.call(
                "StartTransaction",
                {"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": stamp()},
            )["transactionId"]
            kinds = {
                "factory (energy register)": (
                    samples(["Energy.Active.Import.Register"]),
                    "Sample.Periodic",
                ),
                "asked for (defaults, 3 phases)": (samples(DEFAULT), "Sample.Periodic"),
                "clock-aligned energy": (
                    samples(["Energy.Active.Import.Register"]),
                    "Sample.Clock",
                ),
            }
            per_call: dict[str, dict[str, float]] = {}
            for name, (values, context) in kinds.items():
                before = sizes(appliance.db)
                for _ in range(args.calls):
                    sampled = [{**v, "context": context} for v in values]
                    meter_value = [{"timestamp": stamp(), "sampledValue": sampled}]
                    charger.call(
                        "MeterValues",
                        {"connectorId": 1, "transactionId": tid, "meterValue": meter_value},
                    )
                time.sleep(1.5)  # a commit interval: all of it is in the database
                grown = growth(before, sizes(appliance.db))
                per_call[name] = {table: b / args.calls for table, b in grown.items()}
                shown = {table: round(b) for table, b in per_call[name].items()}
                print(json.dumps({"kind": name, "values": len(values), "bytes_per_call": shown}))
        finally:
            appliance.proc.terminate()
            appliance.proc.wait()
    session_s = args.hours * 3600
    calls = {
        "factory (energy register)": session_s / 60,
        "asked for (defaults, 3 phases)": session_s / 10,
        "clock-aligned energy": 86400 / 300,
    }

    def per_day(kinds: list[str], tables: set[str] | None = None) -> float:
        return sum(
            calls[kind] * b
            for kind in kinds
            for table, b in per_call[kind].items()
            if tables is None or table in tables
        )

    factory = ["factory (energy register)"]
    asked = ["asked for (defaults, 3 phases)", "clock-aligned energy"]
    frames = {"messages"}

    # README retention: frames 30 days, meter values 365: what a year of it holds
    def held(kinds: list[str]) -> float:
        everything, messages = per_day(kinds), per_day(kinds, frames)
        return (everything - messages) * 365 + messages * 30

    print(
        json.dumps(
            {
                "hours_charging_a_day": args.hours,
                "factory_kb_per_day": round(per_day(factory) / 1024, 1),
                "asked_for_kb_per_day": round(per_day(asked) / 1024, 1),
                "asked_for_frames_kb_per_day": round(per_day(asked, frames) / 1024, 1),
                "factory_mb_held_after_a_year": round(held(factory) / 2**20, 1),
                "asked_for_mb_held_after_a_year": round(held(asked) / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
