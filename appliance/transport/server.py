"""The listener: TLS, handshake, authentication and refusal before the upgrade, one
nursery per charge point, keep-alive, replacement of a duplicate identity, the live
config swap (SIGHUP) and the orderly close on shutdown."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

import trio
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from appliance.config import Config
from appliance.rpc import (
    CallReceived,
    ErrorReceived,
    Fault,
    Frame,
    LocalProtocolError,
    ProtocolViolation,
    ResultReceived,
    SchemaSet,
    SendReceived,
    Session,
    Validation,
)
from appliance.security import guard, passwords
from appliance.security.guard import AuthFailed, Credential, Reporter, Throttle, Verifier
from appliance.security.policy import Policy
from appliance.security.tls import common_names
from appliance.store import Store, TransactionIds
from appliance.transport.endpoint import Endpoint
from appliance.transport.websocket import WebSocket
from appliance.tree import Tree
from appliance.versions import PROTOCOLS, Context, Protocol, Unprocessable

log = logging.getLogger("appliance")

#: how long a peer gets to answer our close frame before the TCP stream is cut; short
#: enough that shutdown (SPEC §2: exit within 5 s) has time left to flush the database
CLOSE_GRACE_SEC = 1.5
#: how long a connection waits before looking again whether the writer caught up
BACKPRESSURE_PAUSE_SEC = 0.01

#: RFC 7235 §4.1: a 401 names the scheme the client should use
CHALLENGE = (("WWW-Authenticate", 'Basic realm="ocpp", charset="UTF-8"'),)

#: closes that a peer earned by misbehaving: their log line goes through the Reporter
#: (once per address and reason), not one per connection
ABUSE_CLOSE_CODES = frozenset({1003, 1009})

#: the KDF runs in worker threads, at most this many at once: a storm of guesses from
#: many addresses then costs the appliance one core, not all of them
KDF_THREADS = 1

#: OpenSSL's reasons for a failed TLS handshake, in plain words (the rest as OpenSSL says)
TLS_FAILURES = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate (mutual TLS requires one)",
    "CERTIFICATE_VERIFY_FAILED": "client certificate does not chain to tls.client_ca",
    "WRONG_VERSION_NUMBER": "not TLS (a ws:// client on the wss:// port?)",
    "HTTP_REQUEST": "plain HTTP on the wss:// port",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS older than 1.2",
    "NO_SHARED_CIPHER": "no cipher suite in common",
    "TLSV1_ALERT_UNKNOWN_CA": "the charge point does not trust the server certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the charge point rejected the server certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the charge point rejected the server certificate",
}


class Refusal(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        protocol: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.protocol = protocol
        self.headers = headers


def identity_from_path(target: str) -> str:
    """The last path segment of the request target, percent-decoded (SPEC §2)."""
    path = urlsplit(target).path
    return unquote(path.rsplit("/", 1)[-1])


class Server:
    def __init__(
        self,
        config: Config,
        store: Store,
        schemas: dict[str, SchemaSet],
        transaction_ids: TransactionIds,
        tree: Tree,
        policy: Policy | None = None,
    ) -> None:
        #: the one place the config lives while serving; `reload` swaps it whole
        self.policy = policy if policy is not None else Policy.build(config)
        self.store = store
        self.schemas = schemas
        self.transaction_ids = transaction_ids
        self.tree = tree
        #: set by the app: told of every connection and boot (see appliance.controls)
        self.controls: Any = None
        self.connections: dict[str, Connection] = {}
        self.streams = 0
        self._logged_violations: set[tuple[str, str | None, str]] = set()
        self._nursery: trio.Nursery | None = None
        self._listening = trio.CancelScope()
        self._caught_up: trio.Event | None = None
        self.throttle = Throttle()
        self.verifier = Verifier()
        self.reporter = Reporter()
        self._kdf_threads = trio.CapacityLimiter(KDF_THREADS)

    @property
    def config(self) -> Config:
        return self.policy.config

    def token_accepted(self, token: str | None) -> bool:
        """The idToken decision under the config in force now (handlers call this)."""
        return self.policy.token_accepted(token)

    async def reload(self, policy: Policy) -> None:
        """Put `policy` in force: new handshakes are judged by it at once, and connected
        charge points it no longer admits are closed (1008, policy violation)."""
        self.policy = policy
        for connection in list(self.connections.values()):
            reason = self.revoked(connection)
            if reason is not None:
                log.warning("%s: closing: %s", connection.identity, reason)
                await connection.close(1008, reason)

    def revoked(self, connection: Connection) -> str | None:
        """Why the config in force no longer admits `connection`, or None."""
        if not self.policy.allowed(connection.identity):
            return "no longer in identity_allowlist"
        credential = self.policy.credentials.get(connection.identity)
        if credential is not None and credential != connection.credential:
            return "password changed in the config"
        return None

    # ------------------------------------------------------------------- listening

    async def run(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown`; connections live in this task's nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with self._listening:
                task_status.started()
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001, wait for them to end."""
        self._listening.cancel()
        for connection in list(self.connections.values()):
            await connection.close(1001, "server shutting down")

    # ------------------------------------------------------------------ handshake

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.streams += 1
        try:
            # one policy judges the whole handshake, whatever a SIGHUP swaps meanwhile
            policy = self.policy
            host, remote = _peer(tcp)
            limits = policy.config.limits
            protocol = ServerProtocol(
                select_subprotocol=self._subprotocol_selector,
                max_size=limits.max_frame_bytes,
            )
            stream: trio.abc.Stream = tcp
            if policy.tls is not None:
                stream = trio.SSLStream(tcp, policy.tls, server_side=True)
            ws = WebSocket(stream, protocol)
            request = None
            tls_failure = peer_certificate = None
            # the TLS handshake counts against handshake_timeout_sec too (slowloris)
            with trio.move_on_after(limits.handshake_timeout_sec):
                if isinstance(stream, trio.SSLStream):
                    try:
                        await stream.do_handshake()
                        # profile 3: the client certificate, before any WebSocket byte
                        peer_certificate = stream.getpeercert()
                    except trio.BrokenResourceError as exc:
                        tls_failure = f"TLS handshake failed: {_tls_failure(exc)}"
                if tls_failure is None:
                    request = await _read_request(ws)
            if request is None:
                reason = tls_failure or (
                    f"handshake not completed within {limits.handshake_timeout_sec:g} s"
                    if not ws.done
                    else "connection closed before the handshake"
                )
                if protocol.handshake_exc is not None:
                    reason = f"bad HTTP request: {_masked(str(protocol.handshake_exc))}"
                self._refused(None, host, remote, None, reason)
                await ws.aclose()
                return
            connection = await self._upgrade(ws, request, host, remote, policy, peer_certificate)
            await ws.flush()
            if connection is not None:
                await connection.run()
            else:
                await ws.aclose()
        finally:
            self.streams -= 1

    @property
    def _subprotocol_selector(self) -> Any:
        enabled = self.config.subprotocols

        # websockets binds this plain function to its protocol object as a method
        def select(_: ServerProtocol, offered: Sequence[str]) -> str | None:
            # newest enabled version the charge point offers; some firmware varies the case
            lowered = {name.lower(): name for name in offered}
            return next((lowered[name] for name in enabled if name in lowered), None)

        return select

    async def _upgrade(
        self,
        ws: WebSocket,
        request: Request,
        host: str,
        remote: str,
        policy: Policy,
        peer_certificate: dict[str, Any] | None,
    ) -> Connection | None:
        """Answer the upgrade: 101 and a Connection, or an HTTP refusal (SPEC §2, §3)."""
        protocol = ws.protocol
        assert isinstance(protocol, ServerProtocol)
        identity = identity_from_path(request.path)
        response = protocol.accept(request)
        credential = None
        try:
            if response.status_code != 101:
                raise Refusal(
                    response.status_code, f"not a WebSocket upgrade: {response.reason_phrase}"
                )
            chosen = self._chosen_subprotocol(
                request, response.headers.get("Sec-WebSocket-Protocol")
            )
            self._admit(policy, identity, chosen, peer_certificate)
            credential = policy.credentials.get(identity)
            if credential is not None:
                await self._authenticate(credential, request, identity, host, chosen)
                if self.policy is not policy:
                    # a SIGHUP came while the password was checked: the new rules decide
                    policy = self.policy
                    self._admit(policy, identity, chosen, peer_certificate)
                    if policy.credentials.get(identity) != credential:
                        raise Refusal(401, "password changed during the handshake", chosen)
        except Refusal as refusal:
            if response.status_code == 101:
                response = protocol.reject(refusal.status, refusal.reason + "\n")
                for name, value in refusal.headers:
                    response.headers[name] = value
            protocol.send_response(response)
            self._refused(identity or None, host, remote, refusal.protocol, refusal.reason)
            return None
        protocol.send_response(response)
        return Connection(self, ws, identity, remote, PROTOCOLS[chosen], credential, host)

    async def _authenticate(
        self, credential: Credential, request: Request, identity: str, host: str, chosen: str
    ) -> None:
        """HTTP Basic auth (security profiles 1 and 2), throttled per address (guard.Throttle:
        the wait happens here, in this connection's own task). Raises Refusal(401)."""
        start = self.throttle.begin(host, trio.current_time())
        if start is None:
            raise Refusal(401, guard.BUSY, chosen, CHALLENGE)
        ok = False
        try:
            if start:
                await trio.sleep(start)
            headers = request.headers.get_all("Authorization")
            if len(headers) > 1:
                raise AuthFailed(guard.MALFORMED)
            password = guard.basic_credentials(headers[0] if headers else None, identity)
            known = self.verifier.quick(credential, password)
            if known is None:
                assert credential.password_hash is not None
                # the KDF is slow by design: off the event loop, a bounded number at once
                known = await trio.to_thread.run_sync(
                    passwords.verify, password, credential.password_hash, limiter=self._kdf_threads
                )
                self.verifier.remember(credential, password, known)
            if not known:
                raise AuthFailed(guard.WRONG_PASSWORD)
            ok = True
        except AuthFailed as failed:
            raise Refusal(401, str(failed), chosen, CHALLENGE) from None
        finally:
            self.throttle.end(host, ok, trio.current_time())

    def _chosen_subprotocol(self, request: Request, selected: str | None) -> str:
        if selected is not None:
            return selected.lower()
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        if not "".join(offered).strip(", ") and "ocpp1.6" in self.config.subprotocols:
            return "ocpp1.6"  # old firmware offers no subprotocol at all
        enabled = ", ".join(self.config.subprotocols)
        raise Refusal(400, f"no common subprotocol: offered {offered or 'none'}, enabled {enabled}")

    def _admit(
        self,
        policy: Policy,
        identity: str,
        subprotocol: str,
        peer_certificate: dict[str, Any] | None,
    ) -> None:
        if not identity:
            raise Refusal(404, "no charge point identity in the URL path", subprotocol)
        if not policy.allowed(identity):
            raise Refusal(403, "identity not in identity_allowlist", subprotocol)
        if policy.mutual_tls:
            # profile 3: the certificate chains to client_ca (checked by the TLS handshake)
            # and names this charge point (OCPP 2.0.1 A00.FR.414: CN = the identity)
            names = common_names(peer_certificate)
            if names != [identity]:
                shown = ", ".join(repr(n) for n in names) or "none"
                raise Refusal(
                    403, f"client certificate CN ({shown}) is not the identity", subprotocol
                )
        limit = policy.config.limits.max_connections
        if self.streams > limit:
            raise Refusal(503, f"connection limit reached (max_connections = {limit})", subprotocol)

    def _refused(
        self, identity: str | None, host: str, remote: str, protocol: str | None, reason: str
    ) -> None:
        """Log and record a refusal — once per address and reason (guard.Reporter)."""
        report = self.reporter.refusal(host, reason, trio.current_time())
        if report.log:
            note = report.log_note
            log.warning("%s: refused from %s: %s%s", identity or "-", remote, reason, note)
        if report.record:
            self.store.log_connection(
                "refused", identity, remote, protocol, reason + report.row_note
            )

    # ---------------------------------------------------------------- registry

    def register(self, connection: Connection) -> Connection | None:
        """Make `connection` the one for its identity; returns the one it replaces."""
        old = self.connections.get(connection.identity)
        self.connections[connection.identity] = connection
        return old

    def unregister(self, connection: Connection) -> bool:
        """Forget `connection` unless a newer one replaced it; True if it was current."""
        if self.connections.get(connection.identity) is connection:
            del self.connections[connection.identity]
            return True
        return False

    async def writer_caught_up(self) -> None:
        """Wait until the database writer has caught up. The first waiter looks every
        BACKPRESSURE_PAUSE_SEC; the others wait on its event (one poller, not one per
        charge point)."""
        if self._caught_up is not None:
            await self._caught_up.wait()
            return
        self._caught_up = trio.Event()
        try:
            while self.store.overloaded:
                await trio.sleep(BACKPRESSURE_PAUSE_SEC)
        finally:
            self._caught_up.set()
            self._caught_up = None

    def log_violation_once(self, identity: str, action: str | None, kind: str, text: str) -> None:
        """One log line per identity, action and kind of violation (SPEC §2)."""
        key = (identity, action, kind)
        if key not in self._logged_violations:
            self._logged_violations.add(key)
            log.warning("%s: %s: %s (logged once)", identity, action or "frame", text)


