"""The MQTT bridge (README "Home Assistant and MQTT"): a task in the appliance's nursery.

It looks at the database through a read connection of its own, at most once per
`min_interval_sec` (a look costs one PRAGMA while nothing was committed), and publishes
what changed since it last published: the `charge_point_status` columns, each charge
point's availability, Home Assistant's discovery, the outcome of every control write
and, with `publish_all`, every state. Commands from `<base>/<cp>/set/<control>` are
written into the database exactly as `ocpp-appliance set` writes them; the controls pick
them up, and the outcome comes back through `control_outcomes`.

The OCPP side never waits on it: the broker lives on paho's thread (`client.Broker`),
the database work on worker threads, and what is kept is the latest value per topic —
after a reconnect everything is published again, nothing piled up meanwhile.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trio

from appliance.config import Config, Mqtt
from appliance.domain import clock
from appliance.errors import ReaderError
from appliance.mqtt import topics
from appliance.mqtt.client import RECONNECT_MAX_SEC, Broker, Down, Message, Up
from appliance.station import Booted, Stations
from appliance.store import queries
from appliance.store.watch import Snapshot, StatusReader

log = logging.getLogger("appliance.mqtt")


class Bridge:
    def __init__(self, config: Config, stations: Stations) -> None:
        assert config.mqtt is not None
        self.settings: Mqtt = config.mqtt
        self.folder = Path(config.source).parent if config.source else Path.cwd()
        self.database = config.database_path
        self.stations = stations
        self.limiter = trio.CapacityLimiter(1)
        self._session_scope: trio.CancelScope | None = None
        #: topic → hash of the payload last published (retained or not): what the broker
        #: has; a hash, not the text (100 charge points' discovery configs are 1.8 MB)
        self._published: dict[str, int] = {}
        #: prefix → monotonic time of the last publish of its FAST readings
        self._fast_at: dict[str, float] = {}
        #: config topics published per charge point (to empty them when it is gone)
        self._discovered: dict[str, set[str]] = {}
        self._wake = trio.Event()
        self._force = True
        self._outcomes_since = _now_ms()
        self._outcomes_seen: set[tuple[str, int]] = set()
        self._states_since: int | None = None
        #: counts the connections to the broker (README "Home Assistant and MQTT":
        #: everything again on each)
        self._connection = 0
        self._broker: Broker | None = None
        #: the last failure logged: one line per outage, not one per retry
        self._reported: str | None = None

    # ------------------------------------------------------------------- life

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events = self.stations.subscribe()
        reader = await trio.to_thread.run_sync(StatusReader, self.database)
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._station_events, events)
                while True:
                    with trio.CancelScope() as self._session_scope:
                        await self._session(reader)
        finally:
            await trio.to_thread.run_sync(reader.close)

    def reload(self, config: Config) -> None:
        """SIGHUP: new settings take effect with a new connection (table present in both:
        app.py keeps a switch on or off for the next restart)."""
        if config.mqtt is None or config.mqtt == self.settings:
            return
        self.settings = config.mqtt
        if self._session_scope is not None:
            self._session_scope.cancel()

    async def _session(self, reader: StatusReader) -> None:
        settings = self.settings
        base = settings.base_topic
        subscriptions = [f"{base}/+/set/#"]
        if settings.homeassistant_discovery:
            # Home Assistant says `online` here when it (re)starts: discovery again
            subscriptions.append(f"{settings.discovery_prefix}/status")
        try:
            broker = Broker(
                settings,
                self.folder,
                subscriptions,
                f"{base}/status",
                retain_status=settings.retain != "none",
            )
        except (OSError, ValueError) as exc:  # the password file, the CA
            log.error("MQTT: not started: %s", exc)
            await trio.sleep_forever()
        self._broker = broker
        self._published.clear()
        broker.start()
        log.info("MQTT: connecting to %s as %r", broker.where, settings.client_id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._broker_events, broker)
                await self._publish_loop(reader, broker)
        finally:
            self._broker = None
            with trio.CancelScope(shield=True):
                await broker.stop()

    # ------------------------------------------------------------------ events

    async def _station_events(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for event in events:
            if isinstance(event, Booted):
                # a boot may bring a new firmware version: the device's discovery again
                for topic in self._discovered.pop(event.station.identity, set()):
                    self._published.pop(topic, None)
            self._force = True
            self._wake.set()

    async def _broker_events(self, broker: Broker) -> None:
        async for event in broker.events:
            if isinstance(event, Up):
                log.info("MQTT: connected to %s", broker.where)
                self._reported = None
                self._published.clear()  # the broker may have lost everything: all again
                self._connection += 1  # a look already under way is from before: dropped
                if self.settings.publish_all:
                    self._states_since = 0  # every state, not only those changed since
                self._force = True
                self._wake.set()
            elif isinstance(event, Down):
                if self._reported is None:
                    log.warning(
                        "MQTT: %s: %s; retrying in the background (at most every %d s)",
                        broker.where,
                        event.reason,
                        RECONNECT_MAX_SEC,
                    )
                    self._reported = event.reason
            elif isinstance(event, Message):
                await self._message(broker, event)

    async def _message(self, broker: Broker, message: Message) -> None:
        settings = self.settings
        if message.topic == f"{settings.discovery_prefix}/status":
            if message.payload.strip() == b"online":
                for topic in [t for t in self._published if "/config" in t]:
                    del self._published[topic]
                self._wake.set()
            return
        command = topics.command_of(settings.base_topic, message.topic)
        if command is None:
            return  # not a topic the appliance defines
        value = topics.value_of(message.payload)
        token = None
        if command.control == "requestStartTransaction.trigger" and value not in (None, 0, False):
            token = settings.start_id_token
        error = await trio.to_thread.run_sync(
            self._write, command, value, token, limiter=self.limiter
        )
        if error is not None:
            log.info("MQTT: %s refused: %s", message.topic, error)
            broker.publish(
                topics.outcome_topic(settings.base_topic, command.state_id),
                topics.outcome_payload(value, False, None, error),
                retain=False,
            )

    def _write(self, command: topics.Command, value: Any, token: str | None) -> str | None:
        """A command written as `ocpp-appliance set` writes it; the error that refused it,
        or None. With `token` (the start button): that idToken first, in the same
        transaction, unless the charge point has one set."""
        writes: list[tuple[str, Any]] = [(command.state_id, value)]
        try:
            if token:
                token_id = f"{command.prefix}.control.requestStartTransaction.idToken"
                found = [r for r in queries.states(self.database, token_id) if r["id"] == token_id]
                if found and found[0]["val"] in (None, ""):
                    writes.insert(0, (token_id, token))
            queries.write_controls(self.database, writes)
        except ReaderError as exc:
            return str(exc)
        return None

    # --------------------------------------------------------------- publishing

    async def _publish_loop(self, reader: StatusReader, broker: Broker) -> None:
        while True:
            if broker.up:
                force, self._force = self._force, False
                connection = self._connection
                snapshot = await trio.to_thread.run_sync(
                    reader.look,
                    force,
                    self._outcomes_since,
                    self._states_since,
                    limiter=self.limiter,
                )
                if connection == self._connection:
                    self._publish(broker, snapshot)
                else:
                    # the broker reconnected meanwhile: this look must not move
                    # `_states_since` past what the new connection has yet to get
                    self._force = True
                    continue
            with trio.move_on_after(self.settings.min_interval_sec):
                await self._wake.wait()
            self._wake = trio.Event()
            # a wake-up (a boot, a reconnect) still keeps to the minimum interval
            await trio.sleep(0.05)

    def _send(self, broker: Broker, topic: str, payload: str, retain: bool) -> bool:
        """Publish unless it is what the broker has already; False if it could not be."""
        if self._published.get(topic) == hash(payload):
            return True
        if broker.publish(topic, payload, retain):
            self._published[topic] = hash(payload)
            return True
        return False

    def _publish(self, broker: Broker, snapshot: Snapshot) -> None:
        settings = self.settings
        base = settings.base_topic
        retain_values = settings.retain == "all"
        retain_meta = settings.retain != "none"
        for state_id, ts, value, ok, response, error, _in_force in snapshot.outcomes:
            if (state_id, ts) in self._outcomes_seen:
                continue
            broker.publish(
                topics.outcome_topic(base, state_id),
                topics.outcome_payload(value, ok, response, error),
                retain=False,
            )
            if ts > self._outcomes_since:
                self._outcomes_since = ts
                self._outcomes_seen = set()
            self._outcomes_seen.add((state_id, ts))
        if snapshot.status is None:
            return
        now = time.monotonic()
        for identity, row in snapshot.status.items():
            prefix = row["prefix"]
            here = f"{base}/{prefix}"
            extra = snapshot.extra.get(prefix, {})
            self._send(broker, f"{here}/available", _availability(row), retain_meta)
            fast_due = now - self._fast_at.get(prefix, 0.0) >= topics.FAST_INTERVAL_SEC
            fast_sent = False
            for column, value in row.items():
                if column in topics.NOT_PUBLISHED:
                    continue
                topic, payload = f"{here}/{column}", topics.text(value)
                if self._published.get(topic) == hash(payload):
                    continue
                if column in topics.FAST and not fast_due:
                    self._force = True  # published at the next look
                    continue
                fast_sent |= column in topics.FAST
                self._send(broker, topic, payload, retain_values)
            if fast_sent:
                self._fast_at[prefix] = now
            for name in topics.CONTROL_STATES:
                value = extra.get(f"control.{name}")
                self._send(broker, f"{here}/control/{name}", topics.text(value), retain_values)
            if settings.homeassistant_discovery:
                configs = topics.discovery(base, settings.discovery_prefix, identity, prefix, extra)
                for topic, config in configs.items():
                    self._send(broker, topic, _json(config), retain_meta)
                self._discovered[identity] = set(configs)
        for gone in set(self._discovered) - set(snapshot.status):
            # a charge point no longer in the database: its entities leave Home Assistant
            for topic in self._discovered.pop(gone):
                broker.publish(topic, "", retain=True)
                self._published.pop(topic, None)
        unsent: int | None = None
        for state_id, value, lc in snapshot.changed:
            topic = topics.state_topic(base, state_id)
            if not self._send(broker, topic, topics.text(value), retain_values):
                unsent = lc if unsent is None else min(unsent, lc)
        if snapshot.changed:
            # the next look starts at the newest change (those of the same millisecond in a
            # later commit are read again; what was already sent is not sent twice), or
            # at the oldest that could not be sent (paho's queue was full, or the
            # connection went): tried again on the next look
            newest = max(lc for _id, _value, lc in snapshot.changed)
            self._states_since = newest if unsent is None else unsent
            self._force = self._force or unsent is not None


def _availability(row: dict[str, Any]) -> str:
    return topics.ONLINE if row.get("connected") == 1 else topics.OFFLINE


def _json(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config, ensure_ascii=False, sort_keys=True)


def _now_ms() -> int:
    return clock.wall_ms()
