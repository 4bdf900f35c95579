"""The `ocpp-appliance` command. Exit status: 0 success, 1 failure, 2 bad usage or config."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence

from appliance import __version__
from appliance import config as configuration
from appliance.domain import clock
from appliance.errors import ReaderError
from appliance.rpc.dialects import DIALECTS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    try:
        from appliance._build import COMMIT  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return f"ocpp-appliance {__version__}"
    return f"ocpp-appliance {__version__} (commit {COMMIT})"


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from appliance.app import CannotListen, DatabaseUnusable, NotFlushed, serve, setup_logging
    from appliance.security.policy import Policy
    from appliance.store import StoreError

    def overrides(config: configuration.Config) -> configuration.Config:
        """The command line over the file's keys, at start and at each SIGHUP: `--port`
        replaces `port`, then `--instance` shifts the ports and names the database."""
        if args.port is not None:
            config = configuration.replace(config, port=args.port)
        return configuration.instance(config, args.instance)

    config = overrides(configuration.load(args.config))
    configuration.check_database(config)
    # the TLS files are read and checked here: a bad one is exit 2, before listening
    policy = Policy.build(config)
    setup_logging(config.log_level)
    try:
        trio.run(serve, config, policy, overrides)
    except (CannotListen, DatabaseUnusable, StoreError, NotFlushed) as exc:
        print(f"ocpp-appliance: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _load(args: argparse.Namespace) -> configuration.Config:
    """The config of `--config`, as process `--instance` of its site sees it."""
    return configuration.instance(configuration.load(args.config), args.instance)


def cmd_check_config(args: argparse.Namespace) -> int:
    from appliance.security.policy import Policy, config_warnings

    path = configuration.find(args.config)
    config = _load(args)
    configuration.check_database(config)
    Policy.build(config)  # the TLS files: present, readable, matching
    for warning in config_warnings(config):
        print(f"ocpp-appliance: warning: {warning}", file=sys.stderr)
    origin = str(path) if path else "no config file found: built-in defaults"
    if config.instance is not None:
        origin += f"; instance {config.instance}"
    print(f"# effective config ({origin}; secrets shown as {configuration.MASK})")
    print(configuration.to_toml(config), end="")
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from appliance import passwords

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("ocpp-appliance: the two passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        # one line from a pipe or file; only its line break is not part of the password
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("ocpp-appliance: empty password", file=sys.stderr)
        return EXIT_USAGE
    problem = passwords.rule_problem(password)
    if problem is not None:
        print(f"ocpp-appliance: warning: {problem}; hashed all the same", file=sys.stderr)
    print(passwords.hash_password(password))
    return EXIT_OK


def cmd_web_token(args: argparse.Namespace) -> int:
    from appliance import passwords

    token, digest = passwords.new_token()
    print(f"token (give it to the script; shown once): {token}")
    print(f'config ([web] api_token_hashes): "{digest}"')
    return EXIT_OK


def cmd_example_config(args: argparse.Namespace) -> int:
    print(configuration.EXAMPLE, end="")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from appliance import reader

    config = _load(args)
    rows = reader.charge_points(config.database_path)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(reader.status_table(rows), end="")
        print(reader.upstream_lines(rows), end="")
        if config.central is not None:
            print(_central_line(config))
        print(reader.disk_line(config.database_path, config.storage.min_free_disk_mb), end="")
        why = _down_now(config)
        if why is not None:
            print(
                f"ocpp-appliance: the appliance is not running ({why}):"
                " the table shows what was true then",
                file=sys.stderr,
            )
    return EXIT_OK


def _central_line(config: configuration.Config) -> str:
    """README "Many sites into one PostgreSQL": the replication's state and backlog."""
    from appliance.reader import age
    from appliance.store.replication import backlog

    found = backlog(config.database_path)
    state = found["central"]
    said = "not started yet" if state is None else f"{state['state']} ({age(state['at'])} ago)"
    waiting = found["backlog"]
    rows = sum(table["rows"] for table in waiting.values())
    lags = [table["lag_s"] for table in waiting.values() if table["lag_s"] is not None]
    behind = f"; oldest {max(lags):g} s old" if lags else ""
    return f"central: {said}; {rows} rows not in PostgreSQL yet{behind}"


