"""Controls: commands written into the database by any process become OCPP calls.

A trigger on `states` queues every write with `ack = 0` in `control_queue` (schema 3), so
a command is never lost to another write of the same row and never runs twice. This task
looks at the queue four times a second — cheap while idle: one `PRAGMA data_version` tells
whether anything was committed since the last look — and hands each command to the
worker of its charge point, which runs them one after another. The outcome is written
back (README "Controls"): `lastResponse`, `lastError`, `ack = 1`, a trigger set back to 0.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from appliance.station import CallFailed, Connected, Station, Stations
from appliance.store import CommandDone, CommandReader, Meta, StateWrite, Store, now_ms
from appliance.tree import Tree
from appliance.tree.ids import unescape
from appliance.versions import Version

log = logging.getLogger("appliance.controls")

#: how often the queue is looked at: README "Controls" wants a command picked up within 0.5 s
POLL_INTERVAL_SEC = 0.25
#: statuses that mean the charge point did (or will do) what was asked
SUCCESS = frozenset({"Accepted", "Scheduled", "RebootRequired"})


_UNSET: Any = object()


class CommandError(Exception):
    """The command cannot become a call (a bad parameter); the message says why."""


def _writable(kind: str, name: str) -> Meta:
    return Meta(kind, "control", None, True, name)


def _outcome(name: str) -> Meta:
    return Meta("string", "state", None, False, name)


# Every control state of README "Controls" with its default and description. Parameters are taken
# at once; triggers send a call. `folder` names where the outcome is written.
PARAMETERS: dict[str, tuple[Any, Meta]] = {
    "chargeLimitType": ("A", _writable("string", "unit of chargeLimit: W or A")),
    "numberOfPhases": (3, _writable("number", "phases for chargeLimit (1..3)")),
    "requestStartTransaction.idToken": ("", _writable("string", "idToken to start with")),
    "requestStartTransaction.idTokenType": ("Central", _writable("string", "2.x idToken type")),
    "requestStartTransaction.evseId": (1, _writable("number", "EVSE (1.6: connector)")),
    "requestStartTransaction.remoteStartId": (0, _writable("number", "2.x; 0: generated")),
    "requestStartTransaction.chargingProfile": ("", _writable("json", "optional, JSON")),
    "requestStopTransaction.transactionId": ("", _writable("string", "empty: the last one")),
    "rpc.method": ("", _writable("string", "any OCPP action")),
    "rpc.payload": ("{}", _writable("json", "its payload, JSON")),
}
TRIGGERS: dict[str, tuple[Any, Meta, str]] = {
    "availability": (True, _writable("boolean", "operative"), "control"),
    "hardReset.trigger": (False, _writable("boolean", "hard reset"), "control"),
    "softReset.trigger": (False, _writable("boolean", "soft reset"), "control"),
    "chargeLimit": (None, _writable("number", "charge limit; empty: none"), "control"),
    "requestStartTransaction.trigger": (
        False,
        _writable("boolean", "start a transaction"),
        "control.requestStartTransaction",
    ),
    "requestStopTransaction.trigger": (
        False,
        _writable("boolean", "stop a transaction"),
        "control.requestStopTransaction",
    ),
    "rpc.execute": (False, _writable("boolean", "send rpc.method"), "control.rpc"),
}
#: a trigger of this kind is a button: any true value presses it, then it goes back to 0
BUTTONS = frozenset(name for name in TRIGGERS if name.endswith((".trigger", ".execute")))
FOLDERS = ("control", *sorted({folder for *_, folder in TRIGGERS.values()} - {"control"}))


def outcome_folder(path: str) -> str | None:
    """Where the outcome of a write to `<identity>.<path>` goes; None for a parameter,
    which is taken as it is."""
    name = path.removeprefix("control.") if path.startswith("control.") else None
    if name in PARAMETERS:
        return None
    return TRIGGERS[name][2] if name in TRIGGERS else "control"


@dataclass(frozen=True, slots=True)
class Command:
    seq: int
    state_id: str
    identity: str
    prefix: str
    #: the id below the identity: control.chargeLimit, dm.EVSE@1.Power.MaxSet.value, …
    path: str
    value: Any

    @property
    def control(self) -> str | None:
        return self.path.removeprefix("control.") if self.path.startswith("control.") else None


def default_states(prefix: str) -> list[StateWrite]:
    """The control states of a charge point, created on its first connection."""
    writes: list[StateWrite] = []
    for name, (value, meta) in PARAMETERS.items():
        writes.append(StateWrite(f"{prefix}.control.{name}", value, meta))
    for name, (value, meta, _) in TRIGGERS.items():
        writes.append(StateWrite(f"{prefix}.control.{name}", value, meta))
    for folder in FOLDERS:
        writes.append(StateWrite(f"{prefix}.{folder}.lastResponse", "", _outcome("answer (JSON)")))
        writes.append(StateWrite(f"{prefix}.{folder}.lastError", "", _outcome("error; empty: ok")))
    return writes


@dataclass(frozen=True, slots=True)
class _Job:
    """A command for a charge point's command worker (station.Job)."""

    controls: Controls
    command: Command

    async def run(self, station: Station) -> None:
        try:
            await self.controls._execute(self.command, station)
        except Exception as exc:  # a bug must not stop the charge point's controls
            log.exception("%s: %s failed", self.command.identity, self.command.path)
            self.controls._finish(self.command, None, f"internal error: {exc}")

    def abandon(self, reason: str) -> None:
        self.controls._finish(self.command, None, reason)


