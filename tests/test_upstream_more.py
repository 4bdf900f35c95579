"""A second backend, continued (issue 24; README "A second backend"): a chain of two real
appliances, OCPP 2.1 forwarded in 2.1, `authorize = "upstream"` deciding a 2.x
TransactionEvent's idToken, the upstream stopped for 30 s while the charge point stays
connected, and a TLS upstream that wants a client certificate (security profile 3).

The upstreams are the `ocpp` package's ChargePoint handlers on a `websockets` server
(tests/test_upstream.py's `Upstream`) or a second `ocpp-appliance serve`; the charge
points are the `ocpp` package; what arrived is read from the upstream's records and, with
a second SQLite connection, from the databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from typing import Any, ClassVar

import pytest
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v21 import ChargePoint as Cp21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from test_security import make_pki
from test_tree_sessions import ocpp_session
from test_upstream import (
    Csms201,
    Upstream,
    charge16,
    now,
    session16,
    upstream_config,
    wait_calls,
)

import conftest

# ------------------------------------------------------------------- upstreams


def token_info(id_token: dict[str, Any]) -> dict[str, str]:
    """The upstream's verdict: it blocks tokens starting with BAD, accepts the others
    (the opposite of the local rules in the tests below)."""
    return {"status": "Blocked" if id_token["id_token"].startswith("BAD") else "Accepted"}


class Csms201Tokens(Csms201):
    """A 2.0.1 upstream that decides tokens: idTokenInfo in Authorize and in every
    TransactionEvent that carries an idToken."""

    @on("Authorize")
    def authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return result201.Authorize(id_token_info=token_info(id_token))

    @on("TransactionEvent")
    def transaction_event(self, id_token: dict[str, Any] | None = None, **_: Any) -> Any:
        info = None if id_token is None else token_info(id_token)
        return result201.TransactionEvent(id_token_info=info)


class Csms21(Cp21):
    """The upstream's side of one OCPP 2.1 charge point (the `ocpp` package's v21)."""

    @on("BootNotification")
    def boot(self, **_: Any) -> Any:
        return result21.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self, **_: Any) -> Any:
        return result21.Heartbeat(current_time=now())

    @on("StatusNotification")
    def status(self, **_: Any) -> Any:
        return result21.StatusNotification()

    @on("Authorize")
    def authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return result21.Authorize(id_token_info=token_info(id_token))

    @on("TransactionEvent")
    def transaction_event(self, id_token: dict[str, Any] | None = None, **_: Any) -> Any:
        info = None if id_token is None else token_info(id_token)
        return result21.TransactionEvent(id_token_info=info)

    @on("MeterValues")
    def meter_values(self, **_: Any) -> Any:
        return result21.MeterValues()

    @on("NotifyReport")
    def notify_report(self, **_: Any) -> Any:
        return result21.NotifyReport()


class Deciding(Upstream):
    """`Upstream` whose 2.0.1 and 2.1 sides answer idTokens themselves."""

    handlers: ClassVar[dict[str, type]] = {
        **Upstream.handlers,
        "ocpp2.0.1": Csms201Tokens,
        "ocpp2.1": Csms21,
    }


class TlsUpstream(Upstream):
    """`Upstream` on wss:// with `context` (here: it requires a client certificate)."""

    def __init__(self, version: str, context: ssl.SSLContext) -> None:
        super().__init__(version)
        self.context = context

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ocpp"


# --------------------------------------------------------------------- helpers


def state(appliance: conftest.Appliance, key: str) -> Any:
    """A state's value (None when it does not exist yet)."""
    rows = appliance.query("SELECT val FROM states WHERE id = ?", key)
    return rows[0][0] if rows else None


def wait_state(appliance: conftest.Appliance, key: str, value: Any, timeout: float = 15) -> None:
    try:
        conftest.wait_for(lambda: state(appliance, key) == value, timeout, f"{key} = {value!r}")
    except AssertionError as exc:
        prefix = key.rsplit(".", 1)[0]
        shown = appliance.query("SELECT id, val FROM states WHERE id LIKE ?", prefix + ".%")
        raise AssertionError(f"{exc}; the states: {shown}; log: {appliance.log()[-2000:]}") from exc


def queue_length(appliance: conftest.Appliance) -> int:
    return appliance.query("SELECT count(*) FROM upstream_queue")[0][0]