def cmd_get(args: argparse.Namespace) -> int:
    from appliance import reader

    config = _load(args)
    states = reader.states(config.database_path, args.pattern)
    if args.json:
        print(json.dumps(states, indent=2, ensure_ascii=False))
    else:
        print(reader.states_table(states), end="")
    if not states:
        print(f"ocpp-appliance: no state id matches {args.pattern!r}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _value(text: str) -> object:
    """README "Command line": VALUE as JSON where it parses (16, true, "text"), else as text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _down_now(config: configuration.Config) -> str | None:
    """Why the appliance is not running, from its heartbeat in the database; None if it
    runs (or is older than the heartbeat and cannot tell)."""
    from appliance import reader

    stale = reader.stale_after_ms(config.storage.commit_interval_ms)
    alive, stopped = reader.heartbeat(config.database_path)
    if alive is None or not reader.is_down(alive, stopped, stale, clock.wall_ms()):
        return None
    if stopped is not None and stopped >= alive:
        return f"it stopped {reader.age(stopped)} ago"
    return f"no sign of life for {reader.age(alive)}: it was stopped or killed"


def _not_running(config: configuration.Config) -> str | None:
    """`_down_now`, but a restart that has not yet committed its first beat gets one
    commit interval and a second to show it."""
    deadline = time.monotonic() + config.storage.commit_interval_ms / 1000 + 1
    while (why := _down_now(config)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return why


def _where(config: configuration.Config) -> str:
    """The options that name `config` on a command line: ` --config PATH --instance N`."""
    where = f" --config {config.source}" if config.source else ""
    return where + (f" --instance {config.instance}" if config.instance is not None else "")


def _down_message(config: configuration.Config, why: str, written: bool) -> str:
    where = _where(config)
    done = (
        "the command stays queued and is not run when it starts"
        if written
        else "nothing was written"
    )
    return (
        f"ocpp-appliance: the appliance is not running ({why}); {done}."
        f" Start it with `ocpp-appliance serve{where}`"
    )


def _write_and_wait(
    config: configuration.Config, values: list[tuple[str, object]], base: str | None
) -> int:
    """`set` and `call`: refuse at once when the appliance is down, else write the
    controls and wait for their outcome."""
    from appliance import reader

    why = _not_running(config)
    if why is not None:
        print(_down_message(config, why, written=False), file=sys.stderr)
        return EXIT_FAILED
    # the call may wait its turn (call_timeout_sec), then for the answer (again)
    patience = 2 * config.call_timeout_sec + 5
    stale = reader.stale_after_ms(config.storage.commit_interval_ms)
    carried = reader.carry_out(config.database_path, values, base, patience, stale)
    if carried.waited == "down":
        why = _not_running(config) or "it stopped"
        print(_down_message(config, why, written=True), file=sys.stderr)
        return EXIT_FAILED
    if carried.waited != "done":
        print(
            f"ocpp-appliance: the appliance did not take the command within {patience:g} s"
            " — is `ocpp-appliance serve` running with this config?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if base is None:
        # a parameter the appliance refused (a raw value it checks): the value in force stays
        if carried.error:
            print(f"ocpp-appliance: {carried.error}", file=sys.stderr)
            return EXIT_FAILED
        print("ok (parameter taken)")
        return EXIT_OK
    if carried.error:
        print(f"ocpp-appliance: {carried.error}", file=sys.stderr)
        if carried.response:
            print(carried.response)
        return EXIT_FAILED
    if carried.note:
        print(f"ocpp-appliance: {carried.note}", file=sys.stderr)
    print(_pretty(carried.response) if carried.response else "ok")
    return EXIT_OK


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def cmd_set(args: argparse.Namespace) -> int:
    from appliance import reader
    from appliance.controls import CommandError, prepare

    config = _load(args)
    prefix, _, path = args.id.partition(".")
    if not path:
        print(f"ocpp-appliance: {args.id!r} is not a full state id", file=sys.stderr)
        return EXIT_USAGE
    try:
        # a parameter is checked before anything is written (README "Controls")
        values, base = prepare(args.id, _value(args.value))
    except CommandError as exc:
        print(f"ocpp-appliance: {exc}; nothing written", file=sys.stderr)
        return EXIT_FAILED
    status = _write_and_wait(config, values, base)
    if status != EXIT_OK and base is not None and path == f"control.{START_TRIGGER}":
        # it ran and failed: for want of an idToken, say how to give one
        token = f"{prefix}.control.requestStartTransaction.idToken"
        found = reader.states(config.database_path, token)
        ran = bool(reader.outcome(config.database_path, base)[1])
        if ran and (not found or found[0]["val"] in (None, "")):
            print(
                "ocpp-appliance: a remote start needs an idToken first:"
                f" ocpp-appliance set {token} TAG0001{_where(config)}",
                file=sys.stderr,
            )
    return status


#: the control whose failure for want of an idToken the CLI explains
START_TRIGGER = "requestStartTransaction.trigger"


def cmd_call(args: argparse.Namespace) -> int:
    from appliance.tree.ids import escape

    config = _load(args)
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"ocpp-appliance: {_where_malformed(args.payload, exc)}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(payload, dict):
        kind = type(payload).__name__.replace("dict", "object").replace("list", "array")
        print(
            f"ocpp-appliance: the payload must be a JSON object ({{...}}), not a {kind}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    base = f"{escape(args.identity)}.control.rpc"
    values = [(f"{base}.method", args.action), (f"{base}.payload", payload), (f"{base}.execute", 1)]
    return _write_and_wait(config, values, base)


def _where_malformed(text: str, exc: json.JSONDecodeError) -> str:
    """The JSON error, the line it is on and a caret under the place."""
    lines = text.splitlines() or [""]
    line = lines[min(exc.lineno, len(lines)) - 1] if text.strip() else ""
    where = f"line {exc.lineno} column {exc.colno}" if "\n" in text else f"column {exc.colno}"
    message = f"the payload is not JSON: {exc.msg} at {where}"
    if not line:
        return message + " (an empty payload is {})"
    return f"{message}\n  {line}\n  {' ' * (exc.colno - 1)}^"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0 picks a free port): {text!r}")
    return value


def _whole(text: str) -> int:
    """A whole number; its range is the caller's (`--instance`: `configuration.instance`)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _count(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def cmd_simulate(args: argparse.Namespace) -> int:
    from appliance.simulator import Options, simulate

    if bool(args.cert) != bool(args.key):
        print("ocpp-appliance: --cert and --key go together", file=sys.stderr)
        return EXIT_USAGE
    url = args.url or _url_of(_load(args))
    if not url.startswith(("ws://", "wss://")):
        print(f"ocpp-appliance: --url must start with ws:// or wss://: {url}", file=sys.stderr)
        return EXIT_USAGE
    options = Options(
        url=url,
        count=args.count,
        protocol=args.protocol,
        identity_prefix=args.identity_prefix,
        duration=args.duration,
        meter_interval=args.meter_interval,
        speed=args.speed,
        password=args.password,
        cafile=args.cafile,
        cert=args.cert,
        key=args.key,
        load=args.load,
    )
    return simulate(options, as_json=args.json)


def _url_of(config: configuration.Config) -> str:
    """Where the appliance of `config` listens, as seen from this machine."""
    if config.port == 0:
        raise configuration.ConfigError(
            f"{config.source or 'config'}: port = 0 (any free port): give the port"
            " the appliance printed at start with --url ws://127.0.0.1:PORT"
        )
    host = config.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "wss" if config.tls is not None else "ws"
    return f"{scheme}://{host}:{config.port}"


#: `simulate --protocol` (the simulator's PROTOCOL_CHOICES, which tests/test_memory.py
#: compares: importing the simulator to build the parser would load it into `serve` too)
PROTOCOL_CHOICES = [*reversed(DIALECTS), "mix"]


def _simulate_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--url", help="the central system; the identity is appended as the "
                     "last path segment (default: where the appliance of the config listens, "
                     "ws://127.0.0.1:9000 without a config)")  # fmt: skip
    sub.add_argument("--count", type=_count, default=1, metavar="N", help="charge points (1)")
    sub.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="ocpp1.6",
                     help="OCPP version; mix: round-robin over all three (ocpp1.6)")  # fmt: skip
    sub.add_argument("--identity-prefix", default="SIM", metavar="PREFIX",
                     help="identities PREFIX001, PREFIX002, … (SIM)")  # fmt: skip
    sub.add_argument("--duration", type=_positive, metavar="S",
                     help="stop after S seconds (default: until Ctrl-C)")  # fmt: skip
    sub.add_argument("--meter-interval", type=_positive, default=60.0, metavar="S",
                     help="simulated seconds between meter values (60)")  # fmt: skip
    sub.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        metavar="X",
        help="simulated time runs X times faster (1; 60: a session in ~20 s)",
    )
    sub.add_argument("--password", help="HTTP Basic auth password (user = the identity)")
    sub.add_argument("--cafile", metavar="PEM", help="CA certificate(s) for wss://")
    sub.add_argument("--cert", metavar="PEM", help="client certificate (security profile 3)")
    sub.add_argument("--key", metavar="PEM", help="the client certificate's private key")
    sub.add_argument("--load", action="store_true", help="load test: after boot, MeterValues "
                     "back to back, one CALL in flight per connection")  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print the summary as JSON")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str]] = {
    "serve": (
        cmd_serve,
        "run the central system",
        "example: ocpp-appliance serve --config /etc/ocpp-appliance/appliance.toml"
        "   (another port: ocpp-appliance serve --port 9100)   (process 2 of a big site:"
        " ocpp-appliance serve --instance 2, on port + 2 with appliance-2.db)",
    ),
    "check-config": (
        cmd_check_config,
        "validate the config and print the effective values",
        "example: ocpp-appliance check-config --config appliance.toml",
    ),
    "example-config": (
        cmd_example_config,
        "print a commented example config",
        "example: ocpp-appliance example-config > appliance.toml",
    ),
    "hash-password": (
        cmd_hash_password,
        "read a password (prompt, or one line of stdin) and print a password_hash for the config",
        "example: ocpp-appliance hash-password < cp-garage.pass (or type it at the prompt),"
        ' then put the printed scrypt$ln=15,r=8,p=1$… line in [charge_points."CP-GARAGE"]'
        " password_hash",
    ),
    "web-token": (
        cmd_web_token,
        "print a new API token for the web API and the hash to put into [web] api_token_hashes",
        "example: ocpp-appliance web-token, then curl -H 'Authorization: Bearer oat_…'"
        " http://box:9080/api/charge-points",
    ),
    "status": (
        cmd_status,
        "print a table of the charge points the appliance knows",
        "example: ocpp-appliance status --config /etc/ocpp-appliance/appliance.toml --json",
    ),
    "get": (
        cmd_get,
        "print the states whose id matches a glob pattern",
        "example: ocpp-appliance get 'CP1.meterValues.*'",
    ),
    "set": (
        cmd_set,
        "write a control, wait for its outcome, print it (exit 0 on success, 1 otherwise)",
        "example: ocpp-appliance set CP1.control.chargeLimit 16",
    ),
    "call": (
        cmd_call,
        "run any OCPP action on a charge point, print its answer (exit 0 on a CALLRESULT)",
        "example: ocpp-appliance call CP1 GetVariables "
        '\'{"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},'
        ' "variable": {"name": "HeartbeatInterval"}}]}\'',
    ),
    "simulate": (
        cmd_simulate,
        "run simulated charge points (1.6 / 2.0.1 / 2.1) against a central system",
        "example: ocpp-appliance simulate --count 3 --speed 60   (the URL comes from the"
        " config: ocpp-appliance simulate --config appliance.toml; or --url ws://box:9000)   "
        "(load test: ocpp-appliance simulate --count 100 --load --duration 10 --json)",
    ),
}