class Controls:
    def __init__(self, stations: Stations, store: Store, tree: Tree) -> None:
        self.stations = stations
        self.store = store
        self.tree = tree
        self._reader = CommandReader(store.path)
        # one connection, one thread at a time
        self._reader_limiter = trio.CapacityLimiter(1)
        self._events = stations.subscribe()
        self._prefixes: dict[str, str] = {}
        self._last_seq = 0
        self._nursery: trio.Nursery | None = None

    async def _read(self, function: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(function, *args, limiter=self._reader_limiter)

    # ---------------------------------------------------------------- life cycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._sweep_stale()
            nursery.start_soon(self._follow_connections)
            task_status.started()
            try:
                while True:
                    try:
                        await self._poll()
                    except sqlite3.Error as exc:
                        # a database another process holds or damaged must not take the
                        # charge points down with it: the commands wait in the queue
                        log.warning("controls: cannot read the command queue: %s", exc)
                        await trio.sleep(1)
                    await trio.sleep(POLL_INTERVAL_SEC)
            finally:
                with trio.CancelScope(shield=True):
                    await self._read(self._reader.close)

    async def _sweep_stale(self) -> None:
        """README "Controls": a command still waiting when the appliance starts is not run (a reset
        queued hours ago must not fire)."""
        stale = await self._read(self._reader.commands, 0)
        self._prefixes = await self._read(self._reader.identities)
        for seq, state_id, value, _ in stale:
            prefix, _, path = state_id.partition(".")
            command = Command(seq, state_id, self._prefixes.get(prefix, ""), prefix, path, value)
            self._finish(command, None, "not run: the appliance was not running")
            self._last_seq = max(self._last_seq, seq)
        if stale:
            log.info(
                "controls: %d commands written while the appliance was down not run", len(stale)
            )

    async def _poll(self) -> None:
        rows = await self._read(self._reader.commands, self._last_seq)
        if not rows:
            return
        commands = []
        for seq, state_id, value, _ in rows:
            self._last_seq = max(self._last_seq, seq)
            prefix, _, path = state_id.partition(".")
            if prefix not in self._prefixes:
                self._prefixes = await self._read(self._reader.identities)
            identity = self._prefixes.get(prefix)
            command = Command(seq, state_id, identity or unescape(prefix), prefix, path, value)
            if identity is None:
                self._finish(command, None, "unknown charge point: it has never connected")
                continue
            commands.append(command)
        # README "Controls": rows picked up together are applied parameters first
        for command in commands:
            if command.control in PARAMETERS:
                self._finish(command, None, None, outcome=False)
        for command in commands:
            if command.control not in PARAMETERS:
                station = self.stations.get(command.identity)
                if station is None:
                    self._finish(command, None, "not connected")
                else:
                    # the charge point's own worker runs them one after another
                    station.submit(_Job(self, command))

    async def _follow_connections(self) -> None:
        """Each charge point gets its control states on its first connection."""
        async for event in self._events:
            if isinstance(event, Connected):
                prefix = self.tree.prefix(event.station.identity)
                self.store.create_states(default_states(prefix))

    # ----------------------------------------------------------------- execution

    async def _execute(self, command: Command, station: Station) -> None:
        name = command.control
        if name in BUTTONS and not _truthy(command.value):
            self._finish(command, None, None, outcome=False)  # released, not pressed
            return
        if name is None and not await self._read(self._reader.writable, command.state_id):
            self._finish(command, None, f"{command.path} is not writable")
            return
        if name is not None and name not in TRIGGERS:
            self._finish(command, None, f"control.{name} is not a control")
            return
        try:
            action, payload, judge = await self._build(command, station.version)
        except (CommandError, ValueError) as exc:
            self._finish(command, None, str(exc))
            return
        try:
            response = await station.call(action, payload)
        except CallFailed as exc:
            self._finish(command, None, str(exc), value=self._reported(command))
            return
        error = judge(response)
        if command.control is None:  # a dm.* or config.* write
            if error is None:
                self.tree.confirm(command.state_id, command.value)
            else:
                self._finish(command, response, error, value=self._reported(command))
                return
        self._finish(command, response, error)

    async def _build(
        self, command: Command, version: Version
    ) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], str | None]]:
        """(action, payload, judge of the answer) of a command, for its version."""
        name = command.control
        build = version.controls
        if name == "availability":
            return (*build["availability"]({"operative": _truthy(command.value)}), _status)
        if name in ("hardReset.trigger", "softReset.trigger"):
            return (*build[name.removesuffix(".trigger")]({}), _status)
        if name == "chargeLimit":
            return await self._charge_limit(command, build)
        if name == "requestStartTransaction.trigger":
            params = await self._params(command, "requestStartTransaction", _START_PARAMS)
            token = str(params["idToken"] or "")
            if not token:
                raise CommandError("requestStartTransaction.idToken is empty")
            remote_start_id = _int(params["remoteStartId"], "remoteStartId") or (
                now_ms() // 1000 % 1_000_000_000 + self.stations.request_id()
            )
            values = {
                "idToken": token,
                "idTokenType": params["idTokenType"] or "Central",
                "evseId": _int(params["evseId"], "evseId"),
                "remoteStartId": remote_start_id,
                "chargingProfile": _json(params["chargingProfile"], "chargingProfile"),
            }
            return (*build["requestStartTransaction"](values), _status)
        if name == "requestStopTransaction.trigger":
            ids = [f"{command.prefix}.control.requestStopTransaction.transactionId"]
            ids.append(f"{command.prefix}.transactions.last.id")
            found = await self._read(self._reader.values, ids)
            transaction = found.get(ids[0]) or found.get(ids[1])
            if transaction in (None, ""):
                raise CommandError("no transaction id given and none known")
            return (*build["requestStopTransaction"]({"transactionId": transaction}), _status)
        if name == "rpc.execute":
            params = await self._params(command, "rpc", ("method", "payload"))
            method = str(params["method"] or "")
            if not method:
                raise CommandError("rpc.method is empty")
            payload = _json(params["payload"], "rpc.payload")
            if payload is None:
                payload = {}
            if not isinstance(payload, dict):
                raise CommandError("rpc.payload must be a JSON object")
            return method, payload, lambda response: None
        if command.path.startswith("dm.") and command.path.endswith(".value"):
            return (*build["setVariable"](_variable(command)), _variable_status)
        if command.path.startswith("config."):
            key = unescape(command.path.removeprefix("config."))
            return (*build["changeConfiguration"]({"key": key, "value": command.value}), _status)
        raise CommandError(f"{command.path} is not a control")

    async def _charge_limit(
        self, command: Command, build: dict[str, Callable[[dict[str, Any]], Any]]
    ) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], str | None]]:
        if command.value in (None, ""):
            return (*build["clearChargeLimit"]({}), _cleared)
        limit = _number(command.value, "chargeLimit")
        params = await self._params(command, "", ("chargeLimitType", "numberOfPhases"))
        unit = str(params["chargeLimitType"] or "A").upper()
        if unit not in ("W", "A"):
            raise CommandError(f"chargeLimitType must be W or A, not {unit!r}")
        phases = _int(params["numberOfPhases"], "numberOfPhases")
        if phases is not None and not 1 <= phases <= 3:
            raise CommandError(f"numberOfPhases must be 1..3, not {phases}")
        action, payload = build["chargeLimit"]({"limit": limit, "unit": unit, "phases": phases})
        profile = _profile_facts(payload)

        def judge(response: dict[str, Any]) -> str | None:
            error = _status(response)
            if error is None:
                return None
            # what was sent, so that the user can try the other unit or purpose
            return f"{error} (sent {profile}; some chargers take only the other unit)"

        return action, payload, judge

    async def _params(self, command: Command, folder: str, names: tuple[str, ...]) -> dict:
        base = f"{command.prefix}.control." + (f"{folder}." if folder else "")
        found = await self._read(self._reader.values, [base + n for n in names])
        return {n: found.get(base + n) for n in names}

    # ------------------------------------------------------------------- outcome

    def _reported(self, command: Command) -> Any:
        """What the state goes back to when a write did not take: the value the charge
        point last reported (a Device Model or configuration state mirrors the charger);
        a control keeps what was written (a button goes back to 0)."""
        if command.control is not None:
            return _UNSET
        try:
            return self.tree.reported(command.state_id)
        except KeyError:
            return command.value

    def _finish(
        self,
        command: Command,
        response: dict[str, Any] | None,
        error: str | None,
        outcome: bool = True,
        value: Any = _UNSET,
    ) -> None:
        """Write the outcome, acknowledge the command, take it off the queue: one commit."""
        now = now_ms()
        name = command.control
        if outcome:
            base = f"{command.prefix}.{outcome_folder(command.path) or 'control'}"
            answer = "" if response is None else json.dumps(response, ensure_ascii=False)
            self.store.set_states(
                [
                    StateWrite(f"{base}.lastResponse", answer, _outcome("answer (JSON)")),
                    StateWrite(f"{base}.lastError", error or "", _outcome("error; empty: ok")),
                ],
                now,
            )
            if error:
                log.warning("%s: %s: %s", command.identity, command.path, error)
            else:
                log.info("%s: %s done", command.identity, command.path)
        if value is _UNSET:
            value = 0 if name in BUTTONS else command.value
        self.store.put(CommandDone(command.state_id, value, now, command.seq))