def sent_by_charge_point(appliance: conftest.Appliance, identity: str, actions: set[str]) -> list:
    """The CALLs the charge point sent the appliance, in order: (action, payload)."""
    rows = appliance.query(
        "SELECT action, payload FROM messages WHERE identity = ? AND peer IS NULL"
        " AND direction = 'in' AND message_type = 2 ORDER BY seq",
        identity,
    )
    return [(a, json.loads(p)[3]) for a, p in rows if a in actions]


def boot201(module: Any) -> Any:
    return module.BootNotification(
        charging_station={"model": "Up", "vendor_name": "T"}, reason="PowerUp"
    )


TRANSACTION16 = {"StartTransaction", "MeterValues", "StopTransaction"}


# ======================================================================= tests


def test_a_second_appliance_as_the_upstream_holds_the_session_and_its_meter_values(
    start_appliance,
):
    """A chain: the first appliance's upstream is a second `serve`. A 1.6 charge point's
    whole session on the first is, in the second's database, a transactions row with its
    start, stop and energy under the second's own transaction id, and its meter values
    under that id; the charge point got the first's answers."""
    second = start_appliance(name="second")

    async def elsewhere(cp: Any) -> int:
        # another charge point charged at the second already: its ids are not the first's
        await cp.call(call16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        started = await cp.call(
            call16.StartTransaction(connector_id=1, id_tag="X", meter_start=0, timestamp=now())
        )
        return started.transaction_id

    taken = asyncio.run(session16(second.url, "OTHER", elsewhere))
    first = start_appliance(f'\n[[upstream]]\nurl = "{second.url}/ocpp"\nname = "second"\n')
    answers = asyncio.run(session16(first.url, "CHAIN", charge16))
    assert answers["boot"].status == "Accepted"
    local = answers["start"].transaction_id

    columns = (
        "transaction_id, connector_id, id_token, started_at, stopped_at, meter_start_wh,"
        " meter_stop_wh, energy_wh"
    )
    [there] = second.wait_rows(
        f"SELECT {columns} FROM transactions WHERE identity = 'CHAIN' AND stopped_at IS NOT NULL",
        timeout=20,
    )
    # the second can have the stop before the first's commit interval is up: wait for both
    [here] = first.wait_rows(
        f"SELECT {columns} FROM transactions WHERE identity = 'CHAIN' AND stopped_at IS NOT NULL"
    )
    remote = there[0]
    assert here[0] == str(local) and remote not in (str(local), str(taken))
    assert there[1:3] == (1, "TAG1")
    assert there[5:] == (1000, 2500, 1500)
    assert there[1:] == here[1:]  # the charge point's own timestamps, as sent
    meters = second.wait_rows(
        "SELECT transaction_id, measurand, unit, value FROM meter_values"
        " WHERE identity = 'CHAIN' AND value IN (1500, 2000) ORDER BY seq",
        count=2,
    )
    assert meters == [
        (remote, "Energy.Active.Import.Register", "Wh", 1500),
        (remote, "Energy.Active.Import.Register", "Wh", 2000),
    ]
    assert first.wait_rows("SELECT local_id, remote_id FROM upstream_transactions") == [
        (str(local), int(remote))
    ]
    # the second saw the chain as the charge point itself: its identity and version
    assert second.query(
        "SELECT DISTINCT protocol FROM connection_log WHERE identity = 'CHAIN'"
        " AND event = 'connect'"
    ) == [("ocpp1.6",)]


def test_a_21_charge_point_is_forwarded_in_21_in_order(start_appliance):
    """OCPP 2.1: the upstream is spoken to in ocpp2.1 and gets the boot, the status and a
    TransactionEvent session (Started, Updated, Ended) in order, each exactly as the
    charge point sent it."""
    upstream = Deciding("ocpp2.1").start()
    appliance = start_appliance(upstream_config(upstream))

    async def scenario(cp: Any) -> list[Any]:
        answers = [await cp.call(boot201(call21))]
        await cp.call(
            call21.StatusNotification(
                timestamp=now(), connector_status="Occupied", evse_id=1, connector_id=1
            )
        )
        steps = (
            ("Started", "CablePluggedIn", 1000),
            ("Updated", "MeterValuePeriodic", 1800),
            ("Ended", "EVCommunicationLost", 2600),
        )
        for seq, (event, trigger, register) in enumerate(steps):
            info: dict[str, Any] = {"transaction_id": "TX-21"}
            if event == "Ended":
                info["stopped_reason"] = "EVDisconnected"
            answers.append(
                await cp.call(
                    call21.TransactionEvent(
                        event_type=event,
                        timestamp=now(),
                        trigger_reason=trigger,
                        seq_no=seq,
                        transaction_info=info,
                        evse={"id": 1, "connector_id": 1} if seq == 0 else None,
                        meter_value=[
                            {
                                "timestamp": now(),
                                "sampled_value": [
                                    {
                                        "value": register,
                                        "measurand": "Energy.Active.Import.Register",
                                    }
                                ],
                            }
                        ],
                    )
                )
            )
        return answers

    try:
        answers = asyncio.run(ocpp_session(appliance.url, "UP-21", "ocpp2.1", Cp21, scenario))
        assert answers[0].status == "Accepted"
        calls = wait_calls(upstream, "UP-21", 5, appliance=appliance)
        assert upstream.subprotocols == ["ocpp2.1"]
        assert [a for a, _ in calls] == [
            "BootNotification", "StatusNotification", "TransactionEvent", "TransactionEvent",
            "TransactionEvent",
        ]  # fmt: skip
        events = [p for a, p in calls if a == "TransactionEvent"]
        assert [(e["eventType"], e["seqNo"]) for e in events] == [
            ("Started", 0),
            ("Updated", 1),
            ("Ended", 2),
        ]
        assert [e["meterValue"][0]["sampledValue"][0]["value"] for e in events] == [
            1000,
            1800,
            2600,
        ]
        actions = {"BootNotification", "StatusNotification", "TransactionEvent"}
        conftest.wait_for(
            lambda: len(sent_by_charge_point(appliance, "UP-21", actions)) == 5, 10, "messages"
        )
        assert calls == sent_by_charge_point(appliance, "UP-21", actions)
        rows = appliance.wait_rows(
            "SELECT DISTINCT protocol FROM messages WHERE identity = 'UP-21' AND peer = 'billing'"
        )
        assert rows == [("ocpp2.1",)]
    finally:
        upstream.stop()


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_with_authorize_upstream_its_idtokeninfo_answers_a_transaction_event(
    start_appliance, version
):
    """authorize = "upstream", 2.x: a TransactionEvent with an idToken the local rules
    accept (BAD1) but the upstream blocks is Blocked for the charge point; one the local
    rules do not know (GOOD1) but the upstream accepts is Accepted; the state says the
    upstream decided. With the upstream gone, the same tokens get the local verdicts."""
    upstream = Deciding(version).start()
    extra = upstream_config(upstream, 'authorize = "upstream"\n')
    appliance = start_appliance(f'{extra}\n[authorization]\nid_tokens = ["BAD1"]\n')
    module, cls = (call201, Cp201) if version == "ocpp2.0.1" else (call21, Cp21)
    identity = f"UP-TOKEN-{version[-3:].replace('.', '')}"

    def started(tx: str, token: str) -> Any:
        return module.TransactionEvent(
            event_type="Started",
            timestamp=now(),
            trigger_reason="Authorized",
            seq_no=0,
            transaction_info={"transaction_id": tx},
            evse={"id": 1, "connector_id": 1},
            id_token={"id_token": token, "type": "ISO14443"},
        )

    def scenario(wait: bool) -> Any:
        async def run(cp: Any) -> dict[str, str]:
            await cp.call(boot201(module))
            if wait:  # the upstream connected (it decides only then)
                await asyncio.to_thread(wait_calls, upstream, identity, 1)
            found = {}
            for tx, token in (("TX-A", "BAD1"), ("TX-B", "GOOD1")):
                answer = await cp.call(started(f"{tx}-{wait}", token))
                found[token] = answer.id_token_info["status"]
            return found

        return run

    try:
        found = asyncio.run(ocpp_session(appliance.url, identity, version, cls, scenario(True)))
        assert found == {"BAD1": "Blocked", "GOOD1": "Accepted"}
        events = [
            p
            for a, p in wait_calls(upstream, identity, 3, appliance=appliance)
            if a == "TransactionEvent"
        ]
        assert [e["idToken"]["idToken"] for e in events] == ["BAD1", "GOOD1"]
        wait_state(
            appliance,
            f"{identity}.upstream.billing.authorization",
            "TransactionEvent: the upstream's verdict, Accepted",
        )
    finally:
        upstream.stop()
    started_at = time.perf_counter()
    local = asyncio.run(ocpp_session(appliance.url, identity, version, cls, scenario(False)))
    assert local["BAD1"] == "Accepted" and local["GOOD1"] != "Accepted"
    assert time.perf_counter() - started_at < 5  # at once, not after 5 s per token


def test_the_upstream_stopped_for_30_s_while_the_charge_point_stays_connected(
    start_appliance,
):
    """1.6: mid-session the upstream stops for 30 s while the charge point stays connected
    and goes on (meter values, a status, a heartbeat, the stop), answered at once. Once the
    upstream is back it gets the boot and the latest status first, then the waiting
    transaction messages: every transaction message of the session exactly once, in
    order, with the charge point's timestamps and the upstream's own transaction id."""
    upstream = Upstream("ocpp1.6").start()
    appliance = start_appliance(upstream_config(upstream))
    identity = "UP-OUT"
    key = f"{identity}.upstream.billing"

    def meter(local: int, register: int) -> Any:
        return call16.MeterValues(
            connector_id=1,
            transaction_id=local,
            meter_value=[{"timestamp": now(), "sampledValue": [{"value": str(register)}]}],
        )

    async def scenario(cp: Any) -> tuple[int, float]:
        await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing")
        )
        start = await cp.call(
            call16.StartTransaction(connector_id=1, id_tag="TAG", meter_start=1000, timestamp=now())
        )
        local = start.transaction_id
        await cp.call(meter(local, 1500))
        await asyncio.to_thread(wait_calls, upstream, identity, 4)
        await asyncio.to_thread(
            conftest.wait_for, lambda: queue_length(appliance) == 0, 10, "the upstream answered"
        )
        upstream.stop()
        stopped = time.monotonic()
        await asyncio.to_thread(wait_state, appliance, f"{key}.connected", 0)

        began = time.perf_counter()
        await cp.call(meter(local, 2000))
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Finishing")
        )
        await cp.call(call16.Heartbeat())
        await cp.call(meter(local, 2500))
        await cp.call(
            call16.StopTransaction(meter_stop=3000, timestamp=now(), transaction_id=local)
        )
        took = time.perf_counter() - began

        await asyncio.to_thread(wait_state, appliance, f"{key}.waiting", 3)
        assert queue_length(appliance) == 3
        assert str(state(appliance, f"{key}.reason")).startswith(("cannot connect", "connection"))
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        assert upstream.calls(identity)[4:] == []  # nothing arrived while it was away
        upstream.start()
        await asyncio.to_thread(
            conftest.wait_for,
            lambda: [a for a, _ in upstream.calls(identity)][-1:] == ["StopTransaction"],
            45,
            "the StopTransaction upstream",
        )
        await asyncio.to_thread(wait_state, appliance, f"{key}.waiting", 0)
        await asyncio.to_thread(wait_state, appliance, f"{key}.connected", 1)
        return local, took

    try:
        local, took = asyncio.run(session16(appliance.url, identity, scenario))
        assert took < 5  # answered from here while the upstream was away
        calls = upstream.calls(identity)
        actions = [a for a, _ in calls]
        assert actions == [
            "BootNotification", "StatusNotification", "StartTransaction", "MeterValues",
            # back: the boot and the latest status first, then what waited
            "BootNotification", "StatusNotification", "MeterValues", "MeterValues",
            "StopTransaction",
        ]  # fmt: skip
        assert calls[5][1]["status"] == "Finishing"
        remote = calls[3][1]["transactionId"]
        assert remote >= 5001 and remote != local
        # every transaction message once, in order, as the charge point sent it but for
        # the upstream's transaction id
        mine = conftest.wait_for(
            lambda: (
                (found := sent_by_charge_point(appliance, identity, TRANSACTION16))
                and len(found) == 5
                and found
            ),
            10,
            "the charge point's messages",
        )
        theirs = [(a, p) for a, p in calls if a in TRANSACTION16]
        expected = [
            (a, {**p, "transactionId": remote} if "transactionId" in p else p) for a, p in mine
        ]
        assert [a for a, _ in theirs] == [
            "StartTransaction", "MeterValues", "MeterValues", "MeterValues", "StopTransaction",
        ]  # fmt: skip
        assert theirs == expected
        assert queue_length(appliance) == 0
        assert appliance.query(
            "SELECT local_id, remote_id FROM upstream_transactions WHERE identity = ?", identity
        ) == [(str(local), remote)]
    finally:
        upstream.stop()


