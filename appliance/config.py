"""The one TOML config file: lookup, typed structure, errors that name the key and line.

The structure is msgspec Structs, checked by `msgspec.convert` in strict mode: no value
is coerced into another type (`port = "9000"`, `enable16 = 1` and a string where a list
is expected are errors, not values), ranges are `Meta` constraints, and every error
carries its path (`$.limits.max_frame_bytes`). What msgspec leaves to us is said in
the words of a TOML file: unknown keys (with the nearest known one), missing keys, the
line, and the few checks that span keys. The effective config is written by tomli-w.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import tomli_w

from appliance.rpc.dialects import DIALECTS
from appliance.versions.tables import ALL_MEASURANDS

ENV_VAR = "OCPP_APPLIANCE_CONFIG"
SYSTEM_CONFIG = Path("/etc/ocpp-appliance/appliance.toml")
#: the Debian package's database (packaging/appliance.toml): systemd's StateDirectory
#: makes its folder, so it is the one database whose missing folder is not an error
PACKAGED_DATABASE = Path("/var/lib/ocpp-appliance/appliance.db")

ValidationMode = Literal["lenient", "strict"]
LogLevel = Literal["debug", "info", "warning", "error"]

Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
NotEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class ConfigError(Exception):
    """A config that cannot be used; the message names the key (and line where known)."""


class _Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A TOML table: immutable, every key optional unless it has no default."""


class Storage(_Table, frozen=True):
    commit_interval_ms: Positive = 1000
    messages_keep_days: PositiveSeconds = 30
    meter_values_keep_days: PositiveSeconds = 365
    #: the disk guard (README "Storage design"): below this much free space on the
    #: database's file system, the frames of MeterValues, Heartbeat and StatusNotification
    #: are not stored, below half of it the payload states neither; 0: no guard. 100 MB
    #: leaves an SD card room for the system's own writes (journal, updates)
    min_free_disk_mb: NonNegative = 100


class Limits(_Table, frozen=True):
    # 1 MiB: the biggest real frames (NotifyReport of a full Device Model, a firmware
    # certificate chain) stay far below; websockets' own default is the same order.
    max_frame_bytes: Positive = 1_048_576
    handshake_timeout_sec: PositiveSeconds = 10
    max_connections: Positive = 1000
    #: TLS and WebSocket handshakes in progress at once: a storm of reconnects waits in
    #: the kernel's listen backlog (not accepted, no memory of ours), and the connections
    #: already up keep their share of the event loop (README "Bad peers")
    max_handshakes: Positive = 32
    #: open OCPP connections from one source address; 0: no cap of its own (charge points
    #: behind one router, or HAProxy, share an address: README "Bad peers")
    max_connections_per_address: NonNegative = 0
    #: handshakes in progress from one source address; 0: no cap of its own
    max_handshakes_per_address: NonNegative = 0
    #: addresses or networks ("10.0.0.5", "10.0.0.0/24", "::1") of load balancers that
    #: send the PROXY protocol (HAProxy's `send-proxy-v2`): their connections must start
    #: with it, and the address it names stands for the connection's own; from any other
    #: address a PROXY header is not read (README "A big site on several processes")
    proxy_from: list[str] = msgspec.field(default_factory=list)
    # OCPP payloads nest about 8 levels deep (2.x NotifyReport, charging profiles); 64
    # leaves room for vendor data and keeps the JSON parser's recursion far from its limit.
    max_json_depth: Positive = 64


class DeviceModel(_Table, frozen=True):
    fetch_on_boot: bool = True


#: README "Readings the appliance asks for": energy register, power, current and voltage
#: (per phase, as the charge point has them), state of charge, offered current and power
DEFAULT_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "SoC",
    "Current.Offered",
    "Power.Offered",
)
Seconds = Annotated[int, msgspec.Meta(ge=1, le=86_400)]


class Readings(_Table, frozen=True):
    """What the appliance asks each charge point to measure after its boot (README
    "Readings the appliance asks for")."""

    #: false: the charge point's measuring settings are left alone
    configure: bool = True
    #: the sampling interval asked for during a transaction
    interval_sec: Seconds = 10
    #: sampled during a transaction, the most important first (a list cut to the charge
    #: point's maximum length keeps the first ones)
    measurands: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_MEASURANDS))
    #: clock-aligned energy readings (also outside sessions); 0 leaves the charge point's alone
    aligned_interval_sec: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 300


class ReadingsOverride(_Table, frozen=True):
    """[charge_points."<id>".readings]: the keys set here replace [readings]'s."""

    configure: bool | None = None
    interval_sec: Seconds | None = None
    measurands: list[str] | None = None
    aligned_interval_sec: Annotated[int, msgspec.Meta(ge=0, le=86_400)] | None = None


