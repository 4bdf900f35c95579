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

from appliance.domain import jsontext, secrets
from appliance.station import CallFailed, Connected, Station, Stations
from appliance.store import (
    CommandDone,
    CommandReader,
    ControlOutcome,
    Meta,
    StateWrite,
    Store,
    now_ms,
)
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
    "requestStartTransaction.chargingProfile": (None, _writable("json", "optional, JSON")),
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
    #: the value in force when it was written, if the database knew it (control_queue)
    previous: Any = None
    had_previous: bool = False

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
        #: the value in force of each control state used in this run (or before: loaded
        #: from control_outcomes at start); what a failed command goes back to
        self._in_force: dict[str, Any] = {}
        #: parameters that hold a secret: the database shows "***", the call gets this
        self._secret_parameters: dict[str, Any] = {}
        #: by command seq: what was changed to make a command work (control_outcomes.note)
        self._notes: dict[int, str] = {}
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
        self._in_force = await self._read(self._reader.in_force)
        for seq, state_id, value, previous, had_previous in stale:
            prefix, _, path = state_id.partition(".")
            identity = self._prefixes.get(prefix, "")
            command = Command(seq, state_id, identity, prefix, path, value, previous, had_previous)
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
        for seq, state_id, value, previous, had_previous in rows:
            self._last_seq = max(self._last_seq, seq)
            prefix, _, path = state_id.partition(".")
            if prefix not in self._prefixes:
                self._prefixes = await self._read(self._reader.identities)
            identity = self._prefixes.get(prefix)
            command = Command(
                seq,
                state_id,
                identity or unescape(prefix),
                prefix,
                path,
                value,
                previous,
                had_previous,
            )
            if identity is None:
                self._finish(command, None, "unknown charge point: it has never connected")
                continue
            commands.append(command)
        # README "Controls": rows picked up together are applied parameters first
        for command in commands:
            if command.control in PARAMETERS:
                self._take_parameter(command)
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

    def _take_parameter(self, command: Command) -> None:
        """A parameter is checked when it is written (README "Controls"): a bad one is
        refused, nothing is sent, and the value in force stays."""
        assert command.control is not None
        try:
            value = check_parameter(command.control, command.value)
        except CommandError as exc:
            self._finish(command, None, str(exc))
            return
        if isinstance(value, str) and secrets.may_hold(value):
            # rpc.payload with a password: the call will carry it, the database not
            self._secret_parameters[command.state_id] = value
            shown = jsontext.dumps(secrets.redact(_json(value, command.path))[0])
            self._finish(command, None, None, outcome=False, value=shown)
            return
        self._secret_parameters.pop(command.state_id, None)
        self._finish(command, None, None, outcome=False, value=value)

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
        if name is None and command.value == secrets.MASK and secrets.state_is_secret(command.path):
            # the mask written back (a value copied from the database or a page) would
            # become the charger's secret: README "What is protected"
            self._finish(command, None, f"{command.path}: {secrets.MASK} is the mask, not a secret")
            return
        try:
            action, payload, judge = await self._build(command, station.version)
        except (CommandError, ValueError) as exc:
            self._finish(command, None, str(exc))
            return
        try:
            response = await station.call(action, payload)
        except CallFailed as exc:
            self._finish(command, None, str(exc))
            return
        error = judge(response)
        if command.control is None and error is None:  # a dm.* or config.* write
            self.tree.confirm(command.state_id, _shown(command.path, command.value))
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
            return await self._charge_limit(command, version)
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
        self, command: Command, version: Version
    ) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], str | None]]:
        build = version.controls
        if command.value in (None, ""):
            return (*build["clearChargeLimit"]({}), _cleared)
        params = await self._params(command, "", ("chargeLimitType", "numberOfPhases"))
        unit = check_parameter("chargeLimitType", params["chargeLimitType"] or "A")
        phases = check_parameter("numberOfPhases", params["numberOfPhases"])
        limit = check_limit(command.value, unit)
        setting, words = version.rate_units
        ids = [f"{command.prefix}.{setting}", f"{command.prefix}.meterValues.voltageL1"]
        found = await self._read(self._reader.values, ids)
        taken = taken_units(found.get(ids[0]), words)
        if taken and unit not in taken:
            # README "Controls": the unit the charger takes, converted and said so
            volts = _voltage(found.get(ids[1]))
            limit, unit, how = convert_limit(limit, unit, phases or 3, volts)
            self._notes[command.seq] = (
                f"sent as {limit:g} {unit} ({how}): the charge point takes only {unit}"
                f" ({setting} = {found.get(ids[0])})"
            )
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
        # a parameter holding a secret: the database shows "***", the call gets the value
        secret = self._secret_parameters
        return {n: secret.get(base + n, found.get(base + n)) for n in names}

    # ------------------------------------------------------------------- outcome

    def _in_force_of(self, command: Command) -> Any:
        """What a state goes back to when a write did not take (README "Controls"): a
        Device Model or configuration value what the charge point last reported; a
        control the value last in force; else the value in force when it was written, or
        the control's default."""
        state_id = command.state_id
        if command.control is None:
            try:
                return self.tree.reported(state_id)
            except KeyError:
                pass
        if state_id in self._in_force:
            return self._in_force[state_id]
        if command.had_previous:
            return command.previous
        return default_of(command.control)

    def _finish(
        self,
        command: Command,
        response: dict[str, Any] | None,
        error: str | None,
        outcome: bool = True,
        value: Any = _UNSET,
    ) -> None:
        """Write the outcome, acknowledge the command with the value now in force, take
        it off the queue: one commit."""
        now = now_ms()
        name = command.control
        ok = error is None
        if value is _UNSET:
            if name in BUTTONS:
                value = 0  # a button is released whatever happened
            elif ok:
                value = None if name == "chargeLimit" and command.value == "" else command.value
            else:
                value = self._in_force_of(command)
        value = _shown(command.path, value)
        if name not in BUTTONS:
            self._in_force[command.state_id] = value
        answer = "" if response is None else jsontext.dumps(response)
        note = self._notes.pop(command.seq, None)
        if outcome or not ok:
            # kept per state until it is written again, whatever other controls do
            written = _shown(command.path, command.value)
            self.store.put(
                ControlOutcome(
                    command.state_id, now, written, int(ok), answer or None, error, value, note
                )
            )
        if outcome:
            base = f"{command.prefix}.{outcome_folder(command.path) or 'control'}"
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
                done = f"done; {note}" if note else "done"
                log.info("%s: %s %s", command.identity, command.path, done)
        elif not ok:
            log.warning("%s: %s refused: %s", command.identity, command.path, error)
        self.store.put(CommandDone(command.state_id, value, now, command.seq))