def test_profile_3_a_tls_upstream_that_wants_a_client_certificate(start_appliance, tmp_path):
    """The upstream is wss:// and requires a client certificate. With `cert`, `key` and
    `ca` the link connects and the charge point's calls arrive; a second upstream table
    without a certificate is not connected, its reason says why, and the charge point is
    served all the same."""
    pki = make_pki(tmp_path / "pki", ["UP-TLS", "rogue-UP-TLS"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.folder / "server.crt", pki.folder / "server.key")
    context.load_verify_locations(pki.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    upstream = TlsUpstream("ocpp1.6", context).start()
    cert, key = pki.client("UP-TLS")
    rogue_cert, rogue_key = pki.client("rogue-UP-TLS")  # signed by a CA it does not trust
    appliance = start_appliance(
        f'\n[[upstream]]\nurl = "{upstream.url}"\nname = "secure"\n'
        f'cert = "{cert}"\nkey = "{key}"\nca = "{pki.server_ca}"\n'
        f'\n[[upstream]]\nurl = "{upstream.url}"\nname = "nocert"\nca = "{pki.server_ca}"\n'
        f'\n[[upstream]]\nurl = "{upstream.url}"\nname = "rogue"\nca = "{pki.server_ca}"\n'
        f'cert = "{rogue_cert}"\nkey = "{rogue_key}"\n'
    )

    async def scenario(cp: Any) -> tuple[str, Any, dict[str, Any]]:
        boot = await cp.call(
            call16.BootNotification(charge_point_model="Up", charge_point_vendor="T")
        )
        await asyncio.to_thread(wait_calls, upstream, "UP-TLS", 1)
        await cp.call(
            call16.StatusNotification(connector_id=1, error_code="NoError", status="Available")
        )
        await asyncio.to_thread(wait_calls, upstream, "UP-TLS", 2)
        for name in ("nocert", "rogue"):
            await asyncio.to_thread(wait_state, appliance, f"UP-TLS.upstream.{name}.connected", 0)
            await asyncio.to_thread(
                conftest.wait_for,
                lambda name=name: state(appliance, f"UP-TLS.upstream.{name}.reason"),
                15,
                "the reason",
            )
        heartbeat = await cp.call(call16.Heartbeat())
        # read while the charge point is connected (its links end with its connection)
        states = {
            f"{name}.{what}": state(appliance, f"UP-TLS.upstream.{name}.{what}")
            for name in ("secure", "nocert", "rogue")
            for what in ("connected", "reason")
        }
        return boot.status, heartbeat.current_time, states

    try:
        status, beat, states = asyncio.run(session16(appliance.url, "UP-TLS", scenario))
        assert status == "Accepted" and beat
        assert [a for a, _ in upstream.calls("UP-TLS")][:2] == [
            "BootNotification",
            "StatusNotification",
        ]
        assert upstream.subprotocols == ["ocpp1.6"]  # only the one with a certificate
        assert states["secure.connected"] == 1 and states["secure.reason"] is None
        reason = states["nocert.reason"]
        # asyncio's TLS server hangs up without the alert a CERTIFICATE_REQUIRED would be
        assert "TLS" in reason and "no client certificate was offered" in reason, reason
        assert "cert and key" in reason, reason
        reason = states["rogue.reason"]
        assert "TLS" in reason and "does it accept the client certificate" in reason, reason
        # the frames of the secure one are recorded; none of the other
        peers = appliance.query(
            "SELECT DISTINCT peer FROM messages WHERE identity = 'UP-TLS' AND peer IS NOT NULL"
        )
        assert peers == [("secure",)]
    finally:
        upstream.stop()


def test_an_upstream_whose_tls_alert_says_it_wants_a_certificate_is_named_so(
    start_appliance, tmp_path
):
    """A TLS server that, unlike asyncio's, sends TLS 1.3's certificate_required alert and
    closes so that it arrives (a lingering close, as nginx does): the reason names it and
    says what to set."""
    pki = make_pki(tmp_path / "pki", [])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.folder / "server.crt", pki.folder / "server.key")
    context.load_verify_locations(pki.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                tls = context.wrap_socket(
                    listener.accept()[0], server_side=True, do_handshake_on_connect=False
                )
                with contextlib.suppress(OSError), tls:
                    tls.settimeout(5)
                    with contextlib.suppress(ssl.SSLError):
                        tls.do_handshake()  # fails: the alert goes out
                    tls.shutdown(socket.SHUT_WR)  # plain TCP now: FIN after the alert
                    while socket.socket.recv(tls, 4096):
                        pass  # read what the client sent: closing then resets nothing

    threading.Thread(target=serve, daemon=True).start()
    appliance = start_appliance(
        f'\n[[upstream]]\nurl = "wss://127.0.0.1:{port}/ocpp"\nname = "strict"\n'
        f'ca = "{pki.server_ca}"\n'
    )

    async def scenario(cp: Any) -> str:
        await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
        return await asyncio.to_thread(
            conftest.wait_for,
            lambda: state(appliance, "UP-ALERT.upstream.strict.reason"),
            15,
            "the reason",
        )

    try:
        reason = asyncio.run(session16(appliance.url, "UP-ALERT", scenario))
    finally:
        listener.close()
    assert "certificate required" in reason and "wants a client certificate" in reason, reason
    assert "cert and key" in reason


def test_upstream_tls_files_that_do_not_load_are_a_reason_not_a_crash(start_appliance, tmp_path):
    """A `cert` that is not there: the link says so in its reason; the charge point is
    served."""
    missing = tmp_path / "nowhere.crt"
    appliance = start_appliance(
        f'\n[[upstream]]\nurl = "wss://127.0.0.1:9/ocpp"\nname = "broken"\n'
        f'cert = "{missing}"\nkey = "{missing}"\n'
    )

    async def scenario(cp: Any) -> tuple[str, str]:
        boot = await cp.call(
            call16.BootNotification(charge_point_model="Up", charge_point_vendor="T")
        )
        reason = await asyncio.to_thread(
            conftest.wait_for,
            lambda: state(appliance, "UP-FILES.upstream.broken.reason"),
            15,
            "the reason",
        )
        await cp.call(call16.Heartbeat())
        return boot.status, reason

    status, reason = asyncio.run(session16(appliance.url, "UP-FILES", scenario))
    assert status == "Accepted"
    assert reason.startswith("cannot connect: cannot load TLS files"), reason
    assert appliance.proc.poll() is None


def test_a_sighup_adds_the_first_upstream_for_a_charge_point_already_connected(tmp_path):
    """Started without [[upstream]] (its code is not even loaded then, issue 21), the
    appliance takes one at a SIGHUP: the charge point connected before gets its link at
    once, and its next calls arrive upstream (README "A second backend"). The SIGHUP
    comes before the commit that stores the charge point's boot (a 2 s commit interval
    here): the link still sends that boot first."""
    import signal

    upstream = Upstream("ocpp1.6").start()
    folder = tmp_path / "appliance"
    folder.mkdir()
    config = folder / "appliance.toml"
    config.write_text(
        conftest.test_config("").replace("commit_interval_ms = 50", "commit_interval_ms = 2000")
    )
    appliance = conftest.launch(["--config", str(config)], folder / "server.log")
    try:

        def linked() -> bool:
            rows = appliance.query(
                "SELECT upstreams FROM charge_point_status WHERE identity = 'HUP-1'"
            )
            return bool(rows) and rows[0][0] not in (None, "{}")

        async def scenario(cp: Any) -> None:
            await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
            config.write_text(config.read_text() + upstream_config(upstream))
            appliance.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(conftest.wait_for, linked, 20, "the link")
            await cp.call(
                call16.StatusNotification(connector_id=1, error_code="NoError", status="Available")
            )
            await cp.call(call16.Heartbeat())

        asyncio.run(session16(appliance.url, "HUP-1", scenario))
        # the link's own BootNotification comes first; the charge point's calls follow
        calls = wait_calls(upstream, "HUP-1", 3, appliance=appliance)
        assert [a for a, _ in calls] == ["BootNotification", "StatusNotification", "Heartbeat"]
        assert calls[0][1]["chargePointModel"] == "Up"
        assert "SIGHUP: config reloaded" in appliance.log()
    finally:
        conftest.end(appliance.proc)
        upstream.stop()
