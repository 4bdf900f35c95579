"""N simulated charge points in one trio run: start them, count what happens, print
progress, stop them cleanly on --duration, SIGINT or SIGTERM."""

from __future__ import annotations

import json
import math
import signal
import ssl
import sys
import time
from collections import Counter
from typing import Any, TextIO

import trio

from appliance.rpc import DIALECTS, SchemaSet
from appliance.rpc.dialects import OCPP16, OCPP21, OCPP201
from appliance.simulator.chargepoint import ChargePoint
from appliance.simulator.ocpp2x import Ocpp2xChargePoint, Ocpp21ChargePoint
from appliance.simulator.ocpp16 import Ocpp16ChargePoint
from appliance.simulator.options import Options, Stats
from appliance.transport.client import ConnectError, ssl_context

KINDS: dict[str, type[ChargePoint]] = {
    OCPP16.subprotocol: Ocpp16ChargePoint,
    OCPP201.subprotocol: Ocpp2xChargePoint,
    OCPP21.subprotocol: Ocpp21ChargePoint,
}
PROTOCOL_CHOICES = [*KINDS, "mix"]
#: seconds between two charge points' connects: a thousand at once would be a SYN flood
#: of our own making, not a test of the server
CONNECT_SPACING_SEC = 0.002
#: progress line interval (seconds)
PROGRESS_SEC = 1.0
#: how long stopping may take before the remaining connections are cut
STOP_GRACE_SEC = 5.0


class Fleet:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.stats = Stats()
        self.stopping = False
        self.error: str | None = None
        #: a charge point got in: a later first connection that fails is a storm's
        #: casualty (retried), not a wrong URL or password (fatal)
        self.reached = False
        versions = _versions(options.protocol, options.count)
        self.schemas = {v: SchemaSet(DIALECTS[v]) for v in set(versions)}
        self.ssl_context: ssl.SSLContext | None = None
        if options.url.startswith("wss:") or options.cafile or options.cert:
            self.ssl_context = ssl_context(options.cafile, options.cert, options.key)
        width = max(3, len(str(options.count)))
        self.charge_points = [
            KINDS[version](self, i, f"{options.identity_prefix}{i + 1:0{width}d}")
            for i, version in enumerate(versions)
        ]
        self._scope = trio.CancelScope()

    def fatal(self, message: str) -> None:
        """A charge point could not even start: stop everything, report it."""
        if self.error is None:
            self.error = message
        self._scope.cancel()

    def notice(self, message: str) -> None:
        """One line on stderr when a charge point connects, disconnects or cannot reach
        the central system — not in --load mode, whose progress line counts them."""
        if not self.options.load:
            print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for cp in self.charge_points:
            cp.stop()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + STOP_GRACE_SEC)

    async def run(self, out: TextIO = sys.stderr) -> dict[str, Any]:
        progress = self.options.progress
        if progress is None:
            progress = self.options.load or out.isatty()
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals)
                if self.options.duration is not None:
                    nursery.start_soon(self._timer, self.options.duration)
                if progress:
                    nursery.start_soon(self._progress, out)
                async with trio.open_nursery() as charge_points:
                    for cp in self.charge_points:
                        charge_points.start_soon(cp.run)
                        if self.error is not None or self.stopping:
                            break
                        await trio.sleep(CONNECT_SPACING_SEC)
                nursery.cancel_scope.cancel()
        if progress and out.isatty():
            print(file=out)
        protocols = dict(Counter(cp.version for cp in self.charge_points))
        return self.stats.summary(self.options, protocols)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.stop()

    async def _timer(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.stop()

    async def _progress(self, out: TextIO) -> None:
        tty = out.isatty()
        last_calls, last_time = 0, time.perf_counter()
        while True:
            await trio.sleep(PROGRESS_SEC)
            now = time.perf_counter()
            stats = self.stats
            rate = (stats.calls - last_calls) / (now - last_time)
            last_calls, last_time = stats.calls, now
            recent = sorted(stats.latencies[-2000:])
            p99 = recent[min(len(recent) - 1, int(0.99 * len(recent)))] * 1000 if recent else 0
            connected = sum(1 for cp in self.charge_points if getattr(cp, "ws", None) is not None)
            line = (
                f"{now - stats.started:6.1f} s  {connected}/{len(self.charge_points)} connected"
                f"  {rate:8.1f} calls/s  p99 {p99:7.2f} ms  sessions {stats.sessions}"
                f"  errors {sum(stats.errors.values())}  reconnects {stats.reconnects}"
            )
            print(f"\r{line}" if tty else line, end="" if tty else "\n", file=out, flush=True)


def _versions(protocol: str, count: int) -> list[str]:
    if protocol == "mix":
        names = list(KINDS)
        return [names[i % len(names)] for i in range(count)]
    return [protocol] * count


def format_summary(summary: dict[str, Any]) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in summary["errors"].items()) or "none"
    protocols = ", ".join(f"{n} × {p}" for p, n in summary["protocols"].items())

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g} ms"

    return (
        f"{summary['charge_points']} charge points ({protocols}) against {summary['url']}, "
        f"{summary['elapsed_s']:g} s\n"
        f"  calls      {summary['calls']} ({summary['calls_per_s']:g}/s)\n"
        f"  latency    p50 {ms(summary['p50_ms'])}, p99 {ms(summary['p99_ms'])}, "
        f"max {ms(summary['max_ms'])}\n"
        f"  sessions   {summary['sessions']} completed\n"
        f"  answered   {summary['answered_csms_calls']} calls from the central system\n"
        f"  reconnects {summary['reconnects']}\n"
        f"  errors     {errors}\n"
    )


def simulate(options: Options, as_json: bool = False) -> int:
    """Run the fleet; print the summary. 0: ran (errors are in the summary), 1: could not
    connect at all."""
    if not math.isfinite(options.speed) or options.speed <= 0:
        raise ValueError("--speed must be a positive number")
    try:
        fleet = Fleet(options)
    except ConnectError as exc:
        print(f"ocpp-appliance simulate: {exc}", file=sys.stderr)
        return 1
    summary = trio.run(fleet.run)
    if fleet.error is not None:
        print(f"ocpp-appliance simulate: {fleet.error}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary), end="")
    return 0
