"""The one TOML config file: lookup, typed structure (cattrs), errors that name the key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import cattrs.v
from attrs import define, field

from appliance.rpc.dialects import DIALECTS

ENV_VAR = "OCPP_APPLIANCE_CONFIG"
SYSTEM_CONFIG = Path("/etc/ocpp-appliance/appliance.toml")

ValidationMode = Literal["lenient", "strict"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """A config that cannot be used; the message names the key (and line where known)."""


# Range checks run after structuring (see `_check_ranges`), so that the message can name
# the full key; attrs validators would only be reported as "invalid value @ $.limits".
def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, not {value}"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be 0-65535 (0 picks a free port), not {value}"


def _checked(default: Any, check: Any) -> Any:
    return field(default=default, metadata={"check": check})


def _not_empty(value: str | None) -> str | None:
    return "must not be empty" if value == "" else None


def _password_hash(value: str | None) -> str | None:
    if value is None:
        return None
    from appliance.passwords import parse_hash

    try:
        parse_hash(value)
    except ValueError as exc:
        return str(exc)
    return None


def _secret(default: Any, check: Any) -> Any:
    """A secret: never printed (check-config shows ***), never in repr or a log line."""
    return field(default=default, repr=False, metadata={"check": check, "secret": True})


@define(frozen=True)
class Storage:
    commit_interval_ms: int = _checked(1000, _positive)
    messages_keep_days: float = _checked(30, _positive)
    meter_values_keep_days: float = _checked(365, _positive)


@define(frozen=True)
class Limits:
    # 1 MiB: the biggest real frames (NotifyReport of a full Device Model, a firmware
    # certificate chain) stay far below; websockets' own default is the same order.
    max_frame_bytes: int = _checked(1_048_576, _positive)
    handshake_timeout_sec: float = _checked(10, _positive)
    max_connections: int = _checked(1000, _positive)
    # OCPP payloads nest about 8 levels deep (2.x NotifyReport, charging profiles); 64
    # leaves room for vendor data and keeps the JSON parser's recursion far from its limit.
    max_json_depth: int = _checked(64, _positive)


@define(frozen=True)
class DeviceModel:
    fetch_on_boot: bool = True


@define(frozen=True)
class ChargePoint:
    validation: ValidationMode | None = None
    #: HTTP Basic auth (security profiles 1 and 2): the charge point's password, plain or
    #: as `ocpp-appliance hash-password` prints it; at most one of the two
    password: str | None = _secret(None, _not_empty)
    password_hash: str | None = _secret(None, _password_hash)


@define(frozen=True)
class Tls:
    """wss:// (security profile 2), and with `client_ca` mutual TLS (profile 3). Paths are
    relative to the config file's folder; the files are checked when the config is used
    (`appliance.security.policy`), so that a message can name the key."""

    cert: str
    key: str
    client_ca: str | None = None


@define(frozen=True)
class Authorization:
    #: when not empty, only these RFID/idTokens are answered Accepted
    id_tokens: list[str] = field(factory=list)


@define(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = _checked(9000, _port)
    enable16: bool = True
    enable201: bool = True
    enable21: bool = True
    heartbeat_interval_sec: int = _checked(300, _positive)
    identity_allowlist: list[str] = field(factory=list)
    database: str = "appliance.db"
    call_timeout_sec: float = _checked(30, _positive)
    ping_interval_sec: float = _checked(60, _positive)
    log_level: LogLevel = "info"
    validation: ValidationMode = "lenient"
    storage: Storage = field(factory=Storage)
    limits: Limits = field(factory=Limits)
    device_model: DeviceModel = field(factory=DeviceModel)
    tls: Tls | None = None
    authorization: Authorization = field(factory=Authorization)
    charge_points: dict[str, ChargePoint] = field(factory=dict)
    #: where the file came from (None: built-in defaults); not a config key
    source: Path | None = field(default=None, eq=False)

    @property
    def database_path(self) -> Path:
        """`database`, relative to the config file's folder."""
        base = self.source.parent if self.source else Path.cwd()
        return base / self.database

    def path(self, name: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        base = self.source.parent if self.source else Path.cwd()
        return base / name

    @property
    def subprotocols(self) -> list[str]:
        """Enabled subprotocols, newest first (the order of preference)."""
        return [name for name, dialect in DIALECTS.items() if getattr(self, dialect.config_key)]

    def validation_for(self, identity: str) -> ValidationMode:
        override = self.charge_points.get(identity)
        if override is not None and override.validation is not None:
            return override.validation
        return self.validation


# ------------------------------------------------------------------------ structuring


def _strict_converter() -> cattrs.Converter:
    """cattrs, but without Python's coercions: `port = "9000"` or `enable16 = "no"` is an
    error in a config file, not a value."""
    converter = cattrs.Converter(forbid_extra_keys=True)

    def literal(value: Any, kind: Any) -> Any:
        if value not in kind.__args__:
            choices = ", ".join(repr(a) for a in kind.__args__)
            raise ValueError(f"{value!r} is not one of {choices}")
        return value

    converter.register_structure_hook_func(
        lambda kind: getattr(kind, "__origin__", None) is Literal, literal
    )

    def exact(kind: type, *accepted: type) -> None:
        def structure(value: Any, _: type) -> Any:
            if type(value) not in accepted:
                raise ValueError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
            return kind(value)

        converter.register_structure_hook(kind, structure)

    exact(bool, bool)
    exact(int, int)
    exact(float, int, float)
    exact(str, str)
    return converter


_converter = _strict_converter()


def parse(text: str, source: Path | None = None) -> Config:
    """Structure TOML text into a Config; raises ConfigError naming the key."""
    where = str(source) if source else "config"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        config = _converter.structure(raw, Config)
    except Exception as exc:
        raise ConfigError(_describe(exc, text, where)) from None
    problems = [
        f"bad value for '{key}'{_line_of(text, key.split('.')[-1])}: {problem}"
        for key, problem in _check_ranges(config)
    ]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    if "source" in raw:
        raise ConfigError(f"{where}: unknown key 'source'")
    if not config.subprotocols:
        raise ConfigError(f"{where}: enable16, enable201 and enable21 are all false")
    for identity, settings in config.charge_points.items():
        if settings.password is not None and settings.password_hash is not None:
            key = charge_point_key(identity)
            raise ConfigError(f"{where}: '{key}' sets password and password_hash: keep one")
    return attrs.evolve(config, source=source)


def _check_ranges(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for attribute in attrs.fields(type(obj)):
        value = getattr(obj, attribute.name)
        key = prefix + attribute.name
        check = attribute.metadata.get("check")
        if check is not None and (problem := check(value)):
            found.append((key, problem))
        elif attrs.has(type(value)):
            found += _check_ranges(value, key + ".")
        elif isinstance(value, dict):
            for name, item in value.items():
                if attrs.has(type(item)):
                    found += _check_ranges(item, f"{key}.{_toml_value(name)}.")
    return found


def _explain(exc: BaseException, kind: Any) -> str:
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required"
    return cattrs.v.format_exception(exc, kind)


def _describe(exc: BaseException, text: str, where: str) -> str:
    messages = (
        cattrs.transform_error(exc, format_exception=_explain)
        if isinstance(exc, cattrs.BaseValidationError)
        else []
    )
    lines = []
    for message in messages or [str(exc)]:
        # cattrs says "... @ $.limits.max_frame_bytes"; users think in TOML keys.
        text_part, _, path = message.partition(" @ ")
        key = re.sub(r"\['(.*?)'\]", r'."\1"', path.removeprefix("$")).lstrip(".") or None
        extra = re.search(r"extra fields found \((.*)\)", text_part)
        if extra:
            for name in extra.group(1).split(", "):
                full = f"{key}.{name}" if key else name
                lines.append(f"unknown key '{full}'{_line_of(text, name)}")
            continue
        key = key or "?"
        lines.append(f"bad value for '{key}'{_line_of(text, key.split('.')[-1])}: {text_part}")
    return f"{where}: " + "; ".join(lines)


def _line_of(text: str, key: str) -> str:
    pattern = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=', re.MULTILINE)
    match = pattern.search(text)
    if match is None:
        return ""
    return f" (line {text.count(chr(10), 0, match.start()) + 1})"


def charge_point_key(identity: str, name: str | None = None) -> str:
    """The TOML key of a charge point's table (or of one of its keys), for messages."""
    key = f"charge_points.{_toml_value(identity)}"
    return f"{key}.{name}" if name else key


def find(explicit: str | None) -> Path | None:
    """README "Configuration" lookup: --config, $OCPP_APPLIANCE_CONFIG, ./appliance.toml, /etc/…"""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    for candidate in (Path("appliance.toml"), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load(explicit: str | None = None) -> Config:
    path = find(explicit)
    if path is None:
        return Config()
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    return parse(text, path.resolve())


# --------------------------------------------------------------------------- printing


#: what check-config prints instead of a secret
MASK = "***"

_SECRETS = frozenset(a.name for a in attrs.fields(ChargePoint) if a.metadata.get("secret"))


def to_toml(config: Config) -> str:
    """The effective config as TOML that `parse` reads back — except that secrets
    (passwords, password hashes) are printed as `***`: this output lands in terminals,
    tickets and forum posts."""
    data = _converter.unstructure(config)
    data.pop("source", None)
    top = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for section, values in data.items():
        if not isinstance(values, dict) or section == "charge_points":
            continue
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    for identity, overrides in data["charge_points"].items():
        set_values = {
            k: MASK if k in _SECRETS else v for k, v in overrides.items() if v is not None
        }
        lines += ["", f"[charge_points.{_toml_value(identity)}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in set_values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


EXAMPLE = """\
# ocpp-appliance configuration. Every key is optional: the value shown is the default.
# Paths are relative to this file's folder.

host = "0.0.0.0"                # listen address
port = 9000                     # charge points connect to ws://<box>:9000/<identity>
enable16 = true                 # OCPP 1.6J
enable201 = true                # OCPP 2.0.1
enable21 = true                 # OCPP 2.1
heartbeat_interval_sec = 300    # interval returned in BootNotification
identity_allowlist = []         # e.g. ["CP-GARAGE", "CP-CARPORT"]; empty = any identity
database = "appliance.db"       # the SQLite file other tools read
call_timeout_sec = 30           # how long to wait for a charge point's answer
ping_interval_sec = 60          # WebSocket keep-alive; no pong by the next ping = dead peer
log_level = "info"              # debug, info, warning, error
validation = "lenient"          # lenient: record nearly-compliant messages and process them
                                # strict: answer every schema violation with a CALLERROR

[storage]
commit_interval_ms = 1000       # group commit: at most this much is lost on power loss
messages_keep_days = 30
meter_values_keep_days = 365

[limits]
max_frame_bytes = 1048576       # larger frames close the connection (1009)
handshake_timeout_sec = 10      # a peer that has not upgraded by then is dropped
max_connections = 1000          # more are refused with HTTP 503
max_json_depth = 64             # deeper payloads are refused as malformed

[device_model]
fetch_on_boot = true

[authorization]
id_tokens = []                  # e.g. ["04A2B3C4D5E6F7"]: only these RFID/idTokens are
                                # Accepted (case-insensitive); empty = every token

# wss:// (security profile 2): uncomment, and charge points connect to wss://<box>:9000/<id>
# [tls]
# cert = "server.crt"           # PEM, the server certificate (and its chain)
# key = "server.key"            # PEM, its private key (keep it readable by the service only)
# client_ca = "cp-ca.crt"       # mutual TLS (profile 3): charge points need a certificate
#                               # from this CA whose CN is their identity

# Per charge point settings, by identity:
# [charge_points."CP-GARAGE"]
# validation = "strict"
# password_hash = "scrypt$ln=15,r=8,p=1$..."   # Basic auth (profiles 1 and 2): the output
#                                              # of `ocpp-appliance hash-password`
# password = "..."              # or the password itself (a hash is better: whoever reads
#                               # this file then does not learn the password)
"""
