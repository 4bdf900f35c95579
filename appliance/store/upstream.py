"""What waits for an upstream (README "A second backend"), read once per charge point and
upstream when its first link starts: the transaction messages a previous run could not
deliver, and the 1.6 transaction ids the upstream gave. Blocking; a worker thread."""

from __future__ import annotations

import contextlib
from pathlib import Path

from appliance.store.migrations import reading


def backlog(
    path: Path, upstream: str, identity: str, boot_state: str
) -> tuple[list[tuple[str, str, str, str | None]], dict[str, int], str | None]:
    """(key, action, payload, local_id) oldest first, local → upstream ids, and the
    charge point's last BootNotification (the state `boot_state`, JSON)."""
    with contextlib.closing(reading(path)) as connection:
        boot = connection.execute("SELECT val FROM states WHERE id = ?", (boot_state,)).fetchone()
        rows = connection.execute(
            "SELECT key, action, payload, local_id FROM upstream_queue"
            " WHERE upstream = ? AND identity = ? ORDER BY seq",
            (upstream, identity),
        ).fetchall()
        ids = connection.execute(
            "SELECT local_id, remote_id FROM upstream_transactions"
            " WHERE upstream = ? AND identity = ?",
            (upstream, identity),
        ).fetchall()
    return rows, dict(ids), boot[0] if boot and isinstance(boot[0], str) else None


def waiting(path: Path) -> dict[tuple[str, str], int]:
    """(upstream, identity) → messages waiting (`status`)."""
    with contextlib.closing(reading(path)) as connection:
        rows = connection.execute(
            "SELECT upstream, identity, count(*) FROM upstream_queue GROUP BY 1, 2"
        ).fetchall()
    return {(u, i): n for u, i, n in rows}
