"""A second backend (issue 24; README "A second backend"): the appliance answers the charge
point and forwards its calls, as the charge point, to an upstream central system nobody
here wrote — the `ocpp` package's ChargePoint handlers on a `websockets` server — with
the upstream's own 1.6 transaction ids, store and forward while the upstream is away,
and the upstream's allowed calls (only those) reaching the charge point. The charge
point is the `ocpp` package too; the database is read as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from pg import free_port
from test_tree_sessions import ocpp_session

import conftest


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Csms16(Cp16):
    """The upstream's side of one 1.6 charge point: answers as a billing backend would,
    numbering transactions from 5001."""

    numbers = itertools.count(5001)

    @on("BootNotification")
    def boot(self, **_: Any) -> Any:
        return result16.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=now())

    @on("StatusNotification")
    def status(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @on("Authorize")
    def authorize(self, id_tag: str, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": self.verdict(id_tag)})

    @on("StartTransaction")
    def start_transaction(self, id_tag: str, **_: Any) -> Any:
        return result16.StartTransaction(
            transaction_id=next(self.numbers), id_tag_info={"status": self.verdict(id_tag)}
        )

    @on("StopTransaction")
    def stop_transaction(self, **_: Any) -> Any:
        return result16.StopTransaction()

    @on("MeterValues")
    def meter_values(self, **_: Any) -> Any:
        return result16.MeterValues()

    @on("DataTransfer")
    def data_transfer(self, **_: Any) -> Any:
        return result16.DataTransfer(status="Accepted")

    def verdict(self, id_tag: str) -> str:
        return "Blocked" if id_tag.startswith("BAD") else "Accepted"


class Csms201(Cp201):
    """The upstream's side of one 2.0.1 charge point."""

    @on("BootNotification")
    def boot(self, **_: Any) -> Any:
        return result201.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on("Heartbeat")
    def heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=now())

    @on("StatusNotification")
    def status(self, **_: Any) -> Any:
        return result201.StatusNotification()

    @on("TransactionEvent")
    def transaction_event(self, **_: Any) -> Any:
        return result201.TransactionEvent()

    @on("MeterValues")
    def meter_values(self, **_: Any) -> Any:
        return result201.MeterValues()

    @on("NotifyReport")
    def notify_report(self, **_: Any) -> Any:
        return result201.NotifyReport()


class Upstream:
    """A central system on a `websockets` server in a thread of its own: one `ocpp`
    ChargePoint (CSMS side) per connection; every frame it receives is kept, parsed."""

    #: the CSMS side's handlers per subprotocol (tests/test_upstream_more.py adds 2.1)
    handlers: ClassVar[dict[str, type]] = {"ocpp1.6": Csms16, "ocpp2.0.1": Csms201}

    def __init__(self, version: str, port: int | None = None) -> None:
        self.version = version
        self.port = port or free_port()
        self.received: list[tuple[str, list[Any]]] = []
        self.peers: dict[str, Any] = {}
        self.subprotocols: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Any = None
        self.context: Any = None  # an ssl.SSLContext serves wss://
        #: holds the port while stopped: bound, not listening (a connect is refused), so
        #: no other test's server takes it meanwhile and the link talks to a stranger
        self.placeholder: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def start(self) -> Upstream:
        if self.placeholder is not None:
            self.placeholder.close()
            self.placeholder = None

        async def serve() -> Any:
            return await websockets.serve(
                self._connection,
                "127.0.0.1",
                self.port,
                subprotocols=[self.version],
                ssl=self.context,
            )

        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.placeholder = socket.socket()
        self.placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.placeholder.bind(("127.0.0.1", self.port))

    async def _connection(self, ws: Any) -> None:
        identity = ws.request.path.rsplit("/", 1)[-1]
        self.subprotocols.append(ws.subprotocol)
        upstream = self

        class Recording:
            async def recv(self) -> str:
                text = await ws.recv()
                upstream.received.append((identity, json.loads(text)))
                return text

            async def send(self, text: str) -> None:
                await ws.send(text)

        kind = self.handlers[self.version]
        peer = kind(identity, Recording(), response_timeout=10)
        self.peers[identity] = peer
        with contextlib.suppress(websockets.ConnectionClosed):
            await peer.start()

    def calls(self, identity: str) -> list[tuple[str, dict[str, Any]]]:
        """The CALLs it received from `identity`, in order: (action, payload)."""
        return [(f[2], f[3]) for who, f in list(self.received) if who == identity and f[0] == 2]

    def call(self, identity: str, request: Any) -> Any:
        """Send a CALL to the charge point (through the appliance); its answer (a
        CALLERROR raises)."""
        peer = self.peers[identity]
        future = asyncio.run_coroutine_threadsafe(peer.call(request, suppress=False), self.loop)
        return future.result(30)


