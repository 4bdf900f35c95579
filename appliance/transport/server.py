"""The listener: TLS, handshake, authentication and refusal before the upgrade, one
nursery per charge point, keep-alive, replacement of a duplicate identity, the live
config swap (SIGHUP) and the orderly close on shutdown.

What a connection may cost before it is a charge point is bounded (README "Bad peers"):
at most `[limits] max_handshakes` handshakes (TLS, then the HTTP upgrade) are in progress
at once. The listener accepts a connection only when one of those places is free, so a
reconnect storm waits in the kernel's listen backlog (the TCP handshake done by the
kernel, nothing of ours allocated) and the connections already up keep their share of
the event loop. Per source address, `max_handshakes_per_address` handshakes (more: the
connection is reset at once, nothing read) and `max_connections_per_address` open
connections (more: 503 with Retry-After, like `max_connections`).

Behind a load balancer (`[limits] proxy_from`, README "A big site on several
processes") a connection starts with a PROXY header, read first (before TLS and the
upgrade, within the same handshake_timeout_sec): the address it names is the peer's
for everything after, the per-address caps, connection_log and the log included.

What a connection carries is not this module's business: each accepted `Link` (text
messages in and out) is handed to `serve_link`, which the app sets to the station layer.
This is also every connection's error boundary (README "Bad peers"): whatever escapes
from it is logged once with the identity and a traceback, the connection is closed with
1011, and every other connection carries on."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import trio
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from appliance import passwords
from appliance.config import Config
from appliance.rpc.dialects import OCPP16
from appliance.security import guard
from appliance.security.guard import AuthFailed, Credential, Reporter, Throttle, Verifier
from appliance.security.policy import Policy
from appliance.security.tls import common_names
from appliance.store import ConnectionRow, Store, now_ms
from appliance.transport import proxy
from appliance.transport.link import Link
from appliance.transport.prefixed import PrefixedStream
from appliance.transport.websocket import WebSocket

log = logging.getLogger("appliance")

#: RFC 7235 §4.1: a 401 names the scheme the client should use
CHALLENGE = (("WWW-Authenticate", 'Basic realm="ocpp", charset="UTF-8"'),)

#: closes that a peer earned by misbehaving: their log line goes through the Reporter
#: (once per address and reason), not one per connection (RFC 6455 §7.4.1: protocol
#: error, unsupported data, invalid UTF-8, message too big)
ABUSE_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})

#: a 503 (a connection limit) asks the charge point to come back after this many seconds
RETRY_AFTER_SEC = 30
RETRY_AFTER = (("Retry-After", str(RETRY_AFTER_SEC)),)

#: accept(2) errors that say the process or the system is out of something (descriptors,
#: memory): the listener waits this long and tries again, the connections up carry on
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SEC = 0.1

#: the KDF runs in worker threads, at most this many at once: a storm of guesses from
#: many addresses then costs the appliance one core, not all of them
KDF_THREADS = 1

#: bytes read at a time while the PROXY header is awaited: what follows it in the same
#: read (a ClientHello, the upgrade request) is handed on (PrefixedStream)
PROXY_READ_SIZE = 4096

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
        subprotocol: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.subprotocol = subprotocol
        self.headers = headers


def identity_from_path(target: str) -> str:
    """The last path segment of the request target, percent-decoded (README "On the wire")."""
    path = urlsplit(target).path
    return unquote(path.rsplit("/", 1)[-1])


#: what runs an accepted connection (the app sets the station layer's)
ServeLink = Callable[[Link], Awaitable[None]]


class Server:
    def __init__(
        self,
        config: Config,
        store: Store,
        serve_link: ServeLink,
        policy: Policy | None = None,
    ) -> None:
        #: the one place the config lives while serving; `reload` swaps it whole
        self.policy = policy if policy is not None else Policy.build(config)
        self.store = store
        self.serve_link = serve_link
        #: the open connection of each identity
        self.links: dict[str, Link] = {}
        #: TCP connections held: in the handshake or up
        self.streams = 0
        #: per source address: handshakes in progress, and connections up
        self.handshaking: Counter[str] = Counter()
        self.connected: Counter[str] = Counter()
        #: the places for handshakes in progress ([limits] max_handshakes)
        self.handshakes = trio.CapacityLimiter(self.config.limits.max_handshakes)
        self._listening = trio.CancelScope()
        #: between `run` starting to accept and `shutdown` (or the listeners failing)
        self.accepting = False
        self.throttle = Throttle()
        self.verifier = Verifier()
        self.reporter = Reporter()
        self._kdf_threads = trio.CapacityLimiter(KDF_THREADS)

    @property
    def config(self) -> Config:
        return self.policy.config

    async def reload(self, policy: Policy) -> None:
        """Put `policy` in force: new handshakes are judged by it at once, and connected
        charge points it no longer admits are closed (1008, policy violation)."""
        self.policy = policy
        self.handshakes.total_tokens = policy.config.limits.max_handshakes
        for link in list(self.links.values()):
            reason = self.revoked(link)
            if reason is not None:
                log.warning("%s: closing: %s", link.identity, reason)
                await link.close(CloseCode.POLICY_VIOLATION, reason)

    def revoked(self, link: Link) -> str | None:
        """Why the config in force no longer admits `link`, or None."""
        if not self.policy.allowed(link.identity):
            return "no longer in identity_allowlist"
        credential = self.policy.credentials.get(link.identity)
        if credential is not None and credential != link.credential:
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
            with self._listening:
                task_status.started()
                self.accepting = True
                try:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept, listener, nursery)
                finally:
                    self.accepting = False

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept a connection only when a handshake place is free: until then the
        kernel keeps the others in the listen backlog."""
        async with listener:
            while True:
                place = object()
                await self.handshakes.acquire_on_behalf_of(place)
                try:
                    tcp = await listener.accept()
                except OSError as exc:
                    self.handshakes.release_on_behalf_of(place)
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self._cannot_accept(exc)
                    await trio.sleep(ACCEPT_RETRY_SEC)
                    continue
                except BaseException:
                    self.handshakes.release_on_behalf_of(place)
                    raise
                host, remote = guard.peer(tcp)
                if self.policy.from_proxy(host):
                    # a load balancer's: its PROXY header names the peer, and the
                    # per-address cap applies to that one once it is read (`_handle`)
                    nursery.start_soon(self._handle, tcp, host, remote, place, True)
                    continue
                if self._at_handshake_cap(
                    host, remote, self.config.limits.max_handshakes_per_address
                ):
                    # the handshake is what the cap bounds: not a byte is read or sent
                    self.handshakes.release_on_behalf_of(place)
                    _reset(tcp)
                    continue
                self.handshaking[host] += 1
                nursery.start_soon(self._handle, tcp, host, remote, place)

    def _at_handshake_cap(self, host: str, remote: str, cap: int) -> bool:
        """`host` has `max_handshakes_per_address` handshakes in progress: this one is
        refused (logged and recorded here; the caller resets the connection)."""
        if not cap or self.handshaking[host] < cap:
            return False
        reason = f"handshakes from this address at max_handshakes_per_address = {cap}"
        self._refused(None, host, remote, None, reason)
        return True

    def _cannot_accept(self, exc: OSError) -> None:
        """Out of descriptors or memory: one line per 10 minutes, not one per attempt."""
        report = self.reporter.refusal("-", f"accept: {exc.strerror}", trio.current_time())
        if report.log:
            log.error("cannot accept connections: %s; retrying%s", exc.strerror, report.log_note)

    def turning_away(self) -> str | None:
        """Why a new charge point would not be served now (not listening, the
        connection limit reached), or None."""
        if not self.accepting:
            return "the OCPP listener is not accepting connections"
        limit = self.config.limits.max_connections
        if self.streams >= limit:
            return f"connection limit reached ({self.streams} of max_connections = {limit})"
        return None

    async def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001, wait for them to end."""
        self.accepting = False
        self._listening.cancel()
        for link in list(self.links.values()):
            await link.close(CloseCode.GOING_AWAY, "server shutting down")

    # ------------------------------------------------------------------ handshake

    async def _handle(
        self,
        tcp: trio.SocketStream,
        host: str,
        remote: str,
        place: object,
        proxied: bool = False,
    ) -> None:
        """One connection, from the accept on: `host` and `remote` name its peer (for a
        `proxied` one: the load balancer, until its PROXY header names the peer)."""
        self.streams += 1
        handshaking = True
        # the address whose count of handshakes (`self.handshaking`) this one holds: a
        # proxied connection's is taken once its header is read, with the address it names
        counted = None if proxied else host

        def handshake_over() -> None:
            nonlocal handshaking
            if handshaking:
                handshaking = False
                self.handshakes.release_on_behalf_of(place)
                if counted is not None:
                    _discount(self.handshaking, counted)

        try:
            # one policy judges the whole handshake, whatever a SIGHUP swaps meanwhile
            policy = self.policy
            limits = policy.config.limits
            # the PROXY header and the TLS handshake count against handshake_timeout_sec
            # too (slowloris)
            deadline = trio.current_time() + limits.handshake_timeout_sec
            stream: trio.abc.Stream = tcp
            if proxied:
                header: proxy.Proxied | None = None
                rest = b""
                failure = f"no PROXY header within {limits.handshake_timeout_sec:g} s"
                with trio.move_on_at(deadline):
                    try:
                        header, rest = await _proxy_header(tcp)
                    except proxy.ProxyError as exc:
                        failure = str(exc)
                if header is None:
                    # refused as from the balancer: one line per its address and reason
                    handshake_over()
                    self._refused(None, host, remote, None, failure)
                    return
                if header.source is not None:  # else LOCAL: the balancer's own check
                    host = header.source[0]
                    remote = guard.host_port(*header.source)
                if self._at_handshake_cap(host, remote, limits.max_handshakes_per_address):
                    handshake_over()
                    _reset(tcp)
                    return
                self.handshaking[host] += 1
                counted = host
                if rest:
                    # what came with the header: the start of the ClientHello or request
                    stream = PrefixedStream(tcp, rest)
            handshake = ServerProtocol(
                select_subprotocol=self._subprotocol_selector,
                max_size=limits.max_frame_bytes,
            )
            if policy.tls is not None:
                stream = trio.SSLStream(stream, policy.tls, server_side=True)
            ws = WebSocket(stream, handshake)
            request = None
            tls_failure = peer_certificate = None
            with trio.move_on_at(deadline):
                if isinstance(stream, trio.SSLStream):
                    try:
                        await stream.do_handshake()
                        # profile 3: the client certificate, before any WebSocket byte
                        peer_certificate = stream.getpeercert()
                    except trio.BrokenResourceError as exc:
                        tls_failure = f"TLS handshake failed: {_tls_failure(exc)}"
                if tls_failure is None:
                    request = await _read_request(ws)
            # the part the peer sets the pace of is over: the next one may start (what
            # follows has bounds of its own: the address's Throttle, the KDF's thread)
            handshake_over()
            if request is None:
                reason = tls_failure or (
                    f"handshake not completed within {limits.handshake_timeout_sec:g} s"
                    if not ws.done
                    else "connection closed before the handshake"
                )
                if handshake.handshake_exc is not None:
                    reason = f"bad HTTP request: {_masked(str(handshake.handshake_exc))}"
                self._refused(None, host, remote, None, reason)
                await ws.aclose()
                return
            link = await self._upgrade(ws, request, host, remote, policy, peer_certificate)
            await ws.flush()
            if link is not None:
                await self._serve(link)
            else:
                await ws.aclose()
        finally:
            handshake_over()
            self.streams -= 1
            # whatever way it ended, the socket is closed (a no-op when it was already)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(tcp)

    @property
    def _subprotocol_selector(self) -> Any:
        enabled = self.config.subprotocols

        # websockets binds this plain function to its state machine as a method
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
    ) -> Link | None:
        """Answer the upgrade: 101 and a Link, or an HTTP refusal (README "On the wire")."""
        machine = ws.machine
        assert isinstance(machine, ServerProtocol)
        identity = identity_from_path(request.path)
        response = machine.accept(request)
        credential = None
        try:
            if response.status_code != 101:
                raise Refusal(
                    response.status_code, f"not a WebSocket upgrade: {response.reason_phrase}"
                )
            chosen = self._chosen_subprotocol(
                request, response.headers.get("Sec-WebSocket-Protocol")
            )
            self._admit(policy, identity, chosen, peer_certificate, host)
            credential = policy.credentials.get(identity)
            if credential is not None:
                await self._authenticate(credential, request, identity, host, chosen)
                if self.policy is not policy:
                    # a SIGHUP came while the password was checked: the new rules decide
                    policy = self.policy
                    self._admit(policy, identity, chosen, peer_certificate, host)
                    if policy.credentials.get(identity) != credential:
                        raise Refusal(401, "password changed during the handshake", chosen)
        except Refusal as refusal:
            if response.status_code == 101:
                response = machine.reject(refusal.status, refusal.reason + "\n")
                for name, value in refusal.headers:
                    response.headers[name] = value
            machine.send_response(response)
            self._refused(identity or None, host, remote, refusal.subprotocol, refusal.reason)
            return None
        machine.send_response(response)
        return Link(ws, identity, chosen, remote, host, credential)

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
        if not "".join(offered).strip(", ") and OCPP16.subprotocol in self.config.subprotocols:
            return OCPP16.subprotocol  # old firmware offers no subprotocol at all
        enabled = ", ".join(self.config.subprotocols)
        raise Refusal(400, f"no common subprotocol: offered {offered or 'none'}, enabled {enabled}")

    def _admit(
        self,
        policy: Policy,
        identity: str,
        subprotocol: str,
        peer_certificate: dict[str, Any] | None,
        host: str,
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
        limits = policy.config.limits
        if self.streams > limits.max_connections:
            reason = f"connection limit reached (max_connections = {limits.max_connections})"
            raise Refusal(503, reason, subprotocol, RETRY_AFTER)
        cap = limits.max_connections_per_address
        if cap:
            # a charge point that reconnects replaces its old connection: that one does
            # not count against it (it may be a half-dead one the router forgot)
            old = self.links.get(identity)
            replaced = 1 if old is not None and old.host == host else 0
            if self.connected[host] - replaced >= cap:
                reason = f"connections from this address at max_connections_per_address = {cap}"
                raise Refusal(503, reason, subprotocol, RETRY_AFTER)

    def _refused(
        self, identity: str | None, host: str, remote: str, subprotocol: str | None, reason: str
    ) -> None:
        """Log and record a refusal — once per address and reason (guard.Reporter)."""
        report = self.reporter.refusal(host, reason, trio.current_time())
        if report.log:
            note = report.log_note
            log.warning("%s: refused from %s: %s%s", identity or "-", remote, reason, note)
        if report.record:
            self.store.put(
                ConnectionRow(
                    now_ms(), identity, remote, subprotocol, "refused", reason + report.row_note
                )
            )

    # ------------------------------------------------------------ a connection's life

    async def _serve(self, link: Link) -> None:
        """Register, replace an older connection of the same identity, run the link with
        its keep-alive until it ends: the error boundary of one connection."""
        identity = link.identity
        old = self.links.get(identity)
        self.links[identity] = link
        self.connected[link.host] += 1
        self._log_connection("connect", link, None)
        log.info("%s: connected from %s (%s)", identity, link.remote, link.subprotocol)
        try:
            if old is not None:
                await old.close(CloseCode.NORMAL_CLOSURE, "replaced by a new connection")
            revoked = self.revoked(link)
            if revoked is not None:
                # a SIGHUP landed between the handshake and here
                await link.close(CloseCode.POLICY_VIOLATION, revoked)
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.keep_alive, self.config.ping_interval_sec)
                    try:
                        await self.serve_link(link)
                    except Exception as exc:
                        log.error(
                            "%s: unexpected error (%s): closing the connection (1011)",
                            identity,
                            _innermost(exc),
                            exc_info=True,
                        )
                        await link.close(CloseCode.INTERNAL_ERROR, "internal error")
                        # let the peer read the close frame (bounded by the close grace)
                        async for _ in link.messages():
                            pass
                    nursery.cancel_scope.cancel()
        finally:
            current = self.links.get(identity) is link
            if current:
                del self.links[identity]
            _discount(self.connected, link.host)
            with trio.CancelScope(shield=True):
                await link.ws.aclose()
            self._disconnected(link, current)

    def _disconnected(self, link: Link, current: bool) -> None:
        reason = link.ended_reason()
        self._log_connection("disconnect", link, reason)
        suffix = "" if current else " (a newer connection replaced it)"
        sent = link.ws.machine.close_sent
        if sent is not None and sent.code in ABUSE_CLOSE_CODES:
            # a peer that keeps sending oversized, binary or broken frames: one line per
            # address and reason, however often it reconnects
            report = self.reporter.refusal(link.host, f"close {sent.code}", trio.current_time())
            if report.log:
                log.warning(
                    "%s: disconnected from %s: %s%s",
                    link.identity,
                    link.remote,
                    reason,
                    report.log_note,
                )
            return
        log.info("%s: disconnected: %s%s", link.identity, reason, suffix)

    def _log_connection(self, event: str, link: Link, reason: str | None) -> None:
        self.store.put(
            ConnectionRow(now_ms(), link.identity, link.remote, link.subprotocol, event, reason)
        )


async def _proxy_header(tcp: trio.SocketStream) -> tuple[proxy.Proxied, bytes]:
    """Read a PROXY header: it, and what arrived after it in the same read. Raises
    ProxyError for a malformed one, or none (the parser refuses more bytes than the
    longest header it accepts: what is buffered here is bounded by that and one read)."""
    data = b""
    while True:
        try:
            chunk = await tcp.receive_some(PROXY_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            chunk = b""
        if not chunk:
            raise proxy.ProxyError("connection closed before its PROXY header")
        data += chunk
        header = proxy.parse(data)
        if header is not None:
            return header, data[header.length :]


async def _read_request(ws: WebSocket) -> Request | None:
    while not ws.done:
        for event in await ws.receive():
            if isinstance(event, Request):
                return event
        if ws.machine.handshake_exc is not None:
            return None
    return None


def _innermost(exc: BaseException) -> str:
    """The error itself, out of the exception groups of the nurseries it crossed."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _discount(counts: Counter[str], host: str) -> None:
    """One less for `host`; an address with none left is forgotten (the counters stay
    as small as the connections held)."""
    counts[host] -= 1
    if counts[host] <= 0:
        del counts[host]


def _reset(tcp: trio.SocketStream) -> None:
    """Close at once with a TCP reset (SO_LINGER 0): nothing read, nothing sent, no
    TIME_WAIT on our side."""
    with contextlib.suppress(OSError):
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tcp.socket.close()


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
