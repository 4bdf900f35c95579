"""Charge point passwords (HTTP Basic auth, security profiles 1 and 2): the `password_hash`
format, hashing and verification, and OCPP's rule for a password.

The KDF is the standard library's `hashlib.scrypt` (OpenSSL's): memory-hard, no new
dependency to build for arm64, and it releases the GIL, so verifying in a worker thread
does not stall the event loop. The string carries its parameters and salt, so stronger
parameters can be chosen later without breaking hashes already in configs:

    scrypt$ln=15,r=8,p=1$<salt, base64>$<key, base64>
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

SCHEME = "scrypt"

#: N = 2^15, r = 8, p = 1: 32 MiB and ~0.1-0.2 s on a desktop core, ~0.5 s on a
#: Raspberry Pi 4: the interactive-login parameters of the scrypt paper, one notch down
#: for the box's RAM. Verified once per charge point and process (see guard.Verifier).
DEFAULT_LN, DEFAULT_R, DEFAULT_P = 15, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32

#: bounds on parameters read from a config, so a typo cannot ask for gigabytes of memory
#: or minutes of CPU on every connect
_LN_RANGE, _R_RANGE, _P_RANGE = range(10, 21), range(1, 33), range(1, 17)

_FORMAT = re.compile(
    r"^scrypt\$ln=(?P<ln>\d+),r=(?P<r>\d+),p=(?P<p>\d+)\$(?P<salt>[A-Za-z0-9+/]+={0,2})"
    r"\$(?P<key>[A-Za-z0-9+/]+={0,2})$"
)

#: OCPP 2.0.1 Part 2 §2 "passwordString" (BasicAuthPassword): 16-40 characters of letters,
#: digits and *-_=:+|@. — 1.6's security white paper asks 16-20 bytes. Older firmware
#: predates the rule, so a password outside it is accepted with a warning.
PASSWORD_RULE = re.compile(r"^[A-Za-z0-9*\-_=:+|@.]{16,40}$")


@dataclass(frozen=True, slots=True)
class ScryptHash:
    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def derive(self, password: bytes) -> bytes:
        n = 1 << self.ln
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=n,
            r=self.r,
            p=self.p,
            # scrypt needs 128·r·N bytes for its table, plus a little; OpenSSL's default
            # cap (32 MiB) is exactly the default parameters, so say it explicitly
            maxmem=128 * self.r * (n + self.p + 2) + 1024 * 1024,
            dklen=len(self.key),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(
    password: str,
    *,
    ln: int = DEFAULT_LN,
    r: int = DEFAULT_R,
    p: int = DEFAULT_P,
    salt: bytes | None = None,
) -> str:
    """The `password_hash` string for `password` (fresh random salt unless given)."""
    params = ScryptHash(ln, r, p, salt or os.urandom(SALT_BYTES), b"\0" * KEY_BYTES)
    key = params.derive(password.encode())
    return f"{SCHEME}$ln={ln},r={r},p={p}${_b64(params.salt)}${_b64(key)}"


def parse_hash(text: str) -> ScryptHash:
    """The parts of a `password_hash` string; ValueError says what is wrong (never the
    string itself: it is a secret too)."""
    match = _FORMAT.match(text)
    if match is None:
        raise ValueError(
            "not a hash from `ocpp-appliance hash-password` (scrypt$ln=…,r=…,p=…$salt$hash)"
        )
    ln, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    for name, value, allowed in (("ln", ln, _LN_RANGE), ("r", r, _R_RANGE), ("p", p, _P_RANGE)):
        if value not in allowed:
            raise ValueError(f"{name}={value} is outside {allowed.start}-{allowed.stop - 1}")
    salt, key = _unb64(match["salt"]), _unb64(match["key"])
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or hash too short")
    return ScryptHash(ln, r, p, salt, key)


def verify(password: bytes, encoded: str) -> bool:
    """True if `password` derives the key in `encoded`. Slow by design (the KDF): call it
    from a worker thread. Constant-time comparison of the derived keys."""
    stored = parse_hash(encoded)
    return hmac.compare_digest(stored.derive(password), stored.key)


def rule_problem(password: str) -> str | None:
    """Why `password` is outside OCPP's passwordString rule, or None."""
    if PASSWORD_RULE.match(password):
        return None
    if not 16 <= len(password) <= 40:
        return f"OCPP asks for 16-40 characters, this one has {len(password)}"
    return "OCPP allows only letters, digits and *-_=:+|@. in a password"


# ------------------------------------------------------------------ API tokens

#: an API token of the web API (README "Web dashboard and API"): 32 random bytes. Being
#: random and long, it needs no slow KDF: its SHA-256 is stored, so that whoever reads
#: the config cannot use it, and a request costs one hash.
TOKEN_PREFIX = "oat_"
_TOKEN_HASH = re.compile(r"^sha256\$[0-9a-f]{64}$")


def new_token() -> tuple[str, str]:
    """A fresh token and the `api_token_hashes` entry for it."""
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def check_token_hash(text: str) -> None:
    """ValueError unless `text` is what `new_token` makes (never quoting it)."""
    if not _TOKEN_HASH.match(text):
        raise ValueError("not a token hash from `ocpp-appliance web-token` (sha256$<64 hex>)")


def token_matches(token: str, hashes: list[str]) -> bool:
    """Constant-time against each stored hash."""
    digest = token_hash(token)
    found = False
    for stored in hashes:
        found |= hmac.compare_digest(digest, stored)
    return found
