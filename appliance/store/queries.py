"""What the command line reads and writes while the appliance may be running: the
`charge_point_status` view, states by glob, control writes and their outcome, and the
appliance's heartbeat (README "Command line", "Controls"). Each call opens connections
of its own. Every OS or SQLite error becomes a ReaderError that names the file and says
what to do (`explain`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.domain import clock
from appliance.errors import DatabaseUnavailable, ReaderError
from appliance.store.commands import write_controls as _write
from appliance.store.disk import META_KEY as DISK_META_KEY
from appliance.store.migrations import status_row

_NO_DATABASE = "no database at {} (has `ocpp-appliance serve` run with this config?)"

#: `meta` keys of the running appliance: its heartbeat, refreshed every HEARTBEAT_SEC
#: through the writer, and the time of its last clean stop
ALIVE_KEY = "appliance_alive_ms"
STOPPED_KEY = "appliance_stopped_ms"
HEARTBEAT_SEC = 2.0
#: the README's install section: the group that may read the database and write controls
SERVICE_GROUP = "ocpp-appliance"


def stale_after_ms(commit_interval_ms: int) -> int:
    """A heartbeat older than this means the appliance is not running: three missed
    beats, two commit intervals (the beat waits for the group commit) and a margin for a
    writer busy with a backlog."""
    return int(3 * HEARTBEAT_SEC * 1000 + 2 * commit_interval_ms + 4000)


# ------------------------------------------------------------------------ errors


def explain(path: Path, exc: BaseException, doing: str = "open") -> str:
    """One sentence about a database that cannot be used: the file, what failed, and the
    likely fix. `doing`: what was tried ("open", "create", "read", "write to")."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    if code.startswith("SQLITE_CONSTRAINT"):
        return str(exc)  # a trigger refused the write: its message is the answer
    if code.startswith("SQLITE_NOTADB"):
        return (
            f"{path} is not an SQLite database: point 'database' in the config at another"
            " file (or move this one away)"
        )
    if code.startswith("SQLITE_CORRUPT"):
        return f"the database {path} is damaged ({exc}): restore it from a backup"
    if code.startswith("SQLITE_FULL") or getattr(exc, "errno", None) == errno.ENOSPC:
        return f"cannot {doing} the database {path}: the disk is full"
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"the database {path} is locked by another program: try again"
    reason = _os_reason(path, exc, doing)
    if reason is None:
        reason = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
    return f"cannot {doing} the database {path}: {reason}"


def _os_reason(path: Path, exc: BaseException, doing: str) -> str | None:
    """Why the file system refuses, told from the error or, where SQLite only says
    "unable to open database file", from a look at the file and its folder."""
    number = getattr(exc, "errno", None)
    folder = path.parent
    if number == errno.EROFS or _read_only(folder):
        return f"{folder} is on a read-only file system: put the database on a writable one"
    if number == errno.EISDIR or path.is_dir():
        return "that is a folder: point 'database' in the config at a file"
    if number == errno.ENOTDIR or (folder.exists() and not folder.is_dir()):
        return f"{folder} is not a folder"
    if not folder.exists():
        return f"the folder {folder} does not exist"
    denied = _denied(path, doing)
    if denied is not None or number in (errno.EACCES, errno.EPERM):
        return f"permission denied. {_permission_hint(denied or path)}"
    if number == errno.ENOENT and not path.exists():
        return (
            f"files cannot be made in {folder} ({os.strerror(number)}):"
            " put the database in a folder on a disk"
        )
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


def _denied(path: Path, doing: str) -> Path | None:
    """What the permission bits keep this user from: the file or its folder (root may do
    anything here)."""
    folder = path.parent
    if not path.exists():
        return None if os.access(folder, os.W_OK | os.X_OK) else folder
    mode = os.R_OK if doing in ("read", "open") else os.R_OK | os.W_OK
    if not os.access(path, mode):
        return path
    # a reader of a WAL database writes its -shm file: the folder's or that file's bits
    shm = path.with_name(path.name + "-shm")
    if not (os.access(folder, os.W_OK | os.X_OK) or os.access(shm, os.W_OK)):
        return folder
    return None