class ChargePoint(_Table, frozen=True):
    validation: ValidationMode | None = None
    #: HTTP Basic auth (security profiles 1 and 2): the charge point's password, plain or
    #: as `ocpp-appliance hash-password` prints it; at most one of the two. Secrets: never
    #: printed (check-config shows ***), never in repr or a log line.
    password: NotEmpty | None = None
    password_hash: str | None = None
    readings: ReadingsOverride | None = None

    def __repr__(self) -> str:
        shown = {
            k: MASK if k in SECRETS and v is not None else v
            for k, v in msgspec.structs.asdict(self).items()
        }
        return f"ChargePoint({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


#: keys whose values are never shown: not by check-config, not in an error message
SECRETS = frozenset({"password", "password_hash", "api_token_hashes"})


class Tls(_Table, frozen=True):
    """wss:// (security profile 2), and with `client_ca` mutual TLS (profile 3). Paths are
    relative to the config file's folder; the files are checked when the config is used
    (`appliance.security.policy`), so that a message can name the key."""

    cert: str
    key: str
    client_ca: str | None = None


class Web(_Table, frozen=True):
    """The web dashboard and HTTP API (README "Web dashboard and API"): a second
    listener in the same process; https with the [tls] files when they are set."""

    enabled: bool = True
    #: default: where the OCPP port listens (`host`): a box that keeps its charge points
    #: on 127.0.0.1 keeps its dashboard there too (`Config.web_host`)
    host: str | None = None
    #: 9000 for charge points, 9080 for people
    port: Port = 9080
    #: the dashboard's login (`ocpp-appliance hash-password`); without it the dashboard
    #: is read-only. Secret: never printed.
    password_hash: str | None = None
    #: hashes of API tokens for scripts (`ocpp-appliance web-token` prints a token and
    #: its hash): `Authorization: Bearer <token>`. Secret: never printed.
    api_token_hashes: list[str] = msgspec.field(default_factory=list)
    #: open connections from one source address; more are refused at once (http: 503,
    #: https: reset); 0: no cap. A browser opens up to 6 and each open page holds one
    #: event stream (at most 100 in all): room for a household or an office behind one
    #: router, or a reverse proxy, and far from the descriptors a flood would take
    max_connections_per_address: NonNegative = 128

    def __repr__(self) -> str:
        return f"Web(enabled={self.enabled!r}, host={self.host!r}, port={self.port!r}, ...)"


class Mqtt(_Table, frozen=True):
    """MQTT with Home Assistant discovery (README "Home Assistant and MQTT"); off when the
    table is absent. The password is a secret: never printed (check-config shows ***),
    never in repr, a log line or the database."""

    #: mqtt://host[:1883] or mqtts://host[:8883] (TLS); no user or password in it
    url: NotEmpty
    username: str | None = None
    password: NotEmpty | None = None
    #: or the password's file (its first line), relative to the config file's folder
    password_file: str | None = None
    #: mqtts: PEM CA the broker's certificate must chain to; default: the system's CAs
    ca: str | None = None
    client_id: NotEmpty = "ocpp-appliance"
    base_topic: NotEmpty = "ocpp-appliance"
    homeassistant_discovery: bool = True
    discovery_prefix: NotEmpty = "homeassistant"
    #: retained: `all` (values, availability, discovery), `discovery` (availability and
    #: discovery only) or `none`
    retain: Literal["all", "discovery", "none"] = "all"
    #: a charge point's values are published at most this often (power: at most once a
    #: second, whatever this says); 0.1 s keeps the read of the status view cheap
    min_interval_sec: Annotated[float, msgspec.Meta(ge=0.1)] = 1.0
    #: every state of the object tree too, under <base_topic>/<id path>
    publish_all: bool = False
    #: the idToken of Home Assistant's start-session button, used when the charge
    #: point's `control.requestStartTransaction.idToken` is empty
    start_id_token: str | None = None

    def __repr__(self) -> str:
        shown = {
            k: MASK if k == "password" and v is not None else v
            for k, v in msgspec.structs.asdict(self).items()
        }
        return f"Mqtt({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class Central(_Table, frozen=True):
    """Every site into one PostgreSQL (README "Many sites into one PostgreSQL"); off when
    the table is absent. The password is a secret: in the url or in `password_file`,
    never printed (check-config shows ***), never logged."""

    #: a libpq URL: postgresql://user[:password]@host[:5432]/database[?sslmode=verify-full]
    postgresql_url: NotEmpty
    #: or the password's file (its first line), relative to the config file's folder
    password_file: str | None = None
    #: PEM CA the server's certificate must chain to (sslmode verify-full); relative to
    #: the config file's folder
    ca: str | None = None
    #: this box's name in the fleet; default: the host name
    site: NotEmpty | None = None
    #: this process's name among the site's (commands, presence); default: host:port
    process: NotEmpty | None = None

    def __repr__(self) -> str:
        return (
            f"Central(postgresql_url={redact_url(self.postgresql_url)!r}, site={self.site!r}, ...)"
        )


