"""The object tree: version-neutral updates → `states`, `objects` and history rows.

Runs on the event loop and only queues work for the store's writer thread; anything
costly per message (flattening payloads) is handed over as a lazy producer, computed once
per commit for the latest message of its kind.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, ClassVar

from appliance import domain
from appliance.domain.clock import Stamp, check, iso_now, newer, stamp, time_suspect, wall
from appliance.domain.meter import CONTEXT_RANK, INSTANTANEOUS_UNITS
from appliance.domain.recent import GroupedHashes
from appliance.domain.status import state_of
from appliance.store import (
    ChargePointRow,
    InForce,
    Meta,
    MeterValueRows,
    Opened,
    StateWrite,
    Store,
    TransactionRow,
    now_ms,
)
from appliance.tree.flatten import flatten
from appliance.tree.ids import component_segment, escape, subprotocol_segment, variable_segment
from appliance.tree.vin import find_vin

#: a state write below a charge point: its id without the prefix, value, description
Write = tuple[str, Any, Meta | None]

#: samples remembered per charge point to store a sample repeated in a later event of
#: the same transaction once (README "Readings"): the latest of any context (a retried
#: or re-sent event, a StopTransaction's transactionData), as 64-bit hashes grouped by
#: transaction and timestamp
SAMPLES_REMEMBERED = 256
#: ... and the Transaction.Begin samples of its latest sessions, however long ago:
#: MicroOcpp repeats them in the Ended event, hours of other samples later
BEGIN_SAMPLES_REMEMBERED = 64

#: how many stopped sessions per charge point are remembered, so that a late event for
#: one of them never reopens it
CLOSED_SESSIONS_KEPT = 200


def _meta(kind: str, role: str, name: str, unit: str | None = None) -> Meta:
    return Meta(kind, role, unit, False, name)


# One place for what each fixed state is (type, role, unit, name).
UPSTREAM: dict[str, Meta] = {
    "connected": _meta("boolean", "indicator.connected", "upstream connected"),
    "reason": _meta("string", "text", "why the upstream is not connected"),
    "waiting": _meta("number", "value", "messages waiting for the upstream"),
    "authorization": _meta("string", "text", "who decided the last idToken"),
}
INFO: dict[str, Meta] = {
    "connected": _meta("boolean", "indicator.connected", "connected"),
    "protocol": _meta("string", "info.protocol", "OCPP subprotocol"),
    "remoteAddress": _meta("string", "info.address", "remote address"),
    "lastSeen": _meta("number", "date", "last frame received (ms)", "ms"),
    "vendor": _meta("string", "info.manufacturer", "vendor"),
    "model": _meta("string", "info.model", "model"),
    "serialNumber": _meta("string", "info.serial", "serial number"),
    "chargeBoxSerialNumber": _meta("string", "info.serial", "charge box serial number"),
    "firmwareVersion": _meta("string", "info.firmware", "firmware version"),
    "iccid": _meta("string", "info.iccid", "modem ICCID"),
    "imsi": _meta("string", "info.imsi", "modem IMSI"),
    "meterType": _meta("string", "info.meter", "meter type"),
    "meterSerialNumber": _meta("string", "info.serial", "meter serial number"),
    "bootReason": _meta("string", "info.reason", "boot reason"),
    "lastBoot": _meta("string", "date", "last boot"),
    "lastHeartbeat": _meta("string", "date", "last heartbeat"),
    "status": _meta("string", "info.status", "station status"),
    "errorCode": _meta("string", "info.error", "station error code"),
    "vin": _meta("string", "info.vin", "vehicle identification number"),
    "lastViolation": _meta("string", "info.violation", "latest schema violation"),
    "state": _meta("string", "info.state", "state (version-neutral)"),
    "lastReading": _meta("number", "date", "last reading reported (ms)", "ms"),
}
#: 2.x TransactionEvent `transactionInfo.chargingState` of an EVSE (README "`charge_point_status`")
CHARGING_STATE = _meta("string", "info.status", "charging state (2.x TransactionEvent)")
CONNECTOR: dict[str, Meta] = {
    "status": _meta("string", "info.status", "connector status"),
    "errorCode": _meta("string", "info.error", "error code"),
    "vendorErrorCode": _meta("string", "info.error", "vendor error code"),
    "info": _meta("string", "info", "status info"),
    "statusTimestamp": _meta("string", "date", "status timestamp (charge point's clock)"),
    "state": _meta("string", "info.state", "state (version-neutral)"),
}
TRANSACTIONS: dict[str, Meta] = {
    "active": _meta("boolean", "indicator.charging", "a transaction is running"),
    "lastEvent": _meta("json", "json", "latest transaction event (raw)"),
    "last.id": _meta("string", "value.transaction", "transaction id"),
    "last.idToken": _meta("string", "value.rfid", "idToken / idTag"),
    "last.evseId": _meta("number", "value", "EVSE"),
    "last.startedAt": _meta("string", "date.start", "started at (charge point's clock)"),
    "last.stoppedAt": _meta("string", "date.end", "stopped at (charge point's clock)"),
    "last.meterStartWh": _meta("number", "value.energy", "register at start", "Wh"),
    "last.energyWh": _meta("number", "value.energy", "session energy", "Wh"),
    "last.energyKWh": _meta("number", "value.energy", "session energy", "kWh"),
    "last.stopReason": _meta("string", "text", "stop reason"),
}
_ROLE_OF_UNIT = {
    "Wh": "value.energy",
    "kWh": "value.energy",
    "W": "value.power",
    "A": "value.current",
    "V": "value.voltage",
    "Percent": "value.battery",
    "Celsius": "value.temperature",
    "Hz": "value.frequency",
}


_SESSION_LOCATIONS = frozenset({None, "Outlet", "Cable", "EV"})
_KWH_META = Meta("number", "value.energy", "kWh", False, "energyKWh")
#: what a new latest session clears before its own facts arrive
_LAST_FIELDS = (
    "last.idToken",
    "last.evseId",
    "last.startedAt",
    "last.stoppedAt",
    "last.meterStartWh",
    "last.energyWh",
    "last.energyKWh",
    "last.stopReason",
)


#: the latest reading of one name: when it was taken, its value (None: not known while
#: disconnected), its unit, and when it was written (ms: reported, or set by the
#: appliance — README "Readings": a register keeps the time it was reported)
Latest = tuple[Stamp, float | None, str, int]


def _reading_writes(
    prefix: str, base: str, latest: dict[str, Latest], last_reading: int | None
) -> list[StateWrite]:
    """The states of a base's latest readings (and, with the charge point's aggregate,
    `info.lastReading`): computed in the writer thread, once per commit."""
    writes: list[StateWrite] = []
    if last_reading is not None:
        meta = INFO["lastReading"]
        writes.append(StateWrite(f"{prefix}.info.lastReading", last_reading, meta, last_reading))
    base = f"{prefix}.{base}"
    for name, (_, value, unit, written) in latest.items():
        writes.append(StateWrite(f"{base}.{name}", value, _reading_meta(name, unit), written))
        if name == "energyWh" and base.endswith(".meterValues") and value is not None:
            kwh = round(value / 1000, 6)
            writes.append(StateWrite(f"{base}.energyKWh", kwh, _KWH_META, written))
    return writes


def _reading_meta(name: str, unit: str) -> Meta:
    return Meta("number", _ROLE_OF_UNIT.get(unit, "value"), unit or None, False, name)


@dataclass(slots=True)
class _Session:
    """What the tree knows of one session; facts once known are kept (events arrive late,
    twice, out of order)."""

    evse_id: int | None = None
    connector_id: int | None = None
    start: float | None = None  # energy register at start
    now: float | None = None  # latest register while it runs
    stop: float | None = None
    stopped: bool = False
    #: appliance clock (ms) of its latest event
    updated_at: int = 0


@dataclass(slots=True)
class _Sessions:
    known: OrderedDict[str, _Session] = field(default_factory=OrderedDict)
    last: str | None = None

    def forget_old(self) -> None:
        stopped = [tid for tid, s in self.known.items() if s.stopped]
        for tid in stopped[: max(0, len(stopped) - CLOSED_SESSIONS_KEPT)]:
            if tid != self.last:
                del self.known[tid]

    @property
    def active(self) -> bool:
        return any(not s.stopped for s in self.known.values())

    def running_on(self, evse_id: int | None) -> str | None:
        """The one session running on this EVSE (1.6: connector), if exactly one is."""
        if evse_id is None:
            return None
        running = [t for t, s in self.known.items() if not s.stopped and s.evse_id == evse_id]
        return running[0] if len(running) == 1 else None


@dataclass(slots=True)
class _Evse:
    """What decides the state of an EVSE's connectors besides their status (2.x)."""

    charging_state: str | None = None
    running: bool = False
    #: a transaction ended since the connector last reported Available
    ended: bool = False