def _shown(path: str, value: Any) -> Any:
    """What the database may hold of a value written to `<identity>.<path>`: a secret is
    "***" (README "Security")."""
    if value not in (None, "") and secrets.state_is_secret(path):
        return secrets.MASK
    return value


def default_of(control: str | None) -> Any:
    """A control's value before anything was put in force (None for anything else)."""
    if control in PARAMETERS:
        return PARAMETERS[control][0]
    if control in TRIGGERS:
        return TRIGGERS[control][0]
    return None


#: README "Controls": the largest limit taken, per unit; anything above is a typo (7000 A)
MAX_LIMIT = {"A": 500.0, "W": 1_000_000.0}
#: 2.x IdTokenEnumType (the values a RequestStartTransaction may carry)
ID_TOKEN_TYPES = frozenset(
    {
        "Central",
        "eMAID",
        "ISO14443",
        "ISO15693",
        "KeyCode",
        "Local",
        "MacAddress",
        "NoAuthorization",
    }
)


def check_limit(value: Any, unit: str) -> float:
    """A charge limit: a number from 0 to MAX_LIMIT in `unit`."""
    limit = _number(value, "chargeLimit")
    if not 0 <= limit <= MAX_LIMIT[unit]:
        raise CommandError(
            f"chargeLimit must be 0..{MAX_LIMIT[unit]:g} {unit} (chargeLimitType), not {value!r}"
        )
    return limit