#: README "A second backend": what an upstream may ask of the charge point by default
DEFAULT_ALLOW_CALLS = (
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "RequestStartTransaction",
    "RequestStopTransaction",
    "TriggerMessage",
    "GetConfiguration",
    "GetVariables",
    "DataTransfer",
    "UnlockConnector",
)


class Upstream(_Table, frozen=True):
    """A second backend for some charge points (README "A second backend"; one
    `[[upstream]]` table each). The password is a secret: never printed or logged."""

    #: ws:// or wss://; the charge point's identity is appended as the last path segment
    url: NotEmpty
    #: how the upstream is named in `messages.peer`, the status and the log; default: the
    #: url's host (and port)
    name: NotEmpty | None = None
    #: globs of the identities it serves
    identities: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: the identity the upstream knows a charge point by, where it differs
    identity_map: dict[str, NotEmpty] = msgspec.field(default_factory=dict)
    #: HTTP Basic (profiles 1–2): the password, or its file (first line)
    password: NotEmpty | None = None
    password_file: str | None = None
    #: profile 3: the client certificate and its key (PEM); the CA of the upstream's
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    #: who decides an idToken: the appliance's own rules, or the upstream (its answer,
    #: waited for at most a few seconds while it is connected)
    authorize: Literal["local", "upstream"] = "local"
    #: the actions the upstream may send to the charge point; the others are refused
    allow_calls: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ALLOW_CALLS))

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        from urllib.parse import urlsplit

        return urlsplit(self.url).netloc.rpartition("@")[2] or self.url

    def serves(self, identity: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(identity, pattern) for pattern in self.identities)

    def __repr__(self) -> str:
        return f"Upstream(url={self.url!r}, name={self.label!r}, ...)"


def redact_url(url: str) -> str:
    """A libpq URL with its password as ***."""
    return re.sub(r"(://[^/@:]*:)[^/]*@", rf"\g<1>{MASK}@", url)


class Authorization(_Table, frozen=True):
    #: when not empty, only these RFID/idTokens are answered Accepted
    id_tokens: list[str] = msgspec.field(default_factory=list)


