"""What a second backend costs the charge point (README "A second backend"; prints
numbers, asserts nothing): the answer times a 1.6 charge point sees — p50 and p99 of
each round trip of a session of MeterValues (in a transaction: transaction messages,
written to `upstream_queue` first) and StatusNotifications — against a real
`ocpp-appliance serve`, side by side:

1. no `[[upstream]]`;
2. an upstream that is up (the `ocpp` package's handlers on a `websockets` server,
   tests/test_upstream.py's `Upstream`), and how long until it has had every message;
3. an upstream configured but down (nothing listens on its port).

    PYTHONPATH=. .venv/bin/python tests/bench_upstream.py [--meter-values 200] [--statuses 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import free_port
from test_upstream import Upstream, now

from conftest import Appliance, start_appliance_process, wait_for

IDENTITY = "BENCH-UP"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ChargePoint:
    """A 1.6 charge point sending exactly the JSON it is given; every round trip timed."""

    def __init__(self, url: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(f"{url}/{IDENTITY}", subprotocols=["ocpp1.6"])
        )
        self.n = 0
        self.times: dict[str, list[float]] = {}

    def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        message_id = f"m{self.n}"
        started = time.perf_counter()
        self.ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            frame = json.loads(self.ws.recv(timeout=30))
            if frame[0] == 2:  # a call of the appliance's: not what is measured
                self.ws.send(json.dumps([4, frame[1], "NotImplemented", "", {}]))
            elif frame[1] == message_id:
                break
        self.times.setdefault(action, []).append(time.perf_counter() - started)
        assert frame[0] == 3, frame
        return frame[2]

    def close(self) -> None:
        self._stack.close()


class RemoteUpstream:
    """`Upstream` in a process of its own: in this one its event loop would share the GIL
    with the charge point's client and slow the round trips measured."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ocpp"
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=self._serve, args=(self.port, child))
        self.process.start()
        assert self.pipe.recv() == "ready"

    @staticmethod
    def _serve(port: int, pipe: Any) -> None:
        upstream = Upstream("ocpp1.6", port).start()
        pipe.send("ready")
        while (asked := pipe.recv()) != "stop":
            pipe.send([action for action, _ in upstream.calls(asked)])
        upstream.stop()

    def actions(self, identity: str) -> list[str]:
        self.pipe.send(identity)
        return self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(10)


def session(cp: ChargePoint, meter_values: int, statuses: int) -> None:
    """A transaction with `meter_values` MeterValues, a StatusNotification after every
    meter_values/statuses of them, then the stop."""
    started = cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": now()},
    )
    local = started["transactionId"]
    every = max(1, meter_values // max(1, statuses))
    kinds = ["Charging", "SuspendedEV"]
    for n in range(meter_values):
        cp.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": local,
                "meterValue": [
                    {"timestamp": now(), "sampledValue": [{"value": str(1000 + 10 * n)}]}
                ],
            },
        )
        if n % every == every - 1:
            cp.call(
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": kinds[n // every % 2]},
            )
    cp.call(
        "StopTransaction",
        {"transactionId": local, "meterStop": 1000 + 10 * meter_values, "timestamp": now()},
    )


def state(appliance: Appliance, key: str) -> Any:
    rows = appliance.query("SELECT val FROM states WHERE id = ?", key)
    return rows[0][0] if rows else None


def run(
    label: str, folder: Path, extra: str, meter_values: int, statuses: int, upstream: Any
) -> dict[str, Any]:
    appliance = start_appliance_process(folder, extra)
    found: dict[str, Any] = {"label": label}
    try:
        cp = ChargePoint(appliance.url)
        cp.call("BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "Up"})
        for _ in range(20):  # warm-up
            cp.call("Heartbeat", {})
        key = f"{IDENTITY}.upstream.billing"
        if extra:  # the link's state settled: connected, or failed once at least
            wait_for(lambda: state(appliance, f"{key}.connected") is not None, 15, "the link")
        cp.times.clear()
        began = time.perf_counter()
        session(cp, meter_values, statuses)
        found["session"] = time.perf_counter() - began
        found["times"] = cp.times
        expected = 2 + meter_values + len(cp.times.get("StatusNotification", []))
        if upstream is not None:
            # every transaction message and status of the session upstream
            wait_for(
                lambda: (
                    sum(
                        1
                        for action in upstream.actions(IDENTITY)
                        if action not in ("BootNotification", "Heartbeat")
                    )
                    >= expected
                ),
                60,
                "everything upstream",
            )
            found["upstream_done"] = time.perf_counter() - began
        if "down" in label:
            wait_for(
                lambda: (
                    appliance.query("SELECT count(*) FROM upstream_queue")[0][0] >= meter_values + 2
                ),
                15,
                "the queue",
            )
            found["queued"] = appliance.query("SELECT count(*) FROM upstream_queue")[0][0]
        cp.close()
    finally:
        appliance.stop()
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def report(results: list[dict[str, Any]]) -> None:
    print(f"\n{'':34}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'n':>6}")
    for action in ("MeterValues", "StatusNotification", "StartTransaction", "StopTransaction"):
        for found in results:
            times = found["times"].get(action, [])
            if not times:
                continue
            name = f"{action}, {found['label']}"
            print(
                f"{name:34}{ms(percentile(times, 0.5))} {ms(percentile(times, 0.99))}"
                f" {ms(max(times))}{len(times):6}"
            )
        print()
    for found in results:
        every = [t for times in found["times"].values() for t in times]
        line = (
            f"{found['label']:16} all {len(every)} round trips: p50 {ms(percentile(every, 0.5))}"
            f" ms, p99 {ms(percentile(every, 0.99))} ms; session {found['session']:.2f} s"
        )
        if "upstream_done" in found:
            line += f"; everything upstream after {found['upstream_done']:.2f} s"
        if "queued" in found:
            line += f"; {found['queued']} waiting in upstream_queue"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meter-values", type=int, default=200)
    parser.add_argument("--statuses", type=int, default=20)
    args = parser.parse_args()
    print(
        f"1.6 charge point, one session: StartTransaction, {args.meter_values} MeterValues,"
        f" {args.statuses} StatusNotifications, StopTransaction; sequential round trips"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results.append(
            run("no upstream", folder / "none", "", args.meter_values, args.statuses, None)
        )
        up = RemoteUpstream()
        try:
            extra = f'\n[[upstream]]\nurl = "{up.url}"\nname = "billing"\n'
            results.append(
                run("upstream up", folder / "up", extra, args.meter_values, args.statuses, up)
            )
        finally:
            up.stop()
        extra = f'\n[[upstream]]\nurl = "ws://127.0.0.1:{free_port()}/ocpp"\nname = "billing"\n'
        results.append(
            run("upstream down", folder / "down", extra, args.meter_values, args.statuses, None)
        )
    report(results)


if __name__ == "__main__":
    main()