@dataclass(slots=True)
class _Station:
    prefix: str
    sessions: _Sessions = field(default_factory=_Sessions)
    #: the latest reading per state base (`meterValues`, an EVSE or a connector) and
    #: name; an older sample delivered late never replaces it
    readings: dict[str, dict[str, Latest]] = field(default_factory=dict)
    #: the raw status of each connector: (evse, connector) → status
    statuses: dict[tuple[int, int | None], str] = field(default_factory=dict)
    evses: dict[int, _Evse] = field(default_factory=dict)
    #: samples of transactions already stored, by transaction and timestamp (see
    #: SAMPLES_REMEMBERED)
    samples: GroupedHashes = field(default_factory=lambda: GroupedHashes(SAMPLES_REMEMBERED))
    #: Transaction.Begin samples already stored (see BEGIN_SAMPLES_REMEMBERED)
    begins: GroupedHashes = field(default_factory=lambda: GroupedHashes(BEGIN_SAMPLES_REMEMBERED))
    connected: bool = False
    #: when it last reported a reading (ms, `info.lastReading`)
    last_reading: int | None = None
    #: it has sent a BootNotification, in this run or before (`info.lastBoot`)
    booted: bool = False


class Tree:
    def __init__(self, store: Store, opened: Opened | None = None) -> None:
        self.store = store
        self._stations: dict[str, _Station] = {}
        #: writable Device Model / configuration values as last reported, by state id:
        #: what a rejected write is put back to
        self._reported: dict[str, Any] = {}
        if opened is not None:
            self._restore(opened)

    def _restore(self, opened: Opened) -> None:
        """What the database knew before this run: sessions, the last status of every
        connector, charging states and boots (README "`charge_point_status`": the state follows the
        last known status as soon as a charge point reconnects, also after a restart)."""
        for f in opened.sessions:
            sessions = self._station(f.identity).sessions
            sessions.known[f.transaction_id] = _Session(
                f.evse_id, f.connector_id, f.start, f.now, f.stop, f.stopped, f.updated_at
            )
            sessions.last = f.transaction_id  # oldest first: the latest ends up `last`
        changed: dict[tuple[str, int], int] = {}
        for status in opened.statuses:
            station = self._station(status.identity)
            station.statuses[(status.evse_id or 0, status.connector_id)] = status.status
            if status.evse_id:
                key = (status.identity, status.evse_id)
                changed[key] = max(changed.get(key, 0), status.changed_at)
        for (identity, evse_id), charging_state in opened.charging_states.items():
            evse = self._station(identity).evses.setdefault(evse_id, _Evse())
            evse.charging_state = charging_state
        for (identity, evse_id), status_changed in changed.items():
            station = self._station(identity)
            evse = station.evses.setdefault(evse_id, _Evse())
            on_evse = [s for s in station.sessions.known.values() if s.evse_id == evse_id]
            evse.running = any(not s.stopped for s in on_evse)
            # a session that ended after the status last changed: the cable is still in
            evse.ended = not evse.running and any(
                s.stopped and s.updated_at >= status_changed for s in on_evse
            )
        for identity in opened.booted:
            self._station(identity).booted = True

    def _station(self, identity: str) -> _Station:
        station = self._stations.get(identity)
        if station is None:
            station = self._stations[identity] = _Station(escape(identity))
        return station

    def booted(self, identity: str) -> bool:
        """Whether the charge point has ever sent a BootNotification (this run or before)."""
        return self._station(identity).booted

    def reported(self, state_id: str) -> Any:
        """The value a charge point last reported for a writable `dm.*.value` or
        `config.*` state (KeyError if it has not in this run)."""
        return self._reported[state_id]

    def confirm(self, state_id: str, value: Any) -> None:
        """A write the charge point accepted is now what it has."""
        self._reported[state_id] = value

    def prefix(self, identity: str) -> str:
        """The escaped first id segment of a charge point."""
        return self._station(identity).prefix

    def configuration(self, identity: str, keys: list[Any]) -> None:
        """1.6 GetConfiguration keys → `config.<key>`, writable unless read-only."""
        writes: list[Write] = []
        for entry in keys:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                continue
            writable = not entry.get("readonly", False)
            meta = Meta("string", "config", None, writable, entry["key"])
            state = f"config.{escape(entry['key'])}"
            writes.append((state, entry.get("value"), meta))
            if writable:
                self._report(f"{self.prefix(identity)}.{state}", entry.get("value"))
        self._set(identity, writes)

    def _report(self, state_id: str, value: Any) -> None:
        """A writable value as the charge point reports it: what a rejected write goes
        back to, and what an earlier write's outcome now says is in force (README
        "Controls": `in_force` is what the state shows)."""
        self._reported[state_id] = value
        self.store.put(InForce(value, state_id))

    def _set(self, identity: str, writes: list[Write]) -> None:
        prefix = self._station(identity).prefix
        self.store.set_states([StateWrite(f"{prefix}.{sid}", v, m) for sid, v, m in writes])

    # ------------------------------------------------------------ connection events

    def connected(self, identity: str, subprotocol: str, remote: str) -> None:
        station = self._station(identity)
        station.connected = True
        self.store.put(ChargePointRow(identity, station.prefix, now_ms()))
        self._set(
            identity,
            [
                ("info.connected", True, INFO["connected"]),
                ("info.protocol", subprotocol, INFO["protocol"]),
                ("info.remoteAddress", remote, INFO["remoteAddress"]),
            ],
        )
        # the last known status holds again at once: many chargers send no
        # StatusNotification after a reconnect (README "`charge_point_status`")
        self._states(identity, station)

    def disconnected(self, identity: str) -> None:
        """README "Readings": while disconnected an instantaneous reading is not known
        (NULL), and the state is `offline`."""
        station = self._station(identity)
        station.connected = False
        self._set(identity, [("info.connected", False, INFO["connected"])])
        self._instantaneous(station, list(station.readings), None, Stamp(None, wall()))
        self._states(identity, station)

    def upstream(
        self, identity: str, name: str, connected: bool, reason: str, waiting: int
    ) -> None:
        """README "A second backend": each upstream's state for this charge point
        (`<id>.upstream.<name>.*`: connected, why not, since when, messages waiting)."""
        base = f"upstream.{escape(name)}"
        self._set(
            identity,
            [
                (f"{base}.connected", connected, UPSTREAM["connected"]),
                (f"{base}.reason", reason or None, UPSTREAM["reason"]),
                (f"{base}.waiting", waiting, UPSTREAM["waiting"]),
            ],
        )

    def upstream_authorization(self, identity: str, name: str, said: str) -> None:
        """Who decided the last token of a charge point an upstream authorizes for."""
        base = f"upstream.{escape(name)}"
        self._set(identity, [(f"{base}.authorization", said, UPSTREAM["authorization"])])

    def seen(self, identity: str) -> None:
        self._set(identity, [("info.lastSeen", now_ms(), INFO["lastSeen"])])

    def violation(self, identity: str, text: str) -> None:
        self._set(identity, [("info.lastViolation", text, INFO["lastViolation"])])

    # ---------------------------------------------------------------- raw capture

    def capture(
        self,
        identity: str,
        subprotocol: str,
        direction: str,
        action: str,
        payload: Any,
        response: Any = None,
    ) -> None:
        """`ocpp.<subprotocol>.<in|out>.<Action>.raw` and `.data.<path>` for the latest CALL
        of each action, `.response` for its answer; flattened in the writer thread."""
        prefix = self._station(identity).prefix
        base = f"{prefix}.ocpp.{subprotocol_segment(subprotocol)}.{direction}.{escape(action)}"

        def produce() -> list[StateWrite]:
            # README "`states` and `objects`": `.raw` is every call's; its answer and its
            # leaves are written when they change (most leaves of a MeterValues do not)
            writes = [StateWrite(f"{base}.raw", payload, RAW_META)]
            if response is not None:
                writes.append(StateWrite(f"{base}.response", response, RESPONSE_META, None, True))
            writes += [
                StateWrite(f"{base}.data.{path}", value, None, None, True)
                for path, value in flatten(payload)
            ]
            return writes

        self.store.set_states_lazily((base, "call"), produce)

    def capture_response(
        self, identity: str, subprotocol: str, direction: str, action: str, response: Any
    ) -> None:
        prefix = self._station(identity).prefix
        base = f"{prefix}.ocpp.{subprotocol_segment(subprotocol)}.{direction}.{escape(action)}"
        self.store.set_states([StateWrite(f"{base}.response", response, RESPONSE_META)])

    # -------------------------------------------------------------------- updates

    def apply(self, identity: str, update: domain.Update) -> None:
        handler = self._handlers[type(update)]
        handler(self, identity, update)

    def _booted(self, identity: str, update: domain.StationBooted) -> None:
        fields = {
            "vendor": update.vendor,
            "model": update.model,
            "serialNumber": update.serial_number,
            "chargeBoxSerialNumber": update.charge_box_serial_number,
            "firmwareVersion": update.firmware_version,
            "iccid": update.iccid,
            "imsi": update.imsi,
            "meterType": update.meter_type,
            "meterSerialNumber": update.meter_serial_number,
            "bootReason": update.boot_reason,
            "lastBoot": iso_now(),
        }
        self._station(identity).booted = True
        self._set(
            identity,
            [(f"info.{name}", v, INFO[name]) for name, v in fields.items() if v is not None],
        )

    def _heartbeat(self, identity: str, update: domain.HeartbeatReceived) -> None:
        self._set(identity, [("info.lastHeartbeat", iso_now(), INFO["lastHeartbeat"])])

    def _status(self, identity: str, update: domain.ConnectorStatus) -> None:
        station = self._station(identity)
        if update.evse_id is None:
            writes: list[Write] = [("info.status", update.status, INFO["status"])]
            if update.error_code is not None:
                writes.append(("info.errorCode", update.error_code, INFO["errorCode"]))
            self._set(identity, writes)
            station.statuses[(0, None)] = update.status
            self._states(identity, station)
            return
        base = _connector_base(update.evse_id, update.connector_id)
        values = {
            "status": update.status,
            "errorCode": update.error_code,
            "vendorErrorCode": update.vendor_error_code,
            "info": update.info,
            "statusTimestamp": update.timestamp,
        }
        self._set(
            identity,
            [(f"{base}.{k}", v, CONNECTOR[k]) for k, v in values.items() if v is not None],
        )
        station.statuses[(update.evse_id, update.connector_id)] = update.status
        if update.status == "Available":
            # nothing plugged in: nothing flows (README "Readings")
            evse = station.evses.setdefault(update.evse_id, _Evse())
            evse.ended = False
            when = stamp(update.timestamp, wall())
            bases = [base, f"evse.{update.evse_id}"]
            if not station.sessions.active:
                bases.append("meterValues")
            self._instantaneous(station, bases, 0.0, when)
        self._states(identity, station)

    def _states(self, identity: str, station: _Station) -> None:
        """The version-neutral state of every connector, and of the station
        (`info.state`: its first connector's), README "The database", `state`."""
        writes: list[Write] = []
        first: str | None = None
        for (evse_id, connector_id), status in sorted(
            station.statuses.items(), key=lambda item: (item[0][0], item[0][1] or 0)
        ):
            if not evse_id:
                continue
            evse = station.evses.get(evse_id) or _Evse()
            state = state_of(status, evse.charging_state, evse.running, evse.ended)
            if not station.connected:
                state = "offline"
            base = _connector_base(evse_id, connector_id)
            writes.append((f"{base}.state", state, CONNECTOR["state"]))
            first = first or state
        if first is None and (0, None) in station.statuses:
            first = state_of(station.statuses[(0, None)], None, False, False)
        if not station.connected:
            first = "offline"
        if first is not None:
            writes.append(("info.state", first, INFO["state"]))
        self._set(identity, writes)

    def _instantaneous(
        self, station: _Station, bases: list[str], value: float | None, when: Stamp
    ) -> None:
        """Power and current do not outlive what they describe (README "Readings"): at
        the end of a session, when the connector is Available (0) and while disconnected
        (None). Registers keep their value. A sample taken before `when` that arrives
        later does not bring them back."""
        written = now_ms()
        for base in bases:
            latest = station.readings.get(base)
            if not latest:
                continue
            changed = False
            for name, (_, known, unit, _) in list(latest.items()):
                if unit in INSTANTANEOUS_UNITS and known != value:
                    latest[name] = (when, value, unit, written)
                    changed = True
            if changed:
                self._publish(station, base)

    def _publish(self, station: _Station, base: str) -> None:
        """A base's latest readings become states: a snapshot, materialised once per
        commit however many messages arrived (the rows keep every sample)."""
        last = station.last_reading if base == "meterValues" else None
        snapshot = dict(station.readings.get(base, ()))
        produce = partial(_reading_writes, station.prefix, base, snapshot, last)
        self.store.set_states_lazily((station.prefix, base), produce)

    def _meter(self, identity: str, update: domain.MeterSample) -> None:
        station = self._station(identity)
        if update.evse_id is None and update.transaction_id is not None:
            # known from the session's own start, not guessed
            session = station.sessions.known.get(update.transaction_id)
            if session is not None and session.evse_id is not None:
                update = replace(update, evse_id=session.evse_id, connector_id=session.connector_id)
        received = now_ms()
        arrived = received / 1000
        evse_id, connector_id = update.evse_id, update.connector_id
        tid = update.transaction_id
        rows: list[tuple[Any, ...]] = []  # in MeterValueRow's order
        best: dict[str, tuple[int, Stamp, Any]] = {}
        # per timestamp text: parsed once, with its samples' group in the samples memory,
        # whether that group is known there, and the group's samples first seen now
        clock: dict[str | None, tuple[int, Stamp, int, bool, list[int]]] = {}
        samples, begins = station.samples, station.begins
        fresh: dict[int, list[int]] = {}
        taken: set[int] = set()  # a sample twice in this message is stored once too
        fresh_begins: list[tuple[int, int]] = []
        for r in update.readings:
            sampled_at = r.sampled_at
            parsed = clock.get(sampled_at)
            if parsed is None:
                group = hash((tid, sampled_at))
                parsed = clock[sampled_at] = (
                    int(time_suspect(sampled_at)),
                    stamp(sampled_at, arrived),
                    group,
                    group in samples.groups or group in begins.groups,
                    fresh.setdefault(group, []),
                )
            suspect, when, group, known, new = parsed
            if tid is not None:
                # the same sample in a later event of its transaction is stored once
                key = hash((tid, r))
                if key in taken or (known and (samples.has(group, key) or begins.has(group, key))):
                    continue
                taken.add(key)
                new.append(key)
                if r.context == "Transaction.Begin":
                    fresh_begins.append((group, key))
            rows.append(
                (
                    identity,
                    evse_id,
                    connector_id,
                    tid,
                    sampled_at,
                    r.measurand,
                    r.phase,
                    r.location,
                    r.context,
                    r.unit,
                    r.value,
                    received,
                    suspect,
                )
            )
            if r.location not in _SESSION_LOCATIONS:
                continue  # a grid-side (Inlet) or body reading is not the session's
            # the best reading of each name in this message: context first, then time
            rank = CONTEXT_RANK.get(r.context or "Sample.Periodic", 0)
            found = best.get(r.name)
            if found is None or rank > found[0] or (rank == found[0] and newer(when, found[1])):
                best[r.name] = (rank, when, r)
        for group, keys in fresh.items():
            if keys:
                samples.add(group, keys)
        for group, key in fresh_begins:
            begins.add(group, [key])
        if rows:
            self.store.put(MeterValueRows(rows))
            station.last_reading = received
        connector = _connector_base(update.evse_id, update.connector_id) if update.evse_id else None
        changed = self._latest(
            station,
            (connector, "meterValues"),
            [(name, when, r.value, r.unit) for name, (_, when, r) in best.items()],
            received,
        )
        if rows and "meterValues" not in changed:
            self._publish(station, "meterValues")  # a late sample: still a reading
        energy = best.get("energyWh")
        # 1.6 makes transactionId optional in MeterValues (§6.31) and some chargers leave it
        # out: the register of the connector a session runs on is that session's (the rows
        # keep what the charger sent)
        running = update.transaction_id or station.sessions.running_on(update.evse_id)
        if energy is not None and running is not None:
            self._set(identity, self._live_energy(station, running, energy[2].value))

    def _latest(
        self,
        station: _Station,
        bases: tuple[str | None, ...],
        readings: list[tuple[str, Stamp, float, str]],
        received: int,
    ) -> set[str]:
        """Readings (name, when taken, value, unit) become the latest of each base where
        they are not older than what it shows (README "Readings": the charge point's
        clock compared only with itself). Returns the bases that changed."""
        changed: set[str] = set()
        for base in bases:
            if base is None:
                continue
            latest = station.readings.setdefault(base, {})
            for name, when, value, unit in readings:
                known = latest.get(name)
                if known is None or newer(when, known[0]):
                    latest[name] = (when, value, unit, received)
                    changed.add(base)
            if base in changed:
                self._publish(station, base)
        return changed

    def _live_energy(self, station: _Station, transaction_id: str, register: float) -> list[Write]:
        sessions = station.sessions
        session = sessions.known.get(transaction_id)
        if session is None or session.stopped:
            return []
        session.now = register
        if transaction_id != sessions.last or session.start is None:
            return []
        return _energy_writes(register - session.start)

    def _transaction(self, identity: str, update: domain.TransactionEvent) -> None:
        station = self._station(identity)
        # a step of the clock first moves the running sessions onto the new clock
        received = int(check() * 1000)
        suspect = time_suspect(update.timestamp)
        session = station.sessions.known.get(update.transaction_id)
        if update.event == "Ended" and update.meter_stop_wh is None:
            # README "`transactions`": an end without a register (a charger that rebooted
            # mid-session) ends on the session's last reading: one energy everywhere
            stop = update.meter_now_wh
            if stop is None and session is not None:
                stop = session.stop if session.stop is not None else session.now
            update = replace(update, meter_stop_wh=stop)
        self.store.put(
            TransactionRow(
                identity=identity,
                transaction_id=update.transaction_id,
                evse_id=update.evse_id,
                connector_id=update.connector_id,
                id_token=update.id_token,
                started_at=update.timestamp if update.event == "Started" else None,
                stopped_at=update.timestamp if update.event == "Ended" else None,
                meter_start_wh=update.meter_start_wh,
                meter_stop_wh=update.meter_stop_wh,
                stop_reason=update.stop_reason if update.event == "Ended" else None,
                received_at=received,
                time_suspect=int(suspect),
                seq_no=update.seq_no,
                offline=int(update.offline),
            )
        )
        self._set(identity, self._session_writes(station.sessions, update, received))
        self._register_of(station, update, received)
        self._connector_after(identity, station, update)

    def _register_of(
        self, station: _Station, update: domain.TransactionEvent, received: int
    ) -> None:
        """The register at a session's start or stop (1.6 meterStart / meterStop, the
        register of a 2.x Started or Ended event) is the newest reading of the register,
        unless the charge point's clock says a reading it sent is newer (README
        "Readings")."""
        session = station.sessions.known.get(update.transaction_id)
        if update.event == "Started":
            register = update.meter_start_wh
        elif update.event == "Ended":
            register = update.meter_stop_wh
            start = session.start if session is not None else None
            if register is not None and start is not None and register < start:
                return  # a stop below the start is not the meter (firmware sending 0)
        else:
            return
        if register is None or session is None or session.evse_id is None:
            return
        when = stamp(update.timestamp, received / 1000)
        connector = _connector_base(session.evse_id, session.connector_id)
        station.last_reading = received
        reading = [("energyWh", when, register, "Wh")]
        if "meterValues" not in self._latest(
            station, (connector, "meterValues"), reading, received
        ):
            self._publish(station, "meterValues")

    def _connector_after(
        self, identity: str, station: _Station, update: domain.TransactionEvent
    ) -> None:
        """A session event changes the state of its EVSE; its end stops what flowed."""
        session = station.sessions.known.get(update.transaction_id)
        evse_id = update.evse_id or (session.evse_id if session else None)
        if evse_id is None:
            return
        evse = station.evses.setdefault(evse_id, _Evse())
        if update.charging_state is not None:
            evse.charging_state = update.charging_state
            state = (f"evse.{evse_id}.chargingState", evse.charging_state, CHARGING_STATE)
            self._set(identity, [state])
        if update.event == "Ended":
            evse.running, evse.ended = False, True
            connector = update.connector_id or (session.connector_id if session else None)
            bases = [_connector_base(evse_id, connector), f"evse.{evse_id}"]
            if not station.sessions.active:
                bases.append("meterValues")
            self._instantaneous(station, bases, 0.0, stamp(update.timestamp, wall()))
        elif session is None or not session.stopped:
            evse.running, evse.ended = True, False
        self._states(identity, station)

    def _session_writes(
        self, sessions: _Sessions, update: domain.TransactionEvent, received: int
    ) -> list[Write]:
        tid = update.transaction_id
        writes: list[Write] = [("transactions.lastEvent", update.raw, TRANSACTIONS["lastEvent"])]
        if tid == "-1":
            return writes  # anonymous: the row records it, the tree cannot place it
        session = sessions.known.get(tid)
        is_new = session is None
        if session is None:
            # an Ended of a session never seen, while another runs, is an old one
            # delivered late: it does not become the latest
            becomes_last = update.event != "Ended" or not sessions.active
            session = sessions.known[tid] = _Session()
            if becomes_last:
                sessions.last = tid
                writes += [(f"transactions.{key}", None, TRANSACTIONS[key]) for key in _LAST_FIELDS]
                writes.append(("transactions.last.id", tid, TRANSACTIONS["last.id"]))
            sessions.forget_old()
        session.updated_at = received
        if session.evse_id is None and update.evse_id is not None:
            session.evse_id, session.connector_id = update.evse_id, update.connector_id
        if session.start is None and update.meter_start_wh is not None:
            session.start = update.meter_start_wh
        if update.event == "Ended":
            session.stopped = True
            if session.stop is None:
                session.stop = (
                    update.meter_stop_wh
                    if update.meter_stop_wh is not None
                    else update.meter_now_wh
                )
        elif not session.stopped and update.meter_now_wh is not None:
            session.now = update.meter_now_wh
        if tid == sessions.last:
            for key, value in (
                ("last.idToken", update.id_token),
                ("last.evseId", session.evse_id),
                ("last.meterStartWh", session.start),
                ("last.startedAt", update.timestamp if update.event == "Started" else None),
                ("last.stoppedAt", update.timestamp if update.event == "Ended" else None),
                ("last.stopReason", update.stop_reason if update.event == "Ended" else None),
            ):
                if value is not None:
                    writes.append((f"transactions.{key}", value, TRANSACTIONS[key]))
            register = session.stop if session.stopped else session.now
            if session.start is not None:
                energy = 0.0 if register is None and not session.stopped else None
                if register is not None:
                    energy = register - session.start
                if energy is not None or is_new:
                    writes += _energy_writes(energy)
        writes.append(("transactions.active", sessions.active, TRANSACTIONS["active"]))
        return writes

    def _device_model(self, identity: str, update: domain.DeviceModelReport) -> None:
        writes: list[Write] = []
        for v in update.values:
            component = component_segment(
                v.component, v.evse_id, v.connector_id, v.component_instance
            )
            variable = variable_segment(v.variable, v.variable_instance)
            kind = _DM_TYPES.get(v.data_type or "", "string")
            meta = Meta(kind, "state", v.unit, v.writable, f"{v.component} {v.variable}")
            state = f"dm.{component}.{variable}.{escape(v.attribute_type)}.value"
            value = _dm_value(v.value, kind)
            writes.append((state, value, meta))
            if v.writable:
                self._report(f"{self.prefix(identity)}.{state}", value)
        if writes:  # the last part of a report may be empty
            self._set(identity, writes)

    def _configuration_report(self, identity: str, update: domain.ConfigurationReport) -> None:
        self.configuration(identity, update.keys)

    def _vendor_data(self, identity: str, update: domain.VendorData) -> None:
        vin = find_vin(update.data)
        if vin is not None:
            self._set(identity, [("info.vin", vin, INFO["vin"])])

    _handlers: ClassVar[dict[type, Callable[[Tree, str, Any], None]]] = {
        domain.StationBooted: _booted,
        domain.HeartbeatReceived: _heartbeat,
        domain.ConnectorStatus: _status,
        domain.MeterSample: _meter,
        domain.TransactionEvent: _transaction,
        domain.DeviceModelReport: _device_model,
        domain.ConfigurationReport: _configuration_report,
        domain.VendorData: _vendor_data,
    }


RAW_META = Meta("json", "json", None, False, "latest payload (raw JSON)")
RESPONSE_META = Meta("json", "json", None, False, "its answer (raw JSON)")
_DM_TYPES = {
    "integer": "number",
    "decimal": "number",
    "boolean": "boolean",
    "string": "string",
    "dateTime": "string",
    "OptionList": "string",
    "SequenceList": "string",
    "MemberList": "string",
}


def _connector_base(evse_id: int, connector_id: int | None) -> str:
    """A 2.x message that names no connector is not guessed as connector 1: its readings
    stay at the EVSE."""
    if connector_id is None:
        return f"evse.{evse_id}"
    return f"evse.{evse_id}.connector.{connector_id}"


def _energy_writes(energy_wh: float | None) -> list[Write]:
    kwh = None if energy_wh is None else round(energy_wh / 1000, 6)
    return [
        ("transactions.last.energyWh", energy_wh, TRANSACTIONS["last.energyWh"]),
        ("transactions.last.energyKWh", kwh, TRANSACTIONS["last.energyKWh"]),
    ]


def _dm_value(value: Any, kind: str) -> Any:
    if value is None or not isinstance(value, str):
        return value
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "boolean":
        return {"true": True, "false": False}.get(value.lower(), value)
    return value