class Config(_Table, frozen=True):
    host: str = "0.0.0.0"
    port: Port = 9000
    enable16: bool = True
    enable201: bool = True
    enable21: bool = True
    heartbeat_interval_sec: Positive = 300
    identity_allowlist: list[str] = msgspec.field(default_factory=list)
    database: NotEmpty = "appliance.db"
    call_timeout_sec: PositiveSeconds = 30
    ping_interval_sec: PositiveSeconds = 60
    log_level: LogLevel = "info"
    validation: ValidationMode = "lenient"
    storage: Storage = msgspec.field(default_factory=Storage)
    limits: Limits = msgspec.field(default_factory=Limits)
    device_model: DeviceModel = msgspec.field(default_factory=DeviceModel)
    readings: Readings = msgspec.field(default_factory=Readings)
    tls: Tls | None = None
    mqtt: Mqtt | None = None
    central: Central | None = None
    upstream: list[Upstream] = msgspec.field(default_factory=list)
    authorization: Authorization = msgspec.field(default_factory=Authorization)
    web: Web = msgspec.field(default_factory=Web)
    charge_points: dict[str, ChargePoint] = msgspec.field(default_factory=dict)
    #: the file it came from (None: built-in defaults); not a config key
    source: str | None = None
    #: `--instance N`: this is process N of the file's site (`instance`); not a config key
    instance: int | None = None

    @property
    def database_path(self) -> Path:
        """`database`, relative to the config file's folder."""
        return self.path(self.database)

    def path(self, name: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        base = Path(self.source).parent if self.source else Path.cwd()
        return base / name

    @property
    def subprotocols(self) -> list[str]:
        """Enabled subprotocols, newest first (the order of preference)."""
        return [name for name, dialect in DIALECTS.items() if getattr(self, dialect.config_key)]

    @property
    def web_host(self) -> str:
        """Where the dashboard listens: `[web] host`, else the OCPP `host`."""
        return self.web.host if self.web.host is not None else self.host

    def upstream_password(self, upstream: Upstream) -> str | None:
        """An upstream's password: its own, or its file's first line (read at each
        connection, so a new one applies at the next)."""
        if upstream.password_file is None:
            return upstream.password
        lines = self.path(upstream.password_file).read_text().splitlines()
        return lines[0] if lines else ""

    def validation_for(self, identity: str) -> ValidationMode:
        override = self.charge_points.get(identity)
        if override is not None and override.validation is not None:
            return override.validation
        return self.validation

    def readings_for(self, identity: str) -> Readings:
        """[readings] with the charge point's own keys over it."""
        override = self.charge_points.get(identity)
        if override is None or override.readings is None:
            return self.readings
        own = {k: v for k, v in msgspec.structs.asdict(override.readings).items() if v is not None}
        return replace(self.readings, **own)


#: fields of the structure that are not keys of the file
NOT_KEYS = frozenset({"source", "instance"})


#: a config table: the whole file or one of its tables
_Structure = TypeVar("_Structure", bound=msgspec.Struct)


def replace(config: _Structure, **changes: Any) -> _Structure:
    """A copy with `changes` (SIGHUP keeps keys that take a restart; `serve --port`)."""
    return msgspec.structs.replace(config, **changes)


#: `--instance N`: the processes of one site are numbered 1-99 (two digits of a port)
INSTANCES = range(1, 100)


def instance(config: Config, number: int | None) -> Config:
    """Process `number` of the site that shares `config`: the OCPP port + N, the web
    port + N, the database `<name>-N<suffix>` in the same folder; a port of 0 (any free
    port) stays 0. None: `config` itself. Raises ConfigError for a number out of range
    or a port beyond 65535 (README "A big site on several processes")."""
    if number is None:
        return config
    where = str(config.source) if config.source else "config"
    if number not in INSTANCES:
        raise ConfigError(
            f"--instance {number}: an instance is numbered {INSTANCES[0]}-{INSTANCES[-1]}"
        )
    for key, port in ((("port",), config.port), (("web", "port"), config.web.port)):
        if port + number > 65535 and port != 0:
            raise ConfigError(
                f"{where}: bad value for '{key_name(key)}'{located(config, *key)}:"
                f" {port} + instance {number} is beyond 65535: lower it"
            )
    database = PurePath(config.database)
    shifted = database.with_name(f"{database.stem}-{number}{database.suffix}")
    return replace(
        config,
        port=config.port + number if config.port else 0,
        web=replace(config.web, port=config.web.port + number if config.web.port else 0),
        database=str(shifted),
        instance=number,
    )


# ------------------------------------------------------------------------ structuring

#: where a value sits in the file: field names, dict keys (a charge point's identity) and
#: list indexes; e.g. ("charge_points", Key("CP1"), "password_hash")
KeyPath = tuple["str | Key | int", ...]


class Key(str):
    """A key chosen by the user (an identity under [charge_points]), not a field name:
    quoted when shown (`charge_points."CP1".password`)."""


def key_name(path: KeyPath) -> str:
    """The key as a user writes it: `limits.max_frame_bytes`, `charge_points."CP1".password`
    (an item of a list: `identity_allowlist[1]`)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, Key):
            text += f".{_quoted(part)}"
        else:
            text += f".{part}"
    return text.lstrip(".")


def charge_point_key(identity: str, name: str | None = None) -> str:
    """The TOML key of a charge point's table (or of one of its keys), for messages."""
    return key_name(("charge_points", Key(identity), *([name] if name else [])))


def _quoted(text: str) -> str:
    # a JSON string is a TOML basic string (the same escapes)
    return json.dumps(text, ensure_ascii=False)


def parse(text: str, source: Path | None = None) -> Config:
    """Structure TOML text into a Config; raises ConfigError naming the key and line."""
    where = str(source) if source else "config"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    problems = list(_problems(raw, Config, ()))
    if not problems:
        try:
            config = msgspec.convert(raw, Config)
        except msgspec.ValidationError as exc:
            problems.append(_bad_value(exc, raw, ()))
    if not problems:
        problems = list(_cross_checks(config))
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(p.text(text) for p in problems))
    return replace(config, source=str(source) if source else None)


class _Problem(typing.NamedTuple):
    path: KeyPath
    #: "unknown", "missing", "bad" (a value) or "" (a sentence about the table at `path`)
    kind: str
    detail: str = ""

    def text(self, toml: str) -> str:
        if not self.path:
            return self.detail
        key = key_name(tuple(p for p in self.path if not isinstance(p, int)))
        # a missing key has no line: its table's header has
        line = _line_of(toml, self.path[:-1] if self.kind == "missing" else self.path)
        at = f" (line {line})" if line else ""
        at += "".join(f", item {p + 1}" for p in self.path if isinstance(p, int))
        if self.kind == "unknown":
            return f"unknown key '{key}'{at}{self.detail}"
        if self.kind == "missing":
            return f"missing key '{key}'{at}: required"
        if self.kind == "bad":
            return f"bad value for '{key}'{at}: {self.detail}"
        return f"'{key}'{at} {self.detail}"


