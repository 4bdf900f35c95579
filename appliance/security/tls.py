"""The server's TLS context (security profiles 2 and 3), built from `[tls]`; every
problem is a ConfigError naming the key, so `serve` exits 2 before it listens."""

from __future__ import annotations

import ssl
from pathlib import Path

from appliance.config import Config, ConfigError, Tls

# OCPP 2.0.1 Part 2 A00.FR.318-320 and the 1.6-J security white paper: TLS 1.2 or newer;
# with an ECDSA certificate the ECDHE-ECDSA AES-GCM suites, with an RSA one also the
# plain-RSA AES-GCM suites the OCPP texts require (older charge points offer nothing
# else). CHACHA20 and ECDHE-RSA for the rest. TLS 1.3 suites are OpenSSL's (all AEAD).
CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
    ]
)


def _readable(config: Config, key: str, name: str) -> Path:
    path = config.path(name)
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror}"
        raise ConfigError(f"{_where(config)}: '{key}': {problem}") from None
    return path


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    # OpenSSL would otherwise prompt on the terminal (and hang a service without one)
    raise _Encrypted


def _where(config: Config) -> str:
    return str(config.source) if config.source else "config"


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context for wss://, or None without `[tls]`."""
    tls: Tls | None = config.tls
    if tls is None:
        return None
    where = _where(config)
    cert = _readable(config, "tls.cert", tls.cert)
    key = _readable(config, "tls.key", tls.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    # no session tickets: a charge point reconnects rarely, and tickets would need a key
    # rotation the appliance does not do
    context.options |= ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        problem = f"{key} is encrypted: the service needs it unencrypted (and only its own)"
        raise ConfigError(f"{where}: 'tls.key': {problem}") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            problem = f"the key in {key} does not belong to the certificate in {cert}"
            raise ConfigError(f"{where}: 'tls.key': {problem}") from None
        raise ConfigError(
            f"{where}: 'tls.cert'/'tls.key': not a PEM certificate and its private key"
            f" ({exc.reason or exc})"
        ) from None
    if tls.client_ca is not None:
        ca = _readable(config, "tls.client_ca", tls.client_ca)
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{where}: 'tls.client_ca': {ca} holds no PEM CA certificate ({exc.reason or exc})"
            ) from None
        # Profile 3: no certificate chaining to client_ca, no TLS session — nobody without
        # one gets to send the appliance a single HTTP byte. The CN is checked against the
        # identity once the URL is read (transport.server).
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def common_names(peer_certificate: dict | None) -> list[str]:
    """The subject CNs of a certificate as `SSLSocket.getpeercert()` returns it."""
    if not peer_certificate:
        return []
    return [
        value
        for rdn in peer_certificate.get("subject", ())
        for name, value in rdn
        if name == "commonName"
    ]
