"""`ocpp-appliance simulate` against the real appliance, against a central system built
on the `ocpp` package, and with bad input — as a user runs it: the CLI as a subprocess,
the database read as a script would."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import Appliance, appliance_command, run_cli, wait_for

FAST = ["--speed", "600", "--meter-interval", "30"]


def simulate(url: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli("simulate", "--url", url, *args)


def start_simulator(url: str, folder: Path, *args: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [*appliance_command(), "simulate", "--url", url, "--json", *args],
        stdout=(folder / "sim.out").open("w"),
        stderr=(folder / "sim.err").open("w"),
    )


def config_of(appliance: Appliance) -> list[str]:
    return ["--config", str(appliance.folder / "appliance.toml")]


# ------------------------------------------------------------------------- sessions


def test_each_version_boots_and_completes_sessions(appliance: Appliance) -> None:
    done = simulate(appliance.url, "--count", "6", "--protocol", "mix", "--duration", "8",
                    "--json", *FAST)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["errors"] == {}
    assert summary["protocols"] == {"ocpp1.6": 2, "ocpp2.0.1": 2, "ocpp2.1": 2}
    assert summary["sessions"] >= 6

    appliance.wait_rows("SELECT 1 FROM connection_log WHERE event = 'disconnect'", count=6)
    protocols = dict(appliance.query(
        "SELECT identity, protocol FROM connection_log WHERE event = 'connect'"))  # fmt: skip
    assert sorted(protocols.values()) == ["ocpp1.6"] * 2 + ["ocpp2.0.1"] * 2 + ["ocpp2.1"] * 2
    finished = appliance.query(
        "SELECT identity, transaction_id, meter_start_wh, meter_stop_wh, energy_wh, id_token "
        "FROM transactions WHERE stopped_at IS NOT NULL"
    )
    assert {row[0] for row in finished} == set(protocols)
    for identity, tx, start, stop, energy, token in finished:
        # a session the end of --duration cut short right after its start may be empty
        assert stop >= start and energy == pytest.approx(stop - start), (identity, tx)
        assert token.startswith("TAG")
    charged = {row[0] for row in finished if row[3] > row[2]}
    assert charged == set(protocols), "every charge point charged some energy"
    # within one transaction: the energy register and the SoC only rise, power is 3-phase AC
    identity, tx = max(finished, key=lambda row: row[4])[:2]
    series = appliance.query(
        "SELECT measurand, phase, value FROM meter_values WHERE identity = ? "
        "AND transaction_id = ? ORDER BY seq", identity, tx,
    )  # fmt: skip
    energy = [v for m, p, v in series if m == "Energy.Active.Import.Register"]
    soc = [v for m, p, v in series if m == "SoC"]
    assert len(energy) >= 3 and energy == sorted(energy) and energy[-1] > energy[0]
    assert soc == sorted(soc) and soc[-1] > soc[0]
    assert {p for m, p, v in series if m == "Current.Import"} >= {"L1", "L2", "L3"}
    volts = [v for m, p, v in series if m == "Voltage"]
    assert volts and all(220 < v < 240 for v in volts)
    assert max(v for m, p, v in series if m == "Power.Active.Import") > 5000
    # the VIN sent with DataTransfer at plug-in reached the tree
    vins = appliance.query("SELECT id, val FROM states WHERE id LIKE '%.info.vin'")
    assert len(vins) == 6 and all(v.startswith("WVWZZZ1JZXW") for _, v in vins)
    # and the close was clean: 1000 from every charge point
    reasons = appliance.query("SELECT reason FROM connection_log WHERE event = 'disconnect'")
    assert len(reasons) == 6 and all("(1000" in r for (r,) in reasons), reasons


# ------------------------------------------------------------------------- controls


def _set(appliance: Appliance, state: str, value: str) -> subprocess.CompletedProcess:
    return run_cli("set", state, value, *config_of(appliance))


def _status(appliance: Appliance, identity: str) -> str | None:
    rows = appliance.query(
        "SELECT val FROM states WHERE id = ?", f"{identity}.evse.1.connector.1.status"
    )
    return rows[0][0] if rows else None


def _power_after(appliance: Appliance, identity: str, since_ms: int, count: int = 3) -> list:
    rows = appliance.wait_rows(
        "SELECT value FROM meter_values WHERE identity = ? AND measurand = "
        "'Power.Active.Import' AND received_at > ? ORDER BY seq",
        identity, since_ms, count=count, timeout=30,
    )  # fmt: skip
    return [v for (v,) in rows[:count]]


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_controls_reach_a_simulated_charge_point(
    start_appliance, tmp_path: Path, version: str
) -> None:
    appliance = start_appliance("[device_model]\nfetch_on_boot = true\n")
    sim = start_simulator(appliance.url, tmp_path / "sim", "--protocol", version,
                          "--speed", "200", "--meter-interval", "20")  # fmt: skip
    identity = "SIM001"
    try:
        wait_for(lambda: _status(appliance, identity), 15, "the first status")

        # charge limit: the next meter values show lower power; clearing it lifts the cap
        # (the session must be charging at full power first)
        appliance.wait_rows(
            "SELECT 1 FROM meter_values WHERE identity = ? AND measurand = "
            "'Power.Active.Import' AND value > 6000", identity, timeout=30,
        )  # fmt: skip
        # chargeLimitType defaults to A: 8 A × 3 phases × 230 V = 5 520 W
        limited = _set(appliance, f"{identity}.control.chargeLimit", "8")
        assert limited.returncode == 0, limited.stderr
        assert all(0 < p <= 5520 for p in _power_after(appliance, identity, _now_ms()))
        cleared = _set(appliance, f"{identity}.control.chargeLimit", "")
        assert cleared.returncode == 0, cleared.stderr
        appliance.wait_rows(
            "SELECT 1 FROM meter_values WHERE identity = ? AND measurand = "
            "'Power.Active.Import' AND value > 6000 AND received_at > ?",
            identity, _now_ms(), timeout=30,
        )  # fmt: skip

        # availability: the connector reports Unavailable (after the running session)
        off = _set(appliance, f"{identity}.control.availability", "false")
        assert off.returncode == 0, off.stderr
        wait_for(lambda: _status(appliance, identity) == "Unavailable", 30, "Unavailable")
        on = _set(appliance, f"{identity}.control.availability", "true")
        assert on.returncode == 0, on.stderr
        wait_for(lambda: _status(appliance, identity) != "Unavailable", 15, "available again")

        # remote start → a transaction with our token; remote stop ends it with Remote
        assert _set(appliance, f"{identity}.control.requestStartTransaction.idToken",
                    '"REMOTE1"').returncode == 0  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            while True:  # a charge point busy with its own session says Rejected: try again
                started = _set(appliance, f"{identity}.control.requestStartTransaction.trigger",
                               "true")  # fmt: skip
                if started.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert started.returncode == 0, started.stderr
            appliance.wait_rows(
                "SELECT 1 FROM transactions WHERE identity = ? AND id_token = 'REMOTE1'"
                " AND stopped_at IS NULL", identity, timeout=15,
            )  # fmt: skip
            stopped = _set(appliance, f"{identity}.control.requestStopTransaction.trigger", "true")
            if stopped.returncode == 0 or time.monotonic() > deadline:
                break
            # at --speed 200 a slow machine may see the simulated session end by itself
            # before the stop arrives: the charge point then rightly says Rejected
            wait_for(
                lambda: not appliance.query(
                    "SELECT 1 FROM transactions WHERE identity = ? AND id_token = 'REMOTE1'"
                    " AND stopped_at IS NULL", identity,
                ),
                10,
                f"the session to have ended by itself (its stop said {stopped.stderr!r})",
            )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr
        appliance.wait_rows(
            "SELECT 1 FROM transactions WHERE identity = ? AND id_token = 'REMOTE1' "
            "AND stop_reason = 'Remote'", identity, timeout=15,
        )  # fmt: skip

        # configuration / device model: fetched on boot, written, read back
        if version == "ocpp1.6":
            key = f"{identity}.config.MeterValueSampleInterval"
            read = ("GetConfiguration", '{"key": ["MeterValueSampleInterval"]}')
        else:
            key = f"{identity}.dm.SampledDataCtrlr.TxUpdatedInterval.Actual.value"
            read = ("GetVariables", json.dumps({"getVariableData": [
                {"component": {"name": "SampledDataCtrlr"},
                 "variable": {"name": "TxUpdatedInterval"}}]}))  # fmt: skip
        appliance.wait_rows("SELECT val FROM states WHERE id = ?", key, timeout=15)
        written = _set(appliance, key, "15")
        assert written.returncode == 0, written.stderr
        answer = run_cli("call", identity, *read, *config_of(appliance))
        assert answer.returncode == 0, answer.stderr
        assert '"15"' in answer.stdout

        # reset: the charge point disconnects, reconnects and boots again
        reset = _set(appliance, f"{identity}.control.softReset.trigger", "true")
        assert reset.returncode == 0, reset.stderr
        appliance.wait_rows(
            "SELECT 1 FROM connection_log WHERE identity = ? AND event = 'connect'",
            identity, count=2, timeout=15,
        )  # fmt: skip
        boots = "SELECT 1 FROM messages WHERE identity = ? AND action = 'BootNotification' AND direction = 'in'"  # noqa: E501
        appliance.wait_rows(boots, identity, count=2, timeout=15)
    finally:
        sim.send_signal(signal.SIGINT)
        code = sim.wait(15)
    summary = json.loads((tmp_path / "sim" / "sim.out").read_text())
    assert code == 0, (tmp_path / "sim" / "sim.err").read_text()
    assert summary["reconnects"] == 1
    assert summary["errors"] == {}, summary
    time.sleep(0.3)
    last = appliance.query(
        "SELECT reason FROM connection_log WHERE identity = ? ORDER BY seq DESC LIMIT 1", identity
    )
    assert "(1000" in last[0][0]


# ----------------------------------------------------------------------- load mode


def test_load_mode_prints_progress_and_a_summary(appliance: Appliance) -> None:
    done = simulate(appliance.url, "--count", "4", "--protocol", "mix", "--load",
                    "--duration", "2.5", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["mode"] == "load" and summary["errors"] == {}
    assert summary["calls"] > 100 and summary["calls_per_s"] > 40
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    progress = [line for line in done.stderr.splitlines() if "calls/s" in line]
    assert len(progress) >= 2 and "4/4 connected" in progress[-1]
    # every answered call was recorded (boots are counted as calls too)
    appliance.wait_rows("SELECT 1 FROM messages WHERE action = 'MeterValues' AND direction = 'in' "
                        "AND message_type = 2", count=summary["calls"] - 4, timeout=20)  # fmt: skip


# --------------------------------------------------------------- another CSMS


PEER = textwrap.dedent('''
    """A central system on the `ocpp` package: 1.6, 2.0.1 and 2.1."""
    import asyncio, sys
    from datetime import datetime, timezone
    import websockets
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint as CP16, call as c16, call_result as r16
    from ocpp.v201 import ChargePoint as CP201, call as c201, call_result as r201
    from ocpp.v21 import ChargePoint as CP21, call as c21, call_result as r21

    RESULTS = open(sys.argv[1], "a", buffering=1)
    now = lambda: datetime.now(timezone.utc).isoformat()

    async def probe(cp, request):
        await asyncio.sleep(0.2)
        try:
            answer = await cp.call(request, suppress=False)
            RESULTS.write(f"ok {cp.id} {type(request).__name__} {answer}\\n")
        except Exception as exc:
            RESULTS.write(f"fail {cp.id} {type(request).__name__} {exc!r}\\n")

    class V16(CP16):
        @on("BootNotification")
        async def boot(self, **kw):
            asyncio.ensure_future(probe(self, c16.GetConfiguration()))
            asyncio.ensure_future(probe(self, c16.TriggerMessage(requested_message="Heartbeat")))
            return r16.BootNotification(current_time=now(), interval=300, status="Accepted")
        @on("Heartbeat")
        async def hb(self, **kw):
            return r16.Heartbeat(current_time=now())
        @on("StatusNotification")
        async def st(self, **kw):
            return r16.StatusNotification()
        @on("DataTransfer")
        async def dt(self, **kw):
            return r16.DataTransfer(status="Accepted")
        @on("Authorize")
        async def auth(self, **kw):
            return r16.Authorize(id_tag_info={"status": "Accepted"})
        @on("StartTransaction")
        async def start_tx(self, **kw):
            return r16.StartTransaction(transaction_id=7, id_tag_info={"status": "Accepted"})
        @on("MeterValues")
        async def mv(self, **kw):
            return r16.MeterValues()
        @on("StopTransaction")
        async def stop_tx(self, **kw):
            RESULTS.write(f"session {self.id}\\n")
            return r16.StopTransaction()

    def v2x(base, call, result):
        class CP(base):
            @on("BootNotification")
            async def boot(self, **kw):
                asyncio.ensure_future(probe(self, call.GetVariables(get_variable_data=[
                    {"component": {"name": "OCPPCommCtrlr"},
                     "variable": {"name": "HeartbeatInterval"}}])))
                asyncio.ensure_future(probe(self, call.GetBaseReport(
                    request_id=1, report_base="FullInventory")))
                asyncio.ensure_future(probe(self, call.ClearCache()))
                return result.BootNotification(current_time=now(), interval=300,
                                               status="Accepted")
            @on("Heartbeat")
            async def hb(self, **kw):
                return result.Heartbeat(current_time=now())
            @on("StatusNotification")
            async def st(self, **kw):
                return result.StatusNotification()
            @on("DataTransfer")
            async def dt(self, **kw):
                return result.DataTransfer(status="Accepted")
            @on("Authorize")
            async def auth(self, **kw):
                return result.Authorize(id_token_info={"status": "Accepted"})
            @on("TransactionEvent")
            async def tx(self, event_type, **kw):
                if event_type == "Ended":
                    RESULTS.write(f"session {self.id}\\n")
                return result.TransactionEvent()
            @on("MeterValues")
            async def mv(self, **kw):
                return result.MeterValues()
            @on("NotifyReport")
            async def report(self, **kw):
                RESULTS.write(f"report {self.id}\\n")
                return result.NotifyReport()
        return CP

    KINDS = {"ocpp1.6": V16, "ocpp2.0.1": v2x(CP201, c201, r201), "ocpp2.1": v2x(CP21, c21, r21)}

    async def handler(ws):
        cp = KINDS[ws.subprotocol](ws.request.path.rsplit("/", 1)[-1], ws)
        try:
            await cp.start()
        except websockets.ConnectionClosed:
            pass

    async def main():
        async with websockets.serve(handler, "127.0.0.1", 0,
                                    subprotocols=["ocpp2.1", "ocpp2.0.1", "ocpp1.6"]) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.Future()

    asyncio.run(main())
''')


def test_sessions_complete_against_an_ocpp_package_central_system(tmp_path: Path) -> None:
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    results = tmp_path / "results.txt"
    peer = subprocess.Popen([sys.executable, str(script), str(results)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(peer.stdout.readline())  # type: ignore[union-attr]
        done = simulate(f"ws://127.0.0.1:{port}", "--count", "3", "--protocol", "mix",
                        "--duration", "5", "--json", *FAST)  # fmt: skip
    finally:
        peer.kill()
        peer.wait()
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["errors"] == {}, summary
    lines = results.read_text().splitlines()
    assert not [line for line in lines if line.startswith("fail")], lines
    # the peer's probes (validated by the ocpp package) were answered: 2 + 3 + 3
    assert len([line for line in lines if line.startswith("ok")]) == 8, lines
    sessions = {line.split()[1] for line in lines if line.startswith("session")}
    assert sessions == {"SIM001", "SIM002", "SIM003"}
    assert {line.split()[1] for line in lines if line.startswith("report")} == {"SIM002", "SIM003"}


# ------------------------------------------------------------------------ bad input


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ocpp-appliance")
    return lines[0]


def test_unreachable_url_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    done = simulate(f"ws://127.0.0.1:{port}", "--duration", "5")
    assert done.returncode == 1
    assert "Connection refused" in _one_line_error(done)


def test_refused_handshake_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # TEST_CONFIG ends inside [storage]: this top-level key needs a config of its own
    (tmp_path / "appliance.toml").write_text(
        'host = "127.0.0.1"\nport = 0\ndatabase = "a.db"\nidentity_allowlist = ["SOMEONE-ELSE"]\n'
        "[web]\nenabled = false\n"  # not the default port 9080: another appliance may hold it
    )
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [*appliance_command(), "serve", "--config", str(tmp_path / "appliance.toml")],
        stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        port = wait_for(lambda: re.search(r"listening on ws://[^:]+:(\d+)/", log.read_text()),
                        20, "the appliance").group(1)  # fmt: skip
        done = simulate(f"ws://127.0.0.1:{port}", "--count", "3", "--duration", "5")
    finally:
        server.kill()
        server.wait()
    assert done.returncode == 1
    line = _one_line_error(done)
    assert "HTTP 403" in line and "identity_allowlist" in line


def test_wrong_password_is_one_line_and_exit_1() -> None:
    """A server that wants Basic auth and refuses ours with 401."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            seen.append(conn.recv(65536))
            body = b"authentication failed\n"
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ocpp\""
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    done = simulate(f"ws://127.0.0.1:{port}/ocpp", "--password", "wrong", "--duration", "5")
    thread.join(5)
    listener.close()
    assert done.returncode == 1
    line = _one_line_error(done)
    assert "HTTP 401" in line and "--password" in line
    # Basic auth with the identity as user: base64("SIM001:wrong")
    assert b"GET /ocpp/SIM001 HTTP/1.1" in seen[0]
    assert b"Authorization: Basic U0lNMDAxOndyb25n" in seen[0]