def _problems(raw: dict[str, Any], kind: type[msgspec.Struct], at: KeyPath) -> Iterator[_Problem]:
    """What msgspec would report one at a time or without the words of a TOML file:
    every unknown key (with the nearest known one), every missing one, and the values
    of tables keyed by the user (their path then names the key, not `[...]`)."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind) if f.name not in NOT_KEYS}
    for name in raw:
        if name not in fields:
            yield _Problem((*at, name), "unknown", _did_you_mean(name, kind))
    for name, info in fields.items():
        if info.required and name not in raw:
            yield _Problem((*at, name), "missing")
    for name, value in raw.items():
        if name not in fields or not isinstance(value, dict):
            continue
        info = fields[name]
        table = _struct_in(info.type)
        if table is not None:
            yield from _problems(value, table, (*at, name))
        entry = _keyed_struct_in(info.type)
        if entry is None:
            continue
        for key, item in value.items():
            where = (*at, name, Key(key))
            if not isinstance(item, dict):
                header = f"[{key_name(where)}]"
                yield _Problem(where, "bad", f"expected a table {header}, not {_shown(item)}")
                continue
            found = list(_problems(item, entry, where))
            if not found:
                try:
                    msgspec.convert(item, entry)
                except msgspec.ValidationError as exc:
                    found.append(_bad_value(exc, item, where))
            yield from found


def _struct_in(kind: Any) -> type[msgspec.Struct] | None:
    """The Struct of a field typed `S` or `S | None`."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    for option in (kind, *(typing.get_args(kind) if union else ())):
        if isinstance(option, type) and issubclass(option, msgspec.Struct):
            return option
    return None


def _keyed_struct_in(kind: Any) -> type[msgspec.Struct] | None:
    """The Struct of a field typed `dict[str, S]` (a table of tables keyed by the user)."""
    if typing.get_origin(kind) is dict:
        return _struct_in(typing.get_args(kind)[1])
    return None


def _did_you_mean(name: str, kind: type[msgspec.Struct]) -> str:
    known = [f.encode_name for f in msgspec.structs.fields(kind) if f.name not in NOT_KEYS]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f": did you mean '{close[0]}'?"
    # a key of a table written outside it: `max_connections = 5` at the top
    for info in msgspec.structs.fields(kind):
        table = _struct_in(info.type)
        if table is not None and name in {f.encode_name for f in msgspec.structs.fields(table)}:
            return f": it belongs in the table [{info.encode_name}]"
    return ""


# msgspec's documented error format: "<what is wrong> - at `$.limits.max_frame_bytes`"
_AT = re.compile(r"\s+- at `\$(.*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")


def _bad_value(exc: msgspec.ValidationError, raw: Any, at: KeyPath) -> _Problem:
    message = str(exc)
    where = _AT.search(message)
    path: list[str | Key | int] = list(at)
    if where:
        message = message[: where.start()]
        for step in _STEP.finditer(where.group(1)):
            if step.group(1):
                path.append(step.group(1))
            elif step.group(2):
                path.append(int(step.group(2)))
            else:
                break  # `[...]`: a key of a table keyed by the user (see `_problems`)
    detail = message[:1].lower() + message[1:]
    value = _value_at(raw, tuple(path[len(at) :]))
    name = next((p for p in reversed(path) if isinstance(p, str)), "")
    if value is not _ABSENT and name not in SECRETS:
        shown = _shown(value)
        if "got `" in detail:
            detail += f" {shown}"
            if isinstance(value, str) and "`array`" in detail:
                detail += f" (a list of one is written [{shown}])"
        elif "enum value" not in detail:
            detail += f", not {shown}"
        choices = _choices(tuple(path))
        if choices:
            detail += f" (one of {choices})"
    return _Problem(tuple(path), "bad", detail)


_ABSENT = object()


def _shown(value: Any) -> str:
    """A value as the file spells it, near enough (JSON's strings, numbers and lists)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _value_at(raw: Any, path: KeyPath) -> Any:
    for part in path:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return _ABSENT
    return raw


def _choices(path: KeyPath) -> str:
    """For a field typed as a Literal: its values, as the message's hint."""
    kind: Any = Config
    for part in path:
        struct = _struct_in(kind)
        if isinstance(part, (Key, int)):
            args = typing.get_args(kind)
            kind = args[-1] if args else Any
        elif struct is not None:
            fields = {f.encode_name: f.type for f in msgspec.structs.fields(struct)}
            kind = fields.get(part, Any)
        else:
            return ""
    literals = [o for o in (kind, *typing.get_args(kind)) if typing.get_origin(o) is Literal]
    return ", ".join(repr(value) for o in literals for value in typing.get_args(o))


