"""Basic auth as the listener checks it, and the bookkeeping against bad peers — all
sans-I/O: the caller supplies the clock, runs the slow KDF in a worker thread and does
the waiting. Nothing here holds a password in clear beyond the config it came from."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class Credential:
    """What a charge point must present: its password, or the scrypt hash of it."""

    password: str | None = field(default=None, repr=False)
    password_hash: str | None = field(default=None, repr=False)


class AuthFailed(Exception):
    """Basic auth refused; the message is the plain-words reason (never a secret)."""


#: the reasons of a 401, one place (connection_log and the log show them)
NO_CREDENTIALS = "authentication required: no Basic-auth Authorization header"
NOT_BASIC = "authentication failed: the Authorization header is not Basic auth"
MALFORMED = "authentication failed: Basic-auth credentials are not base64 of user:password"
WRONG_USER = "authentication failed: the Basic-auth user is not the charge point identity"
WRONG_PASSWORD = "authentication failed: wrong password"
BUSY = "authentication refused: too many attempts at once from this address"


def basic_credentials(header: str | None, identity: str) -> bytes:
    """The password from an `Authorization: Basic …` header whose user is `identity`
    (RFC 7617; OCPP-J: user = the identity in the URL). Raises AuthFailed."""
    if header is None:
        raise AuthFailed(NO_CREDENTIALS)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthFailed(NOT_BASIC)
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailed(MALFORMED) from None
    user, colon, password = decoded.partition(b":")
    if not colon:
        raise AuthFailed(MALFORMED)
    # bytes, not text: firmware differs in what it encodes, and equal bytes is the test
    if not hmac.compare_digest(user, identity.encode()):
        raise AuthFailed(WRONG_USER)
    return password


class Verifier:
    """Checks a presented password against a Credential, remembering outcomes so that
    the KDF runs once per charge point and process, not on every reconnect — and not
    again for a charge point that keeps retrying the same stale password.

    Memory holds keyed digests only (HMAC-SHA256 with a key drawn at start, never
    stored): useless outside this process. Comparisons are constant-time."""

    #: rejected (hash, password digest) pairs remembered; enough for a fleet's stale
    #: passwords, bounded against an attacker's random ones
    MAX_REJECTED = 1024

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._rejected: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    def _digest(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    def quick(self, credential: Credential, password: bytes) -> bool | None:
        """True/False when known without the KDF; None: run `passwords.verify`."""
        digest = self._digest(password)
        if credential.password is not None:
            # digests of both sides: equal length, so not even the length leaks
            return hmac.compare_digest(digest, self._digest(credential.password.encode()))
        stored = credential.password_hash
        assert stored is not None
        known = self._verified.get(stored)
        if known is not None:
            # one hash, one password: anything else is wrong without asking scrypt
            return hmac.compare_digest(digest, known)
        if (stored, digest) in self._rejected:
            return False
        return None

    def remember(self, credential: Credential, password: bytes, ok: bool) -> None:
        stored = credential.password_hash
        if stored is None:
            return
        digest = self._digest(password)
        if ok:
            self._verified[stored] = digest
        else:
            self._rejected[(stored, digest)] = None
            while len(self._rejected) > self.MAX_REJECTED:
                self._rejected.popitem(last=False)


# ----------------------------------------------------------------------- throttle


@dataclass(slots=True)
class _Address:
    failures: int = 0
    last: float = 0.0
    pending: int = 0


class Throttle:
    """Slows down repeated Basic-auth failures from one address (host, whatever port).

    Each attempt from an address waits `delay` before its password is even looked at:
    nothing for the first FREE_FAILURES failures (a charge point that first tries without
    credentials, as HTTP's challenge flow does, or one typo), then 0.5 s doubling up to
    MAX_DELAY. The wait happens in that connection's own task, so no other charge point
    waits with it. At most MAX_PENDING attempts of one address are in progress: more are
    refused at once, without the KDF — a flood of parallel guesses costs the appliance
    one header parse each. A success clears the address; so do FORGET_AFTER quiet
    seconds."""

    FREE_FAILURES = 3
    BASE_DELAY = 0.5
    #: a charge point whose password was fixed gets in within this long of its next try
    MAX_DELAY = 30.0
    FORGET_AFTER = 600.0
    #: a real charge point has one handshake in flight, two while it replaces a stale one
    MAX_PENDING = 4
    #: addresses tracked; beyond, the quietest are forgotten (a memory bound, not a policy)
    MAX_ADDRESSES = 10_000

    def __init__(self) -> None:
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def delay_for(self, failures: int) -> float:
        if failures < self.FREE_FAILURES:
            return 0.0
        return min(self.MAX_DELAY, self.BASE_DELAY * 2 ** (failures - self.FREE_FAILURES))

    def begin(self, host: str, now: float) -> float | None:
        """An attempt starts: the seconds it must wait first, or None to refuse it now."""
        entry = self._addresses.get(host)
        if entry is None:
            entry = self._addresses[host] = _Address(last=now)
            self._evict()
        elif entry.pending == 0 and now - entry.last > self.FORGET_AFTER:
            entry.failures = 0
        if entry.pending >= self.MAX_PENDING:
            return None
        entry.pending += 1
        return self.delay_for(entry.failures)

    def end(self, host: str, ok: bool, now: float) -> None:
        entry = self._addresses.get(host)
        if entry is None:
            return
        entry.pending = max(0, entry.pending - 1)
        entry.last = now
        entry.failures = 0 if ok else entry.failures + 1
        self._addresses.move_to_end(host)
        if entry.failures == 0 and entry.pending == 0:
            del self._addresses[host]

    def failures(self, host: str) -> int:
        entry = self._addresses.get(host)
        return 0 if entry is None else entry.failures

    def _evict(self) -> None:
        while len(self._addresses) > self.MAX_ADDRESSES:
            for host, entry in self._addresses.items():
                if entry.pending == 0:
                    del self._addresses[host]
                    break
            else:
                return


# ---------------------------------------------------------------------- reporting


@dataclass(slots=True)
class _Seen:
    since: float
    rows: int = 0
    lines: int = 0
    unlogged: int = 0
    unrecorded: int = 0


@dataclass(frozen=True, slots=True)
class Report:
    """What to do with one refusal: log it, record it, and with what note."""

    log: bool
    record: bool
    #: appended to the log line / the row's reason: what earlier ones were left out
    log_note: str = ""
    row_note: str = ""


class Reporter:
    """Refusals and abusive closes are logged once per peer address and reason per
    WINDOW, and recorded in connection_log at most ROWS_PER_WINDOW times per address and
    reason per WINDOW: a bad-auth storm or a connection flood is one log line and a few
    rows, not a disk filling up. The next line / row after a gap says how many were left
    out."""

    WINDOW = 600.0
    #: enough rows to see a pattern (and for a user retrying by hand), then a summary
    ROWS_PER_WINDOW = 20
    MAX_KEYS = 4096

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()

    def refusal(self, host: str, reason: str, now: float) -> Report:
        key = (host, reason)
        seen = self._seen.get(key)
        if seen is None or now - seen.since > self.WINDOW:
            unlogged = seen.unlogged if seen else 0
            unrecorded = seen.unrecorded if seen else 0
            seen = self._seen[key] = _Seen(since=now)
            while len(self._seen) > self.MAX_KEYS:
                self._seen.popitem(last=False)
        else:
            unlogged = unrecorded = 0
        self._seen.move_to_end(key)
        log = seen.lines == 0
        record = seen.rows < self.ROWS_PER_WINDOW
        seen.lines += 1
        if record:
            seen.rows += 1
        else:
            seen.unrecorded += 1
        if not log:
            seen.unlogged += 1
        minutes = f"{self.WINDOW / 60:g} min"
        log_note = (
            f" ({unlogged} more from this address since the last line)"
            if log and unlogged
            else (f" (repeats from this address: one line per {minutes})" if log else "")
        )
        row_note = f" ({unrecorded} more like it not recorded)" if record and unrecorded else ""
        return Report(log, record, log_note, row_note)


def peer(stream: Any) -> tuple[str, str]:
    """A connection's source host (what the per-address bookkeeping counts by) and
    host:port (what the log shows); "?" when the socket cannot say."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError):
        return "?", "?"
    return host, host_port(host, port)


def host_port(host: str, port: int) -> str:
    """`192.0.2.7:51000`, `[2001:db8::7]:51000`: an address as the log shows it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
