"""Readings the appliance asks for (README, issue 26): after each boot, what a charge
point measures is set up to match `[readings]`, safely.

Subscribes to the stations' `Reported` events (the configuration or Device Model fetched
after boot) and hands the writes to the charge point's command worker, where they run
one after another with the user's controls. What to write is decided by `plan` (pure);
here it is written, and each write's outcome goes where a control's goes:
`control_outcomes` and the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from appliance.config import Readings as Wanted
from appliance.domain import Setting, jsontext
from appliance.readings.plan import TAKEN, Memory, Step, Terms, members, plan, trials
from appliance.station import CallFailed, Reported, Station, Stations
from appliance.store import ControlOutcome, Store, now_ms
from appliance.tree import Tree

log = logging.getLogger("appliance.readings")


class Readings:
    def __init__(self, stations: Stations, store: Store, tree: Tree) -> None:
        self.stations = stations
        self.store = store
        self.tree = tree
        self._events = stations.subscribe()
        #: per identity and setting: what was written and refused in this run (a charge
        #: point that reboots after a write is not written to again)
        self._memory: dict[str, dict[str, Memory]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for event in self._events:
            if not isinstance(event, Reported):
                continue
            wanted = self.stations.config.readings_for(event.station.identity)
            if wanted.configure:
                event.station.submit(_Job(self, event.settings, wanted))

    async def configure(self, station: Station, reported: list[Setting], wanted: Wanted) -> None:
        """Write what differs, one setting after another."""
        version = station.version
        terms = Terms(version.reading_settings, version.list_lengths, version.measurands)
        memory = self._memory.setdefault(station.identity, {})
        steps, skipped = plan(reported, wanted, terms, memory)
        if skipped:
            shown = "; ".join(f"{skip.name}: {skip.reason}" for skip in skipped)
            log.info("%s: readings: left alone: %s", station.identity, shown)
        for step in steps:
            remembered = memory.setdefault(step.setting.name, Memory())
            try:
                await self._write(station, step, remembered)
            except CallFailed as exc:
                log.warning(
                    "%s: readings: %s not written: %s; the rest waits for the next boot",
                    station.identity,
                    step.setting.name,
                    exc,
                )
                return

    async def _write(self, station: Station, step: Step, memory: Memory) -> None:
        """One setting: a value, or for the sampled list the search for the list the charge
        point takes (`trials`); one outcome row for it."""
        setting = step.setting
        in_force = setting.value
        taken: str | None = None
        answers: list[str] = []
        response: dict | None = None
        error: str | None = None
        search = trials(step.measurands) if step.search else None
        value = step.value if search is None else ",".join(next(search))
        reboot = False
        try:
            while True:
                try:
                    response, status = await self._set(station, setting, value)
                except CallFailed as exc:
                    error = str(exc)
                    raise
                answers.append(f"{value!r}: {status}")
                if status in TAKEN:
                    taken = in_force = value
                    reboot = status == "RebootRequired"
                    error = None
                else:
                    error = f"rejected: {status}"
                if search is None:
                    break
                try:
                    value = ",".join(search.send(status in TAKEN))
                except StopIteration:
                    break
        finally:
            if answers or error:
                self._record(station, step, taken, in_force, response, error, answers, reboot)
        if taken is not None:
            memory.written = taken
            memory.refused |= set(step.measurands) - set(members(taken))

    async def _set(self, station: Station, setting: Setting, value: str) -> tuple[dict, str | None]:
        action, payload = station.version.controls["setting"](
            {"name": setting.name, "value": value}
        )
        response = await station.call(action, payload)
        status = station.version.setting_status(response)
        if status in TAKEN and setting.written is not None:
            # the charge point has it now: the tree says so as if it had reported it
            self.tree.apply(station.identity, setting.written(value))
        return response, status

    def _record(
        self,
        station: Station,
        step: Step,
        taken: str | None,
        in_force: str | None,
        response: dict | None,
        error: str | None,
        answers: list[str],
        reboot: bool,
    ) -> None:
        setting = step.setting
        refused = [m for m in step.measurands if taken is not None and m not in members(taken)]
        note = f"[readings] asked for {step.value!r}; it had {setting.value!r}"
        if len(answers) > 1:
            note += "; tried " + ", ".join(answers)
        if refused:
            note += f"; without {', '.join(refused)}: not taken"
        if reboot:
            note += (
                "; RebootRequired: in force after the charge point's next reboot (left to the user)"
            )
        state_id = f"{self.tree.prefix(station.identity)}.{setting.state}"
        self.store.put(
            ControlOutcome(
                state_id,
                now_ms(),
                taken if taken is not None else step.value,
                int(taken is not None),
                None if response is None else jsontext.dumps(response),
                None if taken is not None else error,
                in_force,
                note,
            )
        )
        if taken is not None:
            log.info("%s: readings: %s = %r (%s)", station.identity, setting.name, taken, note)
        else:
            log.warning(
                "%s: readings: %s not changed: %s (%s)", station.identity, setting.name, error, note
            )


@dataclass(frozen=True, slots=True)
class _Job:
    """The writes after one boot, for the charge point's command worker (station.Job)."""

    readings: Readings
    reported: list[Setting]
    wanted: Wanted

    async def run(self, station: Station) -> None:
        try:
            await self.readings.configure(station, self.reported, self.wanted)
        except Exception:  # a bug must not stop the charge point's controls
            log.exception("%s: readings: setting up failed", station.identity)

    def abandon(self, reason: str) -> None:
        pass  # the next boot compares again


__all__ = ["Readings"]