# ------------------------------------------------------------- the charge point


class Charger16(Cp16):
    """The charge point: the `ocpp` package; it takes a remote start."""

    remote_starts: ClassVar[list[str]] = []

    @on("RemoteStartTransaction")
    def remote_start(self, id_tag: str, **_: Any) -> Any:
        self.remote_starts.append(id_tag)
        return result16.RemoteStartTransaction(status="Accepted")

    @on("GetConfiguration")
    def get_configuration(self, **_: Any) -> Any:
        return result16.GetConfiguration(configuration_key=[])

    @on("Reset")
    def reset(self, **_: Any) -> Any:
        raise AssertionError("a Reset from the upstream must never reach the charge point")


async def session16(url: str, identity: str, scenario: Any) -> Any:
    return await ocpp_session(url, identity, "ocpp1.6", Charger16, scenario)


async def charge16(cp: Any, tag: str = "TAG1") -> dict[str, Any]:
    """Boot, a status, a whole session with two meter values: what the appliance answered."""
    answers: dict[str, Any] = {}
    answers["boot"] = await cp.call(
        call16.BootNotification(charge_point_model="Up", charge_point_vendor="Test")
    )
    await cp.call(
        call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing")
    )
    started = await cp.call(
        call16.StartTransaction(connector_id=1, id_tag=tag, meter_start=1000, timestamp=now())
    )
    answers["start"] = started
    local = started.transaction_id
    for register in (1500, 2000):
        await cp.call(
            call16.MeterValues(
                connector_id=1,
                transaction_id=local,
                meter_value=[{"timestamp": now(), "sampledValue": [{"value": str(register)}]}],
            )
        )
    await cp.call(call16.StopTransaction(meter_stop=2500, timestamp=now(), transaction_id=local))
    return answers


def upstream_config(upstream: Upstream, extra: str = "") -> str:
    return f'\n[[upstream]]\nurl = "{upstream.url}"\nname = "billing"\n{extra}'


def wait_calls(
    upstream: Upstream,
    identity: str,
    count: int,
    timeout: float = 20,
    appliance: conftest.Appliance | None = None,
) -> list:
    """The calls the upstream got from `identity`, once there are `count`; on a timeout
    the message shows what did arrive and, given the appliance, its link states and log."""
    try:
        return conftest.wait_for(
            lambda: len(upstream.calls(identity)) >= count and upstream.calls(identity),
            timeout,
            f"{count} calls upstream",
        )
    except AssertionError as exc:
        seen = [action for action, _ in upstream.calls(identity)]
        shown = f"{exc}; the upstream got {seen} in {upstream.subprotocols}"
        if appliance is not None:
            links = appliance.query("SELECT identity, upstreams FROM charge_point_status")
            shown += f"; links: {links}; log: {appliance.log()[-3000:]}"
        raise AssertionError(shown) from exc


# ===================================================================== tests


def test_a_whole_session_arrives_upstream_with_the_upstreams_own_transaction_id(
    start_appliance,
):
    """1.6: the charge point's calls reach the upstream in order, as the charge point's
    own (same identity, same subprotocol); the charge point gets the appliance's answers
    (its transaction id), and every later message of the session carries the id the
    upstream gave; the upstream's frames are in `messages` with `peer`."""
    upstream = Upstream("ocpp1.6").start()
    appliance = start_appliance(upstream_config(upstream))
    answers = asyncio.run(session16(appliance.url, "UP-1", charge16))
    calls = wait_calls(upstream, "UP-1", 6, appliance=appliance)
    assert [a for a, _ in calls] == [
        "BootNotification", "StatusNotification", "StartTransaction", "MeterValues",
        "MeterValues", "StopTransaction",
    ]  # fmt: skip
    assert upstream.subprotocols == ["ocpp1.6"]
    local = answers["start"].transaction_id
    remote = next(p for a, p in calls if a == "MeterValues")["transactionId"]
    assert remote >= 5001 and remote != local
    assert all(
        p["transactionId"] == remote for a, p in calls if a in ("MeterValues", "StopTransaction")
    )
    assert calls[2][1]["meterStart"] == 1000 and calls[5][1]["meterStop"] == 2500
    rows = appliance.wait_rows(
        "SELECT direction, message_type, action FROM messages WHERE peer = 'billing'"
        " AND identity = 'UP-1' ORDER BY seq",
        count=12,
    )
    assert rows[:2] == [("out", 2, "BootNotification"), ("in", 3, "BootNotification")]
    # the charge point's own conversation is unchanged: its answers came from here
    own = appliance.query(
        "SELECT payload FROM messages WHERE identity = 'UP-1' AND peer IS NULL"
        " AND direction = 'out' AND action = 'StartTransaction'"
    )
    assert json.loads(own[0][0])[2]["transactionId"] == local
    upstream.stop()


