"""Everything the listener decides with, built from one config: the TLS context, the
charge points' credentials, the allowlist and the idToken list. The server holds one
Policy and swaps it whole on SIGHUP, so a connection never sees half of an old config
and half of a new one."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field

from appliance import passwords
from appliance.config import Config, charge_point_key
from appliance.security import tls
from appliance.security.guard import Credential


@dataclass(frozen=True, slots=True)
class Policy:
    config: Config
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    credentials: dict[str, Credential] = field(default_factory=dict, repr=False)
    #: casefolded; empty: every token is accepted
    id_tokens: frozenset[str] = frozenset()
    #: `[limits] proxy_from`: whose connections start with a PROXY header
    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def build(cls, config: Config) -> Policy:
        """Raises ConfigError (naming the key) if a file of `[tls]` is missing, unreadable
        or does not match."""
        credentials = {
            identity: Credential(settings.password, settings.password_hash)
            for identity, settings in config.charge_points.items()
            if settings.password is not None or settings.password_hash is not None
        }
        return cls(
            config,
            tls.server_context(config),
            credentials,
            # OCPP 1.6 §7 IdToken and 2.0.1 IdTokenType: "case insensitive"
            frozenset(token.casefold() for token in config.authorization.id_tokens),
            tuple(ipaddress.ip_network(entry) for entry in config.limits.proxy_from),
        )

    @property
    def scheme(self) -> str:
        return "wss" if self.tls is not None else "ws"

    @property
    def mutual_tls(self) -> bool:
        return self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED

    def from_proxy(self, host: str) -> bool:
        """Whether a connection from `host` (as the socket names its peer) comes from a
        load balancer of `[limits] proxy_from`, and so starts with a PROXY header."""
        if not self.proxies:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 peer of a dual-stack socket
        return any(address in network for network in self.proxies)

    def allowed(self, identity: str) -> bool:
        allowlist = self.config.identity_allowlist
        return not allowlist or identity in allowlist

    def token_accepted(self, token: str | None) -> bool:
        """The one decision behind every idTagInfo / idTokenInfo status (README
        "Configuration", [authorization])."""
        if not self.id_tokens:
            return True
        return token is not None and token.casefold() in self.id_tokens


def config_warnings(config: Config) -> list[str]:
    """What loads but deserves a word: plain passwords, passwords outside OCPP's rule.
    Names the key, never the value."""
    found = []
    for identity, settings in config.charge_points.items():
        key = charge_point_key(identity, "password")
        if settings.password is None:
            continue
        found.append(
            f"'{key}' is a plain password: `ocpp-appliance hash-password` prints a hash for"
            " password_hash, so that the config file no longer reveals it"
        )
        problem = passwords.rule_problem(settings.password)
        if problem is not None:
            found.append(f"'{key}' is outside OCPP's password rule ({problem}); accepted")
    return found