_START_PARAMS = ("idToken", "idTokenType", "evseId", "remoteStartId", "chargingProfile")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _int(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CommandError(f"{name} must be a whole number, not {value!r}") from None
    if not number.is_integer():
        raise CommandError(f"{name} must be a whole number, not {value!r}")
    return int(number)


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CommandError(f"{name} must be a number, not {value!r}") from None


def _json(value: Any, name: str) -> Any:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise CommandError(f"{name} is not JSON: {exc}") from None


def _status(response: dict[str, Any]) -> str | None:
    status = response.get("status")
    if status is None or status in SUCCESS:
        return None
    return f"rejected: {status}"


def _cleared(response: dict[str, Any]) -> str | None:
    # Unknown: there was no profile of the appliance's to clear — the limit is gone
    return None if response.get("status") == "Unknown" else _status(response)


def _variable_status(response: dict[str, Any]) -> str | None:
    results = response.get("setVariableResult") or [{}]
    status = results[0].get("attributeStatus")
    return None if status in SUCCESS else f"rejected: {status}"


def _profile_facts(payload: dict[str, Any]) -> str:
    profile = payload.get("csChargingProfiles") or payload.get("chargingProfile") or {}
    schedule = profile.get("chargingSchedule") or {}
    if isinstance(schedule, list):
        schedule = schedule[0] if schedule else {}
    return (
        f"{profile.get('chargingProfilePurpose')}, stack level {profile.get('stackLevel')},"
        f" rate unit {schedule.get('chargingRateUnit')}"
    )


def _variable(command: Command) -> dict[str, Any]:
    """`dm.<Component>[@evse[-connector]][#instance].<Variable>[#instance].<Attr>.value`
    back to SetVariables' terms (the segments were escaped reversibly)."""
    parts = command.path.split(".")
    if len(parts) != 5:
        raise CommandError(f"{command.path} is not a Device Model value id")
    _, component, variable, attribute, _ = parts
    name, _, instance = component.partition("#")
    name, _, where = name.partition("@")
    evse, _, connector = where.partition("-")
    variable_name, _, variable_instance = variable.partition("#")
    value = command.value
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = "" if value is None else str(value)
    return {
        "component": unescape(name),
        "componentInstance": unescape(instance) or None,
        "evseId": int(evse) if evse else None,
        "connectorId": int(connector) if connector else None,
        "variable": unescape(variable_name),
        "variableInstance": unescape(variable_instance) or None,
        "attributeType": unescape(attribute),
        "value": text,
    }


__all__ = ["Controls", "default_states"]
