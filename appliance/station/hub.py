"""All stations: the registry by identity, connection-life events, and what every
station shares (config in force, tree, store, schemas, 1.6 transaction ids)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from appliance.config import Config
from appliance.domain.recent import forget_oldest
from appliance.rpc import SchemaSet
from appliance.security.policy import Policy
from appliance.station.station import Connected, Decision, Disconnected, Event, Station
from appliance.store import Store
from appliance.transport import Link
from appliance.tree import Tree
from appliance.versions import VERSIONS, TransactionIdSource

log = logging.getLogger("appliance")

#: events a subscriber may fall behind by before it misses some (each is logged)
SUBSCRIBER_BUFFER = 1000
#: retried calls remembered per charge point to know a repeat (see `repeated`): a
#: charger sends its transaction messages one at a time and resends the one unanswered
#: before the next, so a repeat is a few calls behind at most (256 held 2 MB at 100
#: charge points once full, issue 21)
REMEMBERED_CALLS = 64


class Relay(Protocol):
    """Where the charge points' answered calls go on (README "A second backend")."""

    def forward(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> object: ...
    def decides(self, identity: str) -> bool: ...
    def ask(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> Decision: ...


class Stations:
    def __init__(
        self,
        policy: Policy,
        store: Store,
        tree: Tree,
        schemas: dict[str, SchemaSet],
        transaction_ids: TransactionIdSource,
    ) -> None:
        #: the config in force; the app swaps it on SIGHUP
        self.policy = policy
        self.store = store
        self.tree = tree
        self.schemas = schemas
        self.transaction_ids = transaction_ids
        #: the current station of each identity
        self.stations: dict[str, Station] = {}
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        #: README "A second backend": where answered calls go on (upstream.Upstreams)
        self.relay: Relay | None = None
        self._logged_violations: set[tuple[str, str | None, str]] = set()
        self._request_ids = 0
        #: per identity, the hashes of (action, text) of retried calls applied lately, the
        #: least recently seen first: 80 bytes each (an OrderedDict of (action, hash)
        #: tuples took 190, issue 21)
        self._applied: dict[str, dict[int, None]] = {}

    @property
    def config(self) -> Config:
        return self.policy.config

    @property
    def fetch_on_boot(self) -> bool:
        return self.config.device_model.fetch_on_boot

    def token_accepted(self, token: str | None) -> bool:
        """The idToken decision under the config in force now (handlers ask at each call,
        so a SIGHUP applies at once)."""
        return self.policy.token_accepted(token)

    def get(self, identity: str) -> Station | None:
        return self.stations.get(identity)

    async def serve(self, link: Link) -> None:
        """The transport's `serve_link`: one station for the connection's life."""
        await Station(self, link, VERSIONS[link.subprotocol]).run()

    # ------------------------------------------------------------------ registry

    def attach(self, station: Station) -> None:
        """`station` is the one of its identity now (a newer connection replaces an
        older one; the transport closes the older)."""
        self.stations[station.identity] = station
        self.tree.connected(station.identity, station.subprotocol, station.link.remote)
        self.publish(Connected(station))

    def detach(self, station: Station) -> None:
        current = self.stations.get(station.identity) is station
        if current:
            del self.stations[station.identity]
            self.tree.disconnected(station.identity)
        self.publish(Disconnected(station, current))

    # -------------------------------------------------------------------- events

    def subscribe(self, buffer: int = SUBSCRIBER_BUFFER) -> trio.MemoryReceiveChannel[Event]:
        """Connection life (Connected, Booted, Disconnected) from now on."""
        send, receive = trio.open_memory_channel[Event](buffer)
        self._subscribers.append(send)
        return receive

    def publish(self, event: Event) -> None:
        """Every event to every subscriber, never waiting: one that does not keep up
        misses events (and the log says so) rather than slowing a charge point."""
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                log.warning("events: a subscriber fell behind; %s not delivered", event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)

    def forward(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> None:
        """A call the charge point made, answered: to the upstreams, if any."""
        if self.relay is not None:
            self.relay.forward(identity, subprotocol, action, payload, answer)

    def upstream_decides(self, identity: str) -> bool:
        """Whether an upstream connected now decides this charge point's tokens."""
        return self.relay is not None and self.relay.decides(identity)

    def ask_upstream(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> Decision:
        """The call goes upstream now; the returned wait gives the upstream's answer."""
        assert self.relay is not None
        return self.relay.ask(identity, subprotocol, action, payload, answer)

    # --------------------------------------------------------------------- shared

    def request_id(self) -> int:
        """A request id for GetBaseReport and RequestStartTransaction, unique in this run."""
        self._request_ids += 1
        return self._request_ids

    def repeated(self, identity: str, action: str, payload_text: str) -> bool:
        """Whether this exact call was applied already (a retry after a lost answer, maybe
        over a new connection); remembers it if not."""
        applied = self._applied.get(identity)
        if applied is None:
            applied = self._applied[identity] = {}
        key = hash((action, payload_text))  # 64 bits: a chance collision is not a concern
        if key in applied:
            del applied[key]  # the most recently seen now
            applied[key] = None
            return True
        applied[key] = None
        self._applied[identity] = forget_oldest(applied, REMEMBERED_CALLS)
        return False

    def log_violation_once(self, identity: str, action: str | None, kind: str, text: str) -> None:
        """One log line per identity, action and kind of violation (README "On the wire")."""
        key = (identity, action, kind)
        if key not in self._logged_violations:
            self._logged_violations.add(key)
            log.warning("%s: %s: %s (logged once)", identity, action or "frame", text)