def test_the_upstreams_allowed_calls_reach_the_charge_point_and_others_are_refused(
    start_appliance,
):
    """An allowed RemoteStartTransaction from the upstream reaches the charge point and
    its answer goes back; a Reset (not in allow_calls) is refused with NotSupported, the
    charge point never sees it, and both are in `messages`."""
    upstream = Upstream("ocpp1.6").start()
    appliance = start_appliance(upstream_config(upstream))
    Charger16.remote_starts.clear()

    async def scenario(cp: Any) -> tuple[Any, Any]:
        await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
        await asyncio.to_thread(wait_calls, upstream, "UP-2", 1)
        answer = await asyncio.to_thread(
            upstream.call, "UP-2", call16.RemoteStartTransaction(id_tag="FROM-UP")
        )
        try:
            await asyncio.to_thread(upstream.call, "UP-2", call16.Reset(type="Hard"))
        except Exception as exc:  # the ocpp package raises the CALLERROR
            refused = exc
        else:
            refused = None
        return answer, refused

    answer, refused = asyncio.run(session16(appliance.url, "UP-2", scenario))
    assert answer.status == "Accepted"
    assert Charger16.remote_starts == ["FROM-UP"]
    assert refused is not None and "NotSupported" in type(refused).__name__ + str(refused)
    rows = appliance.wait_rows(
        "SELECT direction, message_type, action FROM messages WHERE peer = 'billing'"
        " AND action = 'Reset'",
        count=2,
    )
    assert rows == [("in", 2, "Reset"), ("out", 4, "Reset")]
    to_charge_point = appliance.query(
        "SELECT count(*) FROM messages WHERE peer IS NULL AND action = 'Reset'"
    )
    assert to_charge_point == [(0,)]
    upstream.stop()


def test_the_upstream_away_then_back_gets_every_transaction_message_once_in_order(
    start_appliance,
):
    """The upstream is down while a session runs and the appliance restarts meanwhile:
    the charge point is answered as without an upstream; once the upstream is back, the
    boot goes first, then every transaction message once, in order, with the upstream's
    own transaction id; heartbeats are not queued."""
    port = free_port()
    down = Upstream("ocpp1.6", port)  # not started: nothing listens
    appliance = start_appliance(upstream_config(down))

    async def scenario(cp: Any) -> float:
        started = time.perf_counter()
        await charge16(cp)
        await cp.call(call16.Heartbeat())
        return time.perf_counter() - started

    took = asyncio.run(session16(appliance.url, "UP-3", scenario))
    assert took < 5  # answered from here, never waiting for the upstream
    conftest.wait_for(
        lambda: appliance.query("SELECT count(*) FROM upstream_queue")[0][0] == 4,
        10,
        "four transaction messages waiting",
    )
    # a restart while the upstream is still away
    appliance.proc.terminate()
    appliance.proc.wait(30)
    appliance = conftest.start_appliance_process(appliance.folder, upstream_config(down))
    up = Upstream("ocpp1.6", port).start()
    try:

        async def reconnect(cp: Any) -> None:
            await asyncio.to_thread(wait_calls, up, "UP-3", 5, 30)

        asyncio.run(session16(appliance.url, "UP-3", reconnect))
        calls = up.calls("UP-3")
        actions = [a for a, _ in calls]
        assert actions[0] == "BootNotification"
        transaction = [a for a in actions if a != "BootNotification" and a != "StatusNotification"]
        assert transaction == ["StartTransaction", "MeterValues", "MeterValues", "StopTransaction"]
        assert "Heartbeat" not in actions
        ids = {p["transactionId"] for a, p in calls if a in ("MeterValues", "StopTransaction")}
        assert len(ids) == 1 and ids.pop() >= 5001
        conftest.wait_for(
            lambda: appliance.query("SELECT count(*) FROM upstream_queue")[0][0] == 0,
            10,
            "the queue empty",
        )
    finally:
        appliance.proc.terminate()
        appliance.proc.wait(30)
        up.stop()