def _cross_checks(config: Config) -> Iterator[_Problem]:
    """What spans keys, or needs more than a type and a range."""
    from appliance.passwords import check_token_hash, parse_hash

    if not config.subprotocols:
        yield _Problem((), "", "enable16, enable201 and enable21 are all false: enable one")
    if config.web.password_hash is not None:
        try:
            parse_hash(config.web.password_hash)
        except ValueError as exc:
            yield _Problem(("web", "password_hash"), "bad", str(exc))
    for number, entry in enumerate(config.web.api_token_hashes):
        try:
            check_token_hash(entry)
        except ValueError as exc:
            yield _Problem(("web", "api_token_hashes", number), "bad", str(exc))
    yield from _measurand_checks(config.readings.measurands, ("readings", "measurands"))
    for number, entry in enumerate(config.limits.proxy_from):
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            yield _Problem(("limits", "proxy_from", number), "bad", _network_problem(entry))
    for identity, settings in config.charge_points.items():
        at: KeyPath = ("charge_points", Key(identity))
        if settings.readings is not None and settings.readings.measurands is not None:
            where = (*at, "readings", "measurands")
            yield from _measurand_checks(settings.readings.measurands, where)
        if settings.password_hash is not None:
            try:
                parse_hash(settings.password_hash)
            except ValueError as exc:
                yield _Problem((*at, "password_hash"), "bad", str(exc))
        if settings.password is not None and settings.password_hash is not None:
            yield _Problem(at, "", "sets password and password_hash: keep one")
    if config.mqtt is not None:
        yield from _mqtt_checks(config.mqtt)
    yield from _upstream_checks(config.upstream)
    if config.central is not None:
        url = config.central.postgresql_url
        if not url.startswith(("postgresql://", "postgres://")):
            detail = f"expected postgresql://user@host/database, not {_shown(redact_url(url))}"
            yield _Problem(("central", "postgresql_url"), "bad", detail)


def _network_problem(entry: str) -> str:
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return (
            'expected an IP address or a network ("10.0.0.5", "10.0.0.0/24", "::1"),'
            f" not {_shown(entry)}"
        )
    # "10.0.0.5/24": one address or its whole network? trusting either by mistake lets
    # the wrong hosts claim any address
    address = entry.partition("/")[0]
    return (
        f"{_shown(entry)} is neither one address nor a network: write {_shown(address)} or"
        f" {_shown(str(network))}"
    )


def _upstream_checks(upstreams: list[Upstream]) -> Iterator[_Problem]:
    from appliance.versions.tables import FROM_CSMS

    actions = frozenset().union(*FROM_CSMS.values())
    names: set[str] = set()
    for number, upstream in enumerate(upstreams):
        at: KeyPath = ("upstream", number)
        if not upstream.url.startswith(("ws://", "wss://")):
            detail = f"expected ws://host[:port]/path or wss://…, not {_shown(upstream.url)}"
            yield _Problem((*at, "url"), "bad", detail)
        if upstream.password is not None and upstream.password_file is not None:
            yield _Problem(at, "", "sets password and password_file: keep one")
        if (upstream.cert is None) != (upstream.key is None):
            yield _Problem(at, "", "a client certificate needs both cert and key")
        if upstream.label in names:
            yield _Problem((*at, "name"), "bad", f"{_shown(upstream.label)} names two upstreams")
        names.add(upstream.label)
        for index, action in enumerate(upstream.allow_calls):
            if action not in actions:
                close = difflib.get_close_matches(action, sorted(actions), n=1, cutoff=0.6)
                hint = f": did you mean {_shown(close[0])}?" if close else ""
                detail = f"not an action a central system sends: {_shown(action)}{hint}"
                yield _Problem((*at, "allow_calls", index), "bad", detail)


def _measurand_checks(measurands: list[str], at: KeyPath) -> Iterator[_Problem]:
    """OCPP's own measurand names (any version's); each once."""
    seen: set[str] = set()
    for number, name in enumerate(measurands):
        if name not in ALL_MEASURANDS:
            close = difflib.get_close_matches(name, sorted(ALL_MEASURANDS), n=1, cutoff=0.6)
            hint = f": did you mean {_shown(close[0])}?" if close else " (OCPP measurand names)"
            yield _Problem((*at, number), "bad", f"not an OCPP measurand: {_shown(name)}{hint}")
        elif name in seen:
            yield _Problem((*at, number), "bad", f"{_shown(name)} is listed twice")
        seen.add(name)


