"""The cost of a stored call without the sockets: N charge points' MeterValues through the
real station layer (rpc, version mapping, tree) and the real store (writer thread,
SQLite file), fed by an in-memory link. Prints numbers, asserts nothing.

    PYTHONPATH=. .venv/bin/python tests/bench_pipeline.py --calls 20000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python tests/bench_pipeline.py --calls 3000   # instructions: repeatable

CPU seconds move with whatever else the machine runs; instruction counts under callgrind
do not, so two versions of the code compare by them (`callgrind_annotate /tmp/cg.out |
head`). The socket work (the same for every server) is not in it: see benchmark.py for
the whole server against the echo ceilings.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import trio
from benchmark import METER_VALUES

from appliance import config as configuration
from appliance.app import compile_schemas
from appliance.security.policy import Policy
from appliance.station.hub import Stations
from appliance.store import Store, TransactionIds
from appliance.tree import Tree

#: the benchmark's MeterValues: six sampled values, as a three-phase wallbox sends them
SAMPLED = METER_VALUES["meterValue"][0]["sampledValue"]


class FakeLink:
    """What a station needs of a transport Link: messages in, messages out."""

    def __init__(self, identity: str, texts: list[str]) -> None:
        self.identity = identity
        self.subprotocol = "ocpp1.6"
        self.remote = "127.0.0.1:1"
        self.host = "127.0.0.1"
        self.credential = None
        self.close_reason = None
        self.scope = trio.CancelScope()
        self._texts = texts
        self.sent = 0

    @property
    def open(self) -> bool:
        return True

    async def messages(self):  # type: ignore[no-untyped-def]
        for text in self._texts:
            yield text
            await trio.lowlevel.checkpoint()  # as a socket read would: the others run

    async def send(self, texts: list[str]) -> bool:
        self.sent += len(texts)
        return True

    async def close(self, code: int, reason: str) -> None:
        pass


def frames(index: int, calls: int) -> list[str]:
    boot = {"chargePointVendor": "Bench", "chargePointModel": "Load"}
    texts = [json.dumps([2, "boot", "BootNotification", boot])]
    for n in range(calls):
        # every message a new sample, as a wallbox sends them (a repeat is applied once)
        stamp = f"2026-11-24T10:{n // 60 % 60:02d}:{n % 60:02d}.{n:06d}Z"
        payload = {
            "connectorId": 1,
            "transactionId": 1,
            "meterValue": [{"timestamp": stamp, "sampledValue": SAMPLED}],
        }
        texts.append(json.dumps([2, f"{index}-{n}", "MeterValues", payload]))
    return texts


async def run(folder: Path, charge_points: int, calls: int, commit_ms: int) -> dict:
    path = folder / "appliance.toml"
    path.write_text(
        'database = "bench.db"\n[device_model]\nfetch_on_boot = false\n'
        f"[storage]\ncommit_interval_ms = {commit_ms}\n"
    )
    config = configuration.load(path)
    policy = Policy.build(config)
    store = Store(config.database_path, config.storage.commit_interval_ms)
    opened = store.open()
    tree = Tree(store, opened)
    stations = Stations(
        policy, store, tree, compile_schemas(config), TransactionIds(opened, store.put)
    )
    # as `serve` does once it is up (appliance/app.py): the start-up objects frozen, young
    # collections rarer
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    per_point = calls // charge_points
    links = [FakeLink(f"LOAD{i}", frames(i, per_point)) for i in range(charge_points)]
    started = time.process_time()
    wall = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for link in links:
            nursery.start_soon(stations.serve, link)
    loop_done = time.process_time()
    flushed = store.close()
    finished = time.process_time()
    total = per_point * charge_points
    return {
        "charge_points": charge_points,
        "calls": total,
        "answered": sum(link.sent for link in links),
        "flushed": flushed,
        "cpu_us_per_call": round((finished - started) * 1e6 / total, 1),
        "until_answered_us_per_call": round((loop_done - started) * 1e6 / total, 1),
        "wall_s": round(time.perf_counter() - wall, 2),
        "commits": store.commits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("-n", type=int, default=100, help="charge points")
    parser.add_argument(
        "--commit-ms",
        type=int,
        default=1000,
        help="commit interval; a long one (600000) leaves one commit at the end, so that"
        " two versions compare by instructions whatever their speed",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocpp-pipeline-") as folder:
        print(json.dumps(trio.run(run, Path(folder), args.n, args.calls, args.commit_ms)))


if __name__ == "__main__":
    main()
