"""What a simulation is asked to do (`Options`) and what it counted (`Stats`)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from appliance.rpc.dialects import OCPP16

#: latencies kept for the percentiles; beyond it, a uniform sample (reservoir)
MAX_LATENCY_SAMPLES = 1_000_000


@dataclass(slots=True)
class Options:
    url: str = "ws://127.0.0.1:9000"
    count: int = 1
    protocol: str = OCPP16.subprotocol
    identity_prefix: str = "SIM"
    duration: float | None = None
    meter_interval: float = 60.0
    speed: float = 1.0
    password: str | None = None
    cafile: str | None = None
    cert: str | None = None
    key: str | None = None
    load: bool = False
    progress: bool | None = None  # None: in --load mode or on a terminal


@dataclass(slots=True)
class Stats:
    calls: int = 0
    answered: int = 0
    sessions: int = 0
    reconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    #: seconds from the TCP connect to the 101 of each reconnection (a storm's cost)
    reconnect_handshakes: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def call_done(self, seconds: float) -> None:
        self.calls += 1
        if len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(seconds)

    def reconnected(self, handshake_seconds: float) -> None:
        self.reconnects += 1
        if len(self.reconnect_handshakes) < MAX_LATENCY_SAMPLES:
            self.reconnect_handshakes.append(handshake_seconds)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def summary(self, options: Options, protocols: dict[str, int]) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        ordered = sorted(self.latencies)
        handshakes = sorted(self.reconnect_handshakes)

        def ms(q: float, ordered: list[float] = ordered) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {
            "url": options.url,
            "charge_points": options.count,
            "protocols": protocols,
            "mode": "load" if options.load else "sessions",
            "elapsed_s": round(elapsed, 2),
            "calls": self.calls,
            "calls_per_s": round(self.calls / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else None,
            "sessions": self.sessions,
            "answered_csms_calls": self.answered,
            "reconnects": self.reconnects,
            "reconnect_handshake_p50_ms": ms(0.5, handshakes),
            "reconnect_handshake_p99_ms": ms(0.99, handshakes),
            "reconnect_handshake_max_ms": ms(1.0, handshakes),
            "errors": dict(self.errors),
        }