class Connection(Endpoint):
    """One charge point's WebSocket: a nursery of reader, pinger and call timer."""

    def __init__(
        self,
        server: Server,
        ws: WebSocket,
        identity: str,
        remote: str,
        protocol: Protocol,
        credential: Credential | None = None,
        host: str | None = None,
    ) -> None:
        config = server.config
        name = protocol.dialect.subprotocol
        self.server = server
        self.ws = ws
        self.identity = identity
        self.remote = remote
        self.host = host or remote
        #: the password it was admitted with: a SIGHUP that changes it closes the connection
        self.credential = credential
        self.protocol = protocol
        self.subprotocol = name
        self.session = Session(
            protocol.dialect,
            server.schemas[name],
            protocol.from_charge_point,
            validation=Validation(config.validation_for(identity)),
            call_timeout=config.call_timeout_sec,
            max_depth=config.limits.max_json_depth,
        )
        self.tree = server.tree
        self.context = Context(
            identity,
            name,
            config.heartbeat_interval_sec,
            server.transaction_ids,
            partial(server.tree.apply, identity),
            server.token_accepted,
        )
        self.close_reason: str | None = None
        self._scope = trio.CancelScope()
        self._init_calls()
        self._awaiting_pong = False
        self._nursery: Any = None

    # --------------------------------------------------------------- life cycle

    async def run(self) -> None:
        old = self.server.register(self)
        self.server.store.log_connection(
            "connect", self.identity, self.remote, self.subprotocol, None
        )
        self.tree.connected(self.identity, self.subprotocol, self.remote)
        if self.server.controls is not None:
            self.server.controls.connected(self)
        log.info("%s: connected from %s (%s)", self.identity, self.remote, self.subprotocol)
        try:
            if old is not None:
                await old.close(1000, "replaced by a new connection")
            revoked = self.server.revoked(self)
            if revoked is not None:
                # a SIGHUP landed between the handshake and here
                await self.close(1008, revoked)
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._keep_alive)
                    nursery.start_soon(self._expire_calls)
                    await self._read()
                    nursery.cancel_scope.cancel()
        finally:
            self._finish()
            with trio.CancelScope(shield=True):
                await self.ws.aclose()

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame; the peer has CLOSE_GRACE_SEC to answer before the cut."""
        if self.close_reason is None:
            self.close_reason = reason
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_GRACE_SEC)
        if self.ws.protocol.state is State.OPEN:
            self.ws.protocol.send_close(code, reason)
            await self.ws.flush()

    def _finish(self) -> None:
        self._fail_pending("connection closed before the answer")
        current = self.server.unregister(self)
        if current:
            self.tree.disconnected(self.identity)
        reason = self.close_reason or _close_reason(self.ws)
        self.server.store.log_connection(
            "disconnect", self.identity, self.remote, self.subprotocol, reason
        )
        suffix = "" if current else " (a newer connection replaced it)"
        sent = self.ws.protocol.close_sent
        if sent is not None and sent.code in ABUSE_CLOSE_CODES:
            # a peer that keeps sending oversized or binary frames: one line per address
            report = self.server.reporter.refusal(
                self.host, f"close {sent.code}", trio.current_time()
            )
            if report.log:
                log.warning(
                    "%s: disconnected from %s: %s%s",
                    self.identity,
                    self.remote,
                    reason,
                    report.log_note,
                )
            return
        log.info("%s: disconnected: %s%s", self.identity, reason, suffix)

    # ---------------------------------------------------------------- reading

    async def _read(self) -> None:
        ws = self.ws
        store = self.server.store
        while not ws.done:
            if store.overloaded:
                # backpressure: the database writer falls behind (see Store.overloaded)
                await self.server.writer_caught_up()
            for event in await ws.receive():
                opcode = event.opcode
                if opcode is Opcode.TEXT:
                    self._on_text(event.data.decode())
                elif opcode is Opcode.PONG:
                    self._awaiting_pong = False
                elif opcode is Opcode.BINARY:
                    # OCPP-J travels in text frames only: 1003 is "cannot accept this data type"
                    await self.close(1003, "OCPP-J uses text frames, not binary")
            await self._send_outgoing()

    def _on_text(self, text: str) -> None:
        session = self.session
        received = session.receive(text, trio.current_time())
        self._record(received.frame)
        self.tree.seen(self.identity)
        event = received.event
        if isinstance(event, CallReceived):
            if event.violation is not None:
                self._note_violation(event.action, event.violation.kind, event.violation.text)
            self._answer(event)
        elif isinstance(event, ResultReceived):
            if event.violation is not None:
                self._note_violation(event.call.action, event.violation.kind, event.violation.text)
            self.tree.capture_response(
                self.identity, self.subprotocol, "out", event.call.action, event.payload
            )
            self._resolve(event.call.message_id, payload=event.payload)
        elif isinstance(event, ErrorReceived):
            error = f"CALLERROR {event.code}: {event.description}".rstrip(": ")
            self._resolve(event.call.message_id, error=error)
        elif isinstance(event, SendReceived):
            if event.violation is not None:
                self._note_violation(event.action, event.violation.kind, event.violation.text)
        elif isinstance(event, ProtocolViolation):
            kind = event.fault.name if event.fault else "reply"
            self.server.log_violation_once(self.identity, received.frame.action, kind, event.reason)

    def _answer(self, call: CallReceived) -> None:
        try:
            payload = self.protocol.respond(self.context, call.action, call.payload)
        except Unprocessable as exc:
            self.session.fail(call, exc.fault, str(exc))
            return
        except Exception:
            log.exception("%s: %s: handler failed", self.identity, call.action)
            self.session.fail(call, Fault.INTERNAL, "the central system failed to process it")
            return
        try:
            self.session.answer(call, payload)
        except LocalProtocolError as exc:
            log.error("%s: %s", self.identity, exc)
            return
        self.tree.capture(self.identity, self.subprotocol, "in", call.action, call.payload, payload)
        if call.action == "BootNotification" and self.server.controls is not None:
            # queued now, sent once the answer above is out (Session sends in order)
            self._nursery.start_soon(self.server.controls.booted, self)

    def _note_violation(self, action: str, kind: str, text: str) -> None:
        self.tree.violation(self.identity, f"{action}: {text}")
        self.server.log_violation_once(self.identity, action, kind, text)

    # ---------------------------------------------------------------- writing

    def _record(self, frame: Frame) -> None:
        self.server.store.record_frame(
            self.identity,
            self.subprotocol,
            frame.direction,
            frame.text,
            frame.message_type,
            frame.message_id,
            frame.action,
            frame.violation,
        )

    # ------------------------------------------------------------ outgoing calls

    def _call_queued(self, action: str, payload: dict[str, Any]) -> None:
        self.tree.capture(self.identity, self.subprotocol, "out", action, payload)

    # -------------------------------------------------------------- keep-alive

    async def _keep_alive(self) -> None:
        interval = self.server.config.ping_interval_sec
        while True:
            await trio.sleep(interval)
            if self._awaiting_pong:
                self.close_reason = f"no pong within {interval:g} s: peer presumed dead"
                log.warning("%s: %s", self.identity, self.close_reason)
                self._scope.cancel()
                return
            self._awaiting_pong = True
            self.ws.protocol.send_ping(b"ocpp-appliance")
            await self.ws.flush()


async def _read_request(ws: WebSocket) -> Request | None:
    while not ws.done:
        for event in await ws.receive():
            if isinstance(event, Request):
                return event
        if ws.protocol.handshake_exc is not None:
            return None
    return None


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """The peer's host (the throttle's key) and host:port (what the log shows)."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "?", "?"
    return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_failure(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        # expired, not yet valid, or from another CA: OpenSSL's words, and the rule
        return (
            f"client certificate rejected ({cause.verify_message}): it must chain to tls.client_ca"
        )
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return TLS_FAILURES.get(cause.reason, cause.reason)
    return "connection closed during the TLS handshake"


def _masked(text: str) -> str:
    """A parser's message may quote the offending header line: never an Authorization."""
    lowered = text.lower()
    at = lowered.find("authorization")
    return text if at < 0 else text[:at] + "authorization: ***"


def _close_reason(ws: WebSocket) -> str:
    received = ws.protocol.close_rcvd
    if received is not None:
        text = f": {received.reason}" if received.reason else ""
        return f"closed by the charge point ({received.code}{text})"
    sent = ws.protocol.close_sent
    if sent is not None:
        return f"closed by the appliance ({sent.code}: {sent.reason})"
    return "connection lost"