#: the commands that use a config's ports or database take `--instance N`
INSTANCE_COMMANDS = ("serve", "check-config", "status", "get", "set", "call", "simulate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocpp-appliance",
        description="An OCPP 1.6J / 2.0.1 / 2.1 central system that keeps everything in SQLite.",
        epilog="example: ocpp-appliance serve",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, summary, example) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary, epilog=example)
        sub.add_argument(
            "--config",
            metavar="PATH",
            help="config file (default: $OCPP_APPLIANCE_CONFIG, ./appliance.toml, "
            "/etc/ocpp-appliance/appliance.toml, else built-in defaults)",
        )
        if name in INSTANCE_COMMANDS:
            sub.add_argument(
                "--instance",
                type=_whole,
                metavar="N",
                help="process N (1-99) of a site sharing this config: the ports + N, the "
                "database <name>-N.db (README: A big site on several processes)",
            )
        if name == "serve":
            sub.add_argument(
                "--port",
                type=_port,
                metavar="N",
                help="listen on port N instead of the config's `port` (0: any free port;"
                " with --instance, the port it adds to)",
            )
        if name in ("status", "get"):
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        if name == "set":
            sub.add_argument(
                "id", metavar="ID", help="full state id, e.g. CP1.control.availability"
            )
            sub.add_argument("value", metavar="VALUE", help="JSON where it parses, else text")
        if name == "call":
            sub.add_argument("identity", metavar="IDENTITY", help="the charge point")
            sub.add_argument("action", metavar="ACTION", help="an OCPP action, e.g. Reset")
            sub.add_argument(
                "payload", metavar="JSON", nargs="?", default="{}", help="its payload (default {})"
            )
        if name == "simulate":
            _simulate_arguments(sub)
        if name == "get":
            sub.add_argument(
                "pattern",
                metavar="PATTERN",
                help="glob over full state ids (* any text, ? one character); identities "
                "with characters other than letters, digits, _ - ~ are percent-encoded",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except configuration.ConfigError as exc:
        print(f"ocpp-appliance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReaderError as exc:
        print(f"ocpp-appliance: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        # `ocpp-appliance status --json | head`: the reader left, which is fine
        sys.stderr.close()
        return EXIT_OK
    except (OSError, sqlite3.Error) as exc:
        # the last net: the commands turn these into sentences that name the file
        # (`reader.explain`); one that got through still gets no traceback
        print(f"ocpp-appliance: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