#: README "Controls": the voltage a limit is converted with, unless the charge point
#: reports a plausible one of its own (meterValues.voltageL1)
NOMINAL_VOLTAGE = 230.0
_PLAUSIBLE_VOLTAGE = (100.0, 300.0)


def taken_units(setting: Any, words: dict[str, str]) -> set[str]:
    """The rate units (A, W) a charge point says it takes; empty: it has not said."""
    if not isinstance(setting, str):
        return set()
    return {words[word.strip()] for word in setting.split(",") if word.strip() in words}


def convert_limit(limit: float, unit: str, phases: int, volts: float) -> tuple[float, str, str]:
    """A limit in the other unit: A × volts × phases = W. Returns (limit, unit, how)."""
    per_amp = f"{volts:g} V × {phases} phase{'s' if phases > 1 else ''}"
    if unit == "A":
        return round(limit * volts * phases), "W", f"{limit:g} A × {per_amp}"
    return round(limit / (volts * phases), 1), "A", f"{limit:g} W ÷ ({per_amp})"


def _voltage(reported: Any) -> float:
    low, high = _PLAUSIBLE_VOLTAGE
    if isinstance(reported, int | float) and low <= reported <= high:
        return float(reported)
    return NOMINAL_VOLTAGE


def _unit(value: Any) -> str:
    unit = str(value).strip()
    if unit.upper() not in MAX_LIMIT:
        raise CommandError(f"chargeLimitType must be A or W, not {value!r}")
    return unit.upper()


def _phases(value: Any) -> int | None:
    phases = _int(value, "numberOfPhases")
    if phases is not None and not 1 <= phases <= 3:
        raise CommandError(f"numberOfPhases must be 1, 2 or 3, not {value!r}")
    return phases


def _count(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        number = _int(value, name)
        if number is not None and number < 0:
            raise CommandError(f"{name} must be 0 or more, not {value!r}")
        return value

    return check


def _token_type(value: Any) -> Any:
    if value not in (None, "") and value not in ID_TOKEN_TYPES:
        allowed = ", ".join(sorted(ID_TOKEN_TYPES))
        raise CommandError(f"requestStartTransaction.idTokenType must be one of {allowed}")
    return value


def _json_object(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        parsed = _json(value, name)
        if parsed is not None and not isinstance(parsed, dict):
            raise CommandError(f"{name} must be a JSON object")
        return value

    return check


#: README "Controls": each parameter's check, applied when it is written
PARAMETER_CHECKS: dict[str, Callable[[Any], Any]] = {
    "chargeLimitType": _unit,
    "numberOfPhases": _phases,
    "requestStartTransaction.evseId": _count("requestStartTransaction.evseId"),
    "requestStartTransaction.remoteStartId": _count("requestStartTransaction.remoteStartId"),
    "requestStartTransaction.idTokenType": _token_type,
    "requestStartTransaction.chargingProfile": _json_object(
        "requestStartTransaction.chargingProfile"
    ),
    "rpc.payload": _json_object("rpc.payload"),
}


def prepare(state_id: str, value: Any) -> tuple[list[tuple[str, Any]], str | None]:
    """A command on `state_id` as `set` writes it (README "Command line"): the writes, and
    where its outcome will be (`<prefix>.control…`; None for a parameter, which is checked
    here, before anything is written). CommandError says why it cannot be."""
    prefix, _, path = state_id.partition(".")
    if not path:
        raise CommandError(f"{state_id!r} is not a full state id")
    folder = outcome_folder(path)
    if folder is None:
        check_parameter(path.removeprefix("control."), value)
    return [(state_id, value)], None if folder is None else f"{prefix}.{folder}"


def check_parameter(name: str, value: Any) -> Any:
    """`value` as a parameter takes it; CommandError says why it cannot be taken."""
    check = PARAMETER_CHECKS.get(name)
    return value if check is None else check(value)


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


__all__ = [
    "CommandError",
    "Controls",
    "check_limit",
    "check_parameter",
    "default_states",
    "prepare",
]
