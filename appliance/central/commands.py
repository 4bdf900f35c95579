"""Commands from the centre, and presence (README "Commands from the centre", issue 22).

A row inserted into PostgreSQL's `commands` is announced (LISTEN/NOTIFY; a look every
few seconds is the safety net); the process that holds the charge point takes it (one
UPDATE: never twice) and carries it out exactly as `ocpp-appliance set` does — written
into its own SQLite file as a control, same checks, same outcome rules — then writes the
outcome back. `presence` says which process holds which charge point: set at connect,
removed at disconnect, refreshed every few seconds; a dead process's rows expire.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import trio

from appliance.config import Config
from appliance.controls import CommandError, prepare
from appliance.station import Connected, Disconnected, Stations
from appliance.store.queries import carry_out, stale_after_ms

log = logging.getLogger("appliance.central")

#: the safety net under LISTEN/NOTIFY: a look at the table at least this often
POLL_SEC = 2.0
#: README: a command nobody takes ends "not connected" after this long
NOT_CONNECTED_SEC = 60.0
#: presence is refreshed this often and expires after EXPIRE_SEC without a refresh
PRESENCE_SEC = 10.0
PRESENCE_EXPIRE_SEC = 30.0
#: a command taken by a process that said nothing more for this long ends as unknown
RUNNING_SEC = 300.0


def parsed(value: str | None) -> Any:
    """README "Command line": VALUE as JSON where it parses (16, true, "text"), else text."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


class Commands:
    def __init__(self, central: Any, stations: Stations, process: str) -> None:
        self.central = central
        self.stations = stations
        self.process = process
        self._events = stations.subscribe()
        self._wake = trio.Event()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def config(self) -> Config:
        return self.stations.config

    async def _db(self, function: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def run(self) -> None:
        """Until cancelled: reconnects (with the replication's backoff) when PostgreSQL
        goes away; the replication task's log line says so."""
        from appliance.store.central import Fleet

        backoff = 1.0
        while True:
            fleet: Fleet | None = None
            listener: Fleet | None = None
            try:
                fleet = await self._db(self._connect, Fleet)
                listener = heard = await trio.to_thread.run_sync(self._connect, Fleet)
                await trio.to_thread.run_sync(heard.listen)
                backoff = 1.0
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._listen, heard)
                    nursery.start_soon(self._presence, fleet)
                    await self._take(fleet, nursery)
            except Exception as exc:  # psycopg or OS errors: retry; never the charge points
                log.debug("central: commands: %s", exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                for connection in (fleet, listener):
                    if connection is not None:
                        with contextlib.suppress(Exception):
                            connection.close()

    def _connect(self, kind: Any) -> Any:
        fleet = kind(*self.central.connection_options(), self.process)
        fleet.migrate()
        return fleet

    async def _listen(self, listener: Any) -> None:
        while True:
            announced = await trio.to_thread.run_sync(
                listener.announced, POLL_SEC, abandon_on_cancel=True
            )
            if announced:
                self._wake.set()

    async def _take(self, fleet: Any, nursery: trio.Nursery) -> None:
        while True:
            with trio.move_on_after(POLL_SEC):
                await self._wake.wait()
            self._wake = trio.Event()
            rows = await self._db(fleet.take, list(self.stations.stations))
            for row in rows:
                nursery.start_soon(self._carry_out, fleet, *row)
            expired = await self._db(fleet.expire, NOT_CONNECTED_SEC, RUNNING_SEC)
            if expired:
                log.info("central: %d commands ended without a charge point to run them", expired)

    async def _carry_out(
        self, fleet: Any, command: int, identity: str, control: str, value: str | None
    ) -> None:
        """As `ocpp-appliance set <identity>.<control> <value>` would."""
        config = self.config
        state_id = f"{self.stations.tree.prefix(identity)}.{control}"
        try:
            values, base = prepare(state_id, parsed(value))
        except CommandError as exc:
            await self._db(fleet.finish, command, False, None, str(exc))
            return
        log.info("central: command %d: %s = %s", command, state_id, value)
        patience = 2 * config.call_timeout_sec + 5
        stale = stale_after_ms(config.storage.commit_interval_ms)
        carried = await trio.to_thread.run_sync(
            carry_out, config.database_path, values, base, patience, stale
        )
        error = carried.error
        if carried.waited != "done":
            why = "stopped" if carried.waited == "down" else "did not take it"
            error = f"not carried out: the appliance {why}"
        await self._db(fleet.finish, command, carried.ok, carried.response, error)

    async def _presence(self, fleet: Any) -> None:
        """Connects and disconnects at once; all held identities every PRESENCE_SEC."""
        await self._db(fleet.alive, list(self.stations.stations), PRESENCE_EXPIRE_SEC)
        while True:
            with trio.move_on_after(PRESENCE_SEC):
                async for event in self._events:
                    if isinstance(event, Connected):
                        await self._db(fleet.present, event.station.identity)
                        self._wake.set()  # a command may wait for it
                    elif isinstance(event, Disconnected) and event.current:
                        await self._db(fleet.absent, event.station.identity)
            await self._db(fleet.alive, list(self.stations.stations), PRESENCE_EXPIRE_SEC)