@pytest.mark.parametrize(
    "args",
    [["--count", "0"], ["--speed", "fast"], ["--protocol", "ocpp1.5"],
     ["--url", "http://127.0.0.1:9000"], ["--cert", "c.pem"]],
)  # fmt: skip
def test_bad_usage_exits_2(args: list[str]) -> None:
    done = run_cli("simulate", *args)
    assert done.returncode == 2
    assert done.stderr.strip()


def test_password_against_the_appliance(start_appliance) -> None:
    """Security profile 1 end to end: the right password gets in, a wrong one is one line
    and exit 1."""
    appliance = start_appliance('[charge_points."SIM001"]\npassword = "correct-horse-battery-1"\n')
    wrong = simulate(appliance.url, "--password", "wrong-password-12345", "--duration", "5")
    assert wrong.returncode == 1
    line = _one_line_error(wrong)
    assert "HTTP 401" in line
    right = simulate(
        appliance.url, "--password", "correct-horse-battery-1", "--duration", "3", *FAST
    )
    assert right.returncode == 0, right.stderr
    rows = appliance.wait_rows(
        "SELECT event FROM connection_log WHERE identity = 'SIM001' AND event = 'connect'"
    )
    assert rows
    refused = appliance.query(
        "SELECT reason FROM connection_log WHERE identity = 'SIM001' AND event = 'refused'"
    )
    assert refused and "wrong-password" not in refused[0][0]