def _permission_hint(target: Path) -> str:
    """README "Installing on the Pi": who may read the database and write controls is
    decided by the group of the file and its folder."""
    group = owner = None
    with contextlib.suppress(ImportError, KeyError, OSError):
        import grp
        import pwd

        stat = target.stat()
        group = grp.getgrgid(stat.st_gid).gr_name
        owner = pwd.getpwuid(stat.st_uid).pw_name
    if group is None:
        return f"Give this user read and write access to {target} and its folder."
    if group in ("root", "wheel") or group == owner:
        return (
            f"{target} belongs to {owner}:{group}: run this as {owner} (or with sudo), or"
            f" give the database a group of its own (the package uses {SERVICE_GROUP})."
        )
    return (
        f"{target} belongs to the group {group}: join it (sudo adduser $USER {group}, then"
        " log in again) or run this with sudo."
    )


def _missing(path: Path) -> str:
    if path.parent.exists() and not path.parent.is_dir():
        return f"no database at {path}: {path.parent} is not a folder"
    if not path.parent.exists():
        return f"no database at {path}: the folder {path.parent} does not exist"
    return _NO_DATABASE.format(path)


# ------------------------------------------------------------------------ reading


@contextlib.contextmanager
def _read(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise ReaderError(_missing(path))
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except (sqlite3.Error, OSError) as exc:
        raise ReaderError(explain(path, exc, "read")) from None
    connection.row_factory = sqlite3.Row
    try:
        yield connection
    except (sqlite3.Error, OSError) as exc:
        raise ReaderError(explain(path, exc, "read")) from None
    finally:
        connection.close()


def charge_points(path: Path) -> list[dict[str, Any]]:
    with _read(path) as db:
        rows = db.execute("SELECT * FROM charge_point_status ORDER BY identity").fetchall()
    return [status_row(row) for row in rows]


def states(path: Path, pattern: str) -> list[dict[str, Any]]:
    with _read(path) as db:
        rows = db.execute(
            "SELECT s.id, s.val, s.ack, s.ts, s.lc, o.type, o.unit FROM states AS s"
            " LEFT JOIN objects AS o ON o.id = s.id WHERE s.id GLOB ? ORDER BY s.id",
            (pattern,),
        ).fetchall()
    return [dict(row) for row in rows]


def write_controls(path: Path, values: list[tuple[str, Any]]) -> int:
    """Write controls with ack = 0 in one transaction, as any tool may; returns the queue
    position of the last, to wait for its outcome."""
    if not path.exists():
        raise ReaderError(_missing(path))
    try:
        connection = sqlite3.connect(path, timeout=10)
    except (sqlite3.Error, OSError) as exc:
        raise DatabaseUnavailable(explain(path, exc, "write to")) from None
    try:
        return _write(connection, values)
    except sqlite3.IntegrityError as exc:
        # the trigger refused a write that can never work (README "Controls"): say why
        reasons = [_not_writable(connection, state_id) for state_id, _ in values]
        raise ReaderError("; ".join(r for r in reasons if r) or str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise DatabaseUnavailable(explain(path, exc, "write to")) from None
    finally:
        connection.close()


def _not_writable(db: sqlite3.Connection, state_id: str) -> str | None:
    """Why `state_id` cannot be written as a control, or None if it can."""
    prefix = state_id.partition(".")[0]
    if db.execute("SELECT 1 FROM charge_points WHERE prefix = ?", (prefix,)).fetchone() is None:
        return f"{state_id}: unknown charge point {prefix!r}: it has never connected"
    row = db.execute("SELECT writable FROM objects WHERE id = ?", (state_id,)).fetchone()
    if row is None:
        listing = f"ocpp-appliance get '{prefix}.*'"
        return f"{state_id}: no such control or value (`{listing}` lists them)"
    if not row[0]:
        return f"{state_id} is read-only"
    return None


def refusal(path: Path, state_id: str, since_ms: int) -> str | None:
    """The error of a command on `state_id` refused since `since_ms` (control_outcomes)."""
    return _outcome_since(path, state_id, since_ms, "error", ok=False)


def note(path: Path, state_id: str, since_ms: int) -> str | None:
    """What the appliance changed to make a command on `state_id` since `since_ms` work
    (control_outcomes.note: a limit sent in the unit the charger takes)."""
    return _outcome_since(path, state_id, since_ms, "note", ok=True)


def _outcome_since(path: Path, state_id: str, since_ms: int, column: str, ok: bool) -> Any:
    with _read(path) as db:
        row = db.execute(
            f"SELECT {column} FROM control_outcomes WHERE id = ? AND ok = ? AND ts >= ?",
            (state_id, int(ok), since_ms),
        ).fetchone()
    return row[0] if row else None


def _heartbeat(db: sqlite3.Connection) -> tuple[int | None, int | None]:
    found = dict(
        db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (ALIVE_KEY, STOPPED_KEY))
    )
    alive, stopped = found.get(ALIVE_KEY), found.get(STOPPED_KEY)
    return (
        int(alive) if isinstance(alive, int | float) else None,
        int(stopped) if isinstance(stopped, int | float) else None,
    )


def disk_guard(path: Path) -> dict[str, Any] | None:
    """The disk guard as the running appliance last changed it (README "Storage
    design"); None where the database has none (an appliance older than the guard)."""
    with _read(path) as db:
        found = db.execute("SELECT value FROM meta WHERE key = ?", (DISK_META_KEY,)).fetchone()
    if found is None or not isinstance(found[0], str):
        return None
    try:
        guard = json.loads(found[0])
    except ValueError:
        return None
    return guard if isinstance(guard, dict) else None


def heartbeat(path: Path) -> tuple[int | None, int | None]:
    """(last heartbeat, last clean stop) of the appliance, in ms since the epoch; None
    where the database has none (an appliance older than the heartbeat)."""
    with _read(path) as db:
        return _heartbeat(db)


def is_down(alive: int | None, stopped: int | None, stale_ms: int, now_ms: int) -> bool:
    """Whether the heartbeat says the appliance is not running. Without one, nobody can
    tell: then it is taken as running (and the caller waits as it always did)."""
    if alive is None:
        return False
    if stopped is not None and stopped >= alive:
        return True
    return now_ms - alive > stale_ms


def wait_done(path: Path, seq: int, timeout: float, stale_ms: int | None = None) -> str:
    """Wait for the appliance to take command `seq` off the queue: `done`, `timeout`, or
    `down` as soon as its heartbeat says it is not running (with `stale_ms`)."""
    deadline = time.monotonic() + timeout
    with _read(path) as db:
        while time.monotonic() < deadline:
            if db.execute("SELECT 1 FROM control_queue WHERE seq = ?", (seq,)).fetchone() is None:
                return "done"
            if stale_ms is not None and is_down(*_heartbeat(db), stale_ms, clock.wall_ms()):
                return "down"
            time.sleep(0.1)
    return "timeout"


def outcome(path: Path, base: str) -> tuple[str, str]:
    """(lastResponse, lastError) under `base` (e.g. `CP1.control.rpc`)."""
    with _read(path) as db:
        found = dict(
            db.execute(
                "SELECT id, val FROM states WHERE id IN (?, ?)",
                (f"{base}.lastResponse", f"{base}.lastError"),
            ).fetchall()
        )
    return found.get(f"{base}.lastResponse") or "", found.get(f"{base}.lastError") or ""


@dataclass(frozen=True, slots=True)
class Carried:
    """How a command written into the file ended (README "Controls"): `waited` is
    `done`, `timeout` (the appliance did not take it) or `down` (it is not running)."""

    waited: str
    ok: bool = False
    response: str | None = None
    error: str | None = None
    #: what the appliance changed to make it work (control_outcomes.note)
    note: str | None = None


def carry_out(
    path: Path, values: list[tuple[str, Any]], base: str | None, patience: float, stale_ms: int
) -> Carried:
    """Write controls as any tool does and wait for the outcome of the last: `set`,
    `call` and a command from the centre end the same way. `base`: where a trigger's
    outcome is written (`CP1.control`); None for a parameter (refused or taken)."""
    written_at = clock.wall_ms() - 1
    seq = write_controls(path, values)
    waited = wait_done(path, seq, patience, stale_ms)
    if waited != "done":
        return Carried(waited)
    if base is None:
        refused = refusal(path, values[-1][0], written_at)
        return Carried(waited, refused is None, None, refused)
    response, error = outcome(path, base)
    if error:
        return Carried(waited, False, response or None, error)
    return Carried(waited, True, response or None, None, note(path, values[-1][0], written_at))