def test_a_201_charge_point_is_forwarded_in_its_own_version(start_appliance):
    """2.0.1: the upstream is spoken to in 2.0.1 and gets the TransactionEvents as sent."""
    upstream = Upstream("ocpp2.0.1").start()
    appliance = start_appliance(upstream_config(upstream))

    async def scenario(cp: Any) -> None:
        await cp.call(
            call201.BootNotification(
                charging_station={"model": "Up", "vendor_name": "T"}, reason="PowerUp"
            )
        )
        for event, seq in (("Started", 0), ("Ended", 1)):
            await cp.call(
                call201.TransactionEvent(
                    event_type=event,
                    timestamp=now(),
                    trigger_reason="Authorized" if event == "Started" else "StopAuthorized",
                    seq_no=seq,
                    transaction_info={"transaction_id": "TX-201"},
                )
            )

    asyncio.run(ocpp_session(appliance.url, "UP-4", "ocpp2.0.1", Cp201, scenario))
    calls = wait_calls(upstream, "UP-4", 3, appliance=appliance)
    assert upstream.subprotocols == ["ocpp2.0.1"]
    events = [p for a, p in calls if a == "TransactionEvent"]
    assert [e["eventType"] for e in events] == ["Started", "Ended"]
    assert {e["transactionInfo"]["transactionId"] for e in events} == {"TX-201"}
    upstream.stop()


def test_check_config_hides_the_upstream_password_and_names_a_bad_action(tmp_path):
    """`check-config` prints the upstream with its password as ***; an action that is not
    one a central system sends is exit 2 with a suggestion."""
    config = tmp_path / "appliance.toml"
    config.write_text('[[upstream]]\nurl = "wss://billing.example.com/ocpp"\npassword = "s3cret"\n')
    shown = conftest.run_cli("check-config", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "s3cret" not in shown.stdout and 'password = "***"' in shown.stdout
    config.write_text(
        '[[upstream]]\nurl = "ws://x/ocpp"\nallow_calls = ["RemoteStartTransction"]\n'
    )
    bad = conftest.run_cli("check-config", "--config", str(config))
    assert bad.returncode == 2
    assert 'did you mean "RemoteStartTransaction"?' in bad.stderr


def test_with_authorize_upstream_the_upstreams_verdict_on_a_token_holds(start_appliance):
    """authorize = "upstream": a token the local rules accept but the upstream blocks is
    Blocked for the charge point, one the local rules do not know but the upstream
    accepts is Accepted — in Authorize and in StartTransaction (which keeps the
    appliance's own transaction id); the upstream's state says who decided. With the
    upstream away, the local rules decide at once."""
    upstream = Upstream("ocpp1.6").start()
    extra = upstream_config(upstream, 'authorize = "upstream"\n')
    appliance = start_appliance(f'{extra}\n[authorization]\nid_tokens = ["BAD1", "BAD2"]\n')

    async def scenario(cp: Any) -> dict[str, Any]:
        await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
        await asyncio.to_thread(wait_calls, upstream, "UP-5", 1)
        found = {}
        for tag in ("BAD1", "GOOD1"):
            found[tag] = (await cp.call(call16.Authorize(id_tag=tag))).id_tag_info["status"]
        started = await cp.call(
            call16.StartTransaction(connector_id=1, id_tag="BAD2", meter_start=0, timestamp=now())
        )
        found["start"] = (started.transaction_id, started.id_tag_info["status"])
        return found

    found = asyncio.run(session16(appliance.url, "UP-5", scenario))
    assert found["BAD1"] == "Blocked" and found["GOOD1"] == "Accepted"
    local_id, status = found["start"]
    assert status == "Blocked" and local_id < 5001  # the appliance's own number
    # the start's verdict is written after the Authorize ones (maybe a commit later)
    said = appliance.wait_rows(
        "SELECT val FROM states WHERE id = 'UP-5.upstream.billing.authorization'"
        " AND val LIKE 'StartTransaction%'"
    )
    assert said == [("StartTransaction: the upstream's verdict, Blocked",)]
    upstream.stop()

    async def alone(cp: Any) -> tuple[str, float]:
        await cp.call(call16.BootNotification(charge_point_model="Up", charge_point_vendor="T"))
        started = time.perf_counter()
        info = (await cp.call(call16.Authorize(id_tag="GOOD2"))).id_tag_info
        return info["status"], time.perf_counter() - started

    status, took = asyncio.run(session16(appliance.url, "UP-5", alone))
    assert status == "Invalid" and took < 2  # the local rules, without waiting