def _mqtt_checks(mqtt: Mqtt) -> Iterator[_Problem]:
    from urllib.parse import urlsplit

    try:
        url = urlsplit(mqtt.url)
        url.port  # noqa: B018 (raises ValueError when out of range)
    except ValueError as exc:
        yield _Problem(("mqtt", "url"), "bad", f"{exc}, not {_shown(mqtt.url)}")
        return
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        detail = f"expected mqtt://host[:port] or mqtts://host[:port], not {_shown(mqtt.url)}"
        yield _Problem(("mqtt", "url"), "bad", detail)
    elif url.username is not None or url.password is not None:
        # the url is shown in messages and logs: the credentials have keys of their own
        detail = "put the user and password in 'username' and 'password', not in the url"
        yield _Problem(("mqtt", "url"), "bad", detail)
    if mqtt.password is not None and mqtt.password_file is not None:
        yield _Problem(("mqtt",), "", "sets password and password_file: keep one")
    for name in ("base_topic", "discovery_prefix"):
        topic = getattr(mqtt, name)
        if any(c in topic for c in "+#\0") or topic.startswith("/") or topic.endswith("/"):
            detail = f"a topic without +, # and a leading or trailing /, not {_shown(topic)}"
            yield _Problem(("mqtt", name), "bad", detail)


# ------------------------------------------------------------------------ line numbers

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")


def _key_path(dotted: str) -> tuple[str, ...]:
    """`charge_points."CP 1"` → ("charge_points", "CP 1"), as TOML reads it."""
    try:
        table: Any = tomllib.loads(f"{dotted} = 0")
    except tomllib.TOMLDecodeError:
        return ()
    parts = []
    while isinstance(table, dict) and len(table) == 1:
        name, table = next(iter(table.items()))
        parts.append(name)
    return tuple(parts)


def _line_of(text: str, path: KeyPath) -> int | None:
    """The line that sets `path` (tomllib gives no positions); else the first line that
    sets a key of the same name; else None."""
    wanted = tuple(p for p in path if not isinstance(p, int))
    if not wanted:
        return None
    table: tuple[str, ...] = ()
    fallback = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        assign = None if header else _ASSIGN.match(line)
        if header:
            table = _key_path(header.group(1))
            full = table
        elif assign:
            full = table + _key_path(assign.group(1))
        else:
            continue
        if full == wanted:
            return number
        if fallback is None and full and full[-1] == wanted[-1]:
            fallback = number
    return fallback


def located(config: Config, *key: str) -> str:
    """` (line N)` for a key of the config's file (`"port"`, `"web", "port"`), or ""."""
    if config.source is None:
        return ""
    try:
        line = _line_of(Path(config.source).read_text("utf-8"), key)
    except OSError:
        return ""
    return f" (line {line})" if line else ""


# ------------------------------------------------------------------------ the database


def check_database(config: Config) -> None:
    """The database's folder must exist (a typo would otherwise make a new, empty
    database somewhere); only the packaged default's folder is made by systemd (for
    its instances' files too: appliance-N.db). Raises ConfigError naming the key."""
    path = config.database_path
    folder = path.parent
    if folder.is_dir() or folder == PACKAGED_DATABASE.parent:
        return
    where = str(config.source) if config.source else "config"
    key = f"'database'{located(config, 'database')}"
    if folder.exists():
        problem = f"{folder} is not a folder"
    else:
        problem = (
            f"the folder {folder} does not exist: create it (mkdir -p {folder}) or"
            " point 'database' at a file in an existing folder"
        )
    raise ConfigError(f"{where}: bad value for {key}: {problem}")


# ------------------------------------------------------------------------------ lookup


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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (UTF-8): {exc.reason}") from None
    return parse(text, path.resolve())


# --------------------------------------------------------------------------- printing


#: what check-config prints instead of a secret
MASK = "***"


def to_toml(config: Config) -> str:
    """The effective config as TOML that `parse` reads back — except that secrets
    (passwords, password hashes) are printed as `***`: this output lands in terminals,
    tickets and forum posts."""
    data = msgspec.to_builtins(config)
    for name in NOT_KEYS:
        data.pop(name, None)
    if data.get("mqtt") and data["mqtt"].get("password") is not None:
        data["mqtt"]["password"] = MASK
    if data.get("central"):
        data["central"]["postgresql_url"] = redact_url(data["central"]["postgresql_url"])
    for upstream in data.get("upstream", []):
        if upstream.get("password") is not None:
            upstream["password"] = MASK
    for name in SECRETS & data["web"].keys():
        if data["web"][name]:
            data["web"][name] = MASK if name == "password_hash" else [MASK] * len(data["web"][name])
    for settings in data["charge_points"].values():
        for name in SECRETS & settings.keys():
            if settings[name] is not None:
                settings[name] = MASK
    return tomli_w.dumps(_without_none(data))


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: a key left unset is left out (and so is an empty table); also
    in an array of tables ([[upstream]])."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return _without_none(value)
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    return {key: clean(value) for key, value in data.items() if value is not None and value != {}}


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
min_free_disk_mb = 100          # disk guard: below it, high-rate frames are not stored

