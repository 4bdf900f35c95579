"""Who may do what on the web side (README "Web dashboard and API", "Access").

Reading is open to the LAN; controls and the frames view need a login: the
`[web] password_hash` (a session cookie, signed by Starlette's SessionMiddleware) or an
API token (`Authorization: Bearer`, its SHA-256 in `[web] api_token_hashes`). Wrong
passwords and tokens are slowed down per address by the same Throttle as the charge
points' Basic auth; the password's scrypt runs in a worker thread, one at a time.
Nothing secret is logged, put into a page or stored in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import trio

from appliance.config import Web
from appliance.passwords import token_matches, verify
from appliance.security.guard import Throttle

log = logging.getLogger("appliance")

#: the session's life: a signed cookie cannot be revoked one by one (a password change
#: and SIGHUP, or a restart with a new key file, ends them all)
SESSION_MAX_AGE_SEC = 7 * 24 * 3600


class Login(Enum):
    OK = "ok"
    WRONG = "wrong password"
    BUSY = "too many attempts from this address: wait and try again"
    NO_PASSWORD = "no password is set: add [web] password_hash (ocpp-appliance hash-password)"


def load_secret(path: Path) -> bytes:
    """The key that signs session and CSRF cookies: 32 random bytes in a file of its own
    (mode 600) beside the database — never in the database — so that a restart keeps
    everyone logged in. Deleting the file logs everyone out."""
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    data = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return data


class Access:
    def __init__(self, settings: Callable[[], Web], secret: bytes) -> None:
        #: the [web] table in force (a SIGHUP applies at once)
        self.settings = settings
        self._secret = secret
        self.throttle = Throttle()
        self._scrypt = trio.CapacityLimiter(1)

    @property
    def session_secret(self) -> str:
        return hmac.new(self._secret, b"session cookie", hashlib.sha256).hexdigest()

    @property
    def csrf_secret(self) -> str:
        return hmac.new(self._secret, b"csrf cookie", hashlib.sha256).hexdigest()

    @property
    def login_possible(self) -> bool:
        return self.settings().password_hash is not None

    def fingerprint(self) -> str:
        """Ties a session to the password in force: a new password_hash (and SIGHUP)
        ends every session. A keyed digest, so the cookie tells nothing of the hash."""
        current = self.settings().password_hash or ""
        return hmac.new(self._secret, current.encode(), hashlib.sha256).hexdigest()[:32]

    def session_valid(self, session: dict) -> bool:
        return (
            self.login_possible
            and session.get("user") == "admin"
            and hmac.compare_digest(str(session.get("pw", "")), self.fingerprint())
        )

    async def login(self, host: str, password: str) -> Login:
        encoded = self.settings().password_hash
        if encoded is None:
            return Login.NO_PASSWORD
        delay = self.throttle.begin(host, time.monotonic())
        if delay is None:
            return Login.BUSY
        ok = False
        try:
            await trio.sleep(delay)
            async with self._scrypt:
                ok = await trio.to_thread.run_sync(verify, password.encode(), encoded)
        finally:
            self.throttle.end(host, ok, time.monotonic())
        if not ok:
            log.warning("web: wrong dashboard password from %s", host)
        return Login.OK if ok else Login.WRONG

    async def token(self, host: str, token: str) -> bool:
        hashes = self.settings().api_token_hashes
        if self.throttle.failures(host) == 0 and hashes and token_matches(token, hashes):
            return True  # a script's parallel requests are not attempts to throttle
        delay = self.throttle.begin(host, time.monotonic())
        if delay is None:
            return False
        ok = False
        try:
            await trio.sleep(delay)
            ok = bool(hashes) and token_matches(token, hashes)
        finally:
            self.throttle.end(host, ok, time.monotonic())
        if not ok:
            log.warning("web: wrong API token from %s", host)
        return ok