[limits]
max_frame_bytes = 1048576       # larger frames close the connection (1009)
handshake_timeout_sec = 10      # a peer that has not upgraded by then is dropped
max_connections = 1000          # more are refused with HTTP 503 (Retry-After: 30)
max_handshakes = 32             # TLS/WebSocket handshakes at once; more wait, not accepted
max_connections_per_address = 0 # per source address; 0: no cap of its own (charge
                                # points behind one router or HAProxy share an address)
max_handshakes_per_address = 0  # per source address; 0: no cap of its own
proxy_from = []                 # behind HAProxy with send-proxy-v2: its address(es), e.g.
                                # ["127.0.0.1"]; their connections must start with the
                                # PROXY header, whose address then counts as the peer's
max_json_depth = 64             # deeper payloads are refused as malformed

[device_model]
fetch_on_boot = true            # ask for the configuration / Device Model after each boot

# What the appliance asks each charge point to measure, after each boot (needs
# fetch_on_boot); only what differs is written, never a read-only key, never a reset
[readings]
configure = true                # false: leave the charge points' settings alone
interval_sec = 10               # sampling interval during a transaction
measurands = ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import",
              "Voltage", "SoC", "Current.Offered", "Power.Offered"]
aligned_interval_sec = 300      # clock-aligned energy readings; 0: left alone

[authorization]
id_tokens = []                  # e.g. ["04A2B3C4D5E6F7"]: only these RFID/idTokens are
                                # Accepted (case-insensitive); empty = every token

# wss:// (security profile 2): uncomment, and charge points connect to wss://<box>:9000/<id>
# [tls]
# cert = "server.crt"           # PEM, the server certificate (and its chain)
# key = "server.key"            # PEM, its private key (keep it readable by the service only)
# client_ca = "cp-ca.crt"       # mutual TLS (profile 3): charge points need a certificate
#                               # from this CA whose CN is their identity

# The web dashboard and HTTP API: http://<box>:9080/ (https:// with [tls])
[web]
enabled = true
# host = "0.0.0.0"              # default: where the OCPP port listens (`host` above);
#                               # keep it on the LAN (or behind TLS)
port = 9080
# password_hash = "scrypt$ln=15,r=8,p=1$..."   # the dashboard's login (`ocpp-appliance
#                                              # hash-password`); without it: read-only
# api_token_hashes = ["sha256$..."]            # `ocpp-appliance web-token` prints a token
#                                              # for scripts and the hash to put here
max_connections_per_address = 128 # per source address; more: 503 (https: reset); 0: off

# MQTT with Home Assistant discovery (README "Home Assistant and MQTT"): uncomment
# [mqtt]
# url = "mqtt://homeassistant.local:1883"   # or mqtts://host:8883 (TLS)
# username = "ocpp"
# password_file = "mqtt.password"  # or password = "..." (check-config shows ***)
# ca = "broker-ca.crt"          # mqtts: the CA of the broker's certificate; default: system's
# client_id = "ocpp-appliance"
# base_topic = "ocpp-appliance" # <base_topic>/<identity>/power_w, …/set/chargeLimit
# homeassistant_discovery = true
# discovery_prefix = "homeassistant"
# retain = "all"                # all, discovery (availability and discovery only), none
# min_interval_sec = 1.0        # a charge point's values at most this often (power: 1 s)
# publish_all = false           # every state of the object tree too (ioBroker style)
# start_id_token = "HA"         # the idToken of Home Assistant's start-session button

# Every site into one PostgreSQL (README "Many sites into one PostgreSQL"): uncomment
# [central]
# postgresql_url = "postgresql://fleet@db.example.com/fleet?sslmode=verify-full"
# password_file = "fleet.password"  # or the password in the url (check-config shows ***)
# ca = "fleet-ca.crt"           # the CA of the server's certificate (verify-full)
# site = "berlin-office"        # this box's name in the fleet; default: the host name

# A second backend (README "A second backend"): the charge points' messages go on to it
# as theirs, and it may start and stop sessions; one table per backend. Uncomment
# [[upstream]]
# url = "wss://billing.example.com/ocpp"   # the charge point's identity is appended
# identities = ["*"]            # globs of the charge points it serves
# password_file = "billing.password"  # or password = "..." (check-config shows ***)
# authorize = "local"           # or "upstream": its answer decides an idToken

# Per charge point settings, by identity:
# [charge_points."CP-GARAGE"]
# validation = "strict"
# password_hash = "scrypt$ln=15,r=8,p=1$..."   # Basic auth (profiles 1 and 2): the output
#                                              # of `ocpp-appliance hash-password`
# password = "..."              # or the password itself (a hash is better: whoever reads
#                               # this file then does not learn the password)
# [charge_points."CP-GARAGE".readings]
# configure = false             # any key of [readings], for this charge point only
"""
