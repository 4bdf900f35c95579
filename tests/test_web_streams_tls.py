"""The dashboard's live stream and its https listener, through real interfaces (README
"Web dashboard and API", "Profile 2: TLS (wss://)"): the real appliance (a subprocess),
real HTTP with httpx, raw sockets for a browser that stops reading, and charge points of
the `ocpp` package (tests/test_controls.py).

- `GET /api/events?states=GLOB` sends `states` events with the rows the glob matches;
  the glob is on full state ids (`<prefix>.meterValues.*`, the prefix from
  `/api/charge-points`), as in the `states` table. Streams whose glob does not match, and
  streams without `?states`, get `status` events but no `states`.
- A stream nobody reads (a slow or hostile browser) holds up neither the charge points
  nor the appliance's exit on SIGTERM.
- With `[tls]`, the web listener speaks https only, with the OCPP port's certificate, and
  its cookies are Secure.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from test_controls import V16, Station, booted, stamp
from test_security import Pki, make_pki, tls_config
from test_web_api import PASSWORD, client, csrf, web_config, web_url

import conftest

# ------------------------------------------------------------------ helpers


class EventStream:
    """`GET /api/events` read on a thread of its own, as a browser's EventSource reads
    it: `events` holds every (event name, parsed data) so far."""

    def __init__(self, base_url: str, globs: tuple[str, ...] = ()) -> None:
        self.events: list[tuple[str, Any]] = []
        self.headers: httpx.Headers | None = None
        self._socket: socket.socket | None = None
        self._opened = threading.Event()
        # no read timeout: the stream is quiet until something changes
        self._http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=None))
        params = [("states", glob) for glob in globs]
        self._thread = threading.Thread(target=self._read, args=(params,), daemon=True)
        self._thread.start()
        assert self._opened.wait(20) and self.headers is not None, "the stream did not open"

    def _read(self, params: list[tuple[str, str]]) -> None:
        try:
            with self._http.stream("GET", "/api/events", params=params) as response:
                self.headers = response.headers
                self._socket = response.extensions["network_stream"].get_extra_info("socket")
                self._opened.set()
                name = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.events.append((name, json.loads(line.removeprefix("data: "))))
        except (httpx.HTTPError, OSError):
            pass  # closed by the test, or the appliance stopped
        finally:
            self._opened.set()

    def named(self, name: str) -> list[Any]:
        return [data for event, data in list(self.events) if event == name]

    def wait(self, name: str, check: Callable[[Any], bool], what: str, timeout: float = 15) -> Any:
        """The first `name` event whose data passes `check`, waiting for it."""
        found = conftest.wait_for(
            lambda: [data for data in self.named(name) if check(data)], timeout, what
        )
        return found[0]

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._http.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def power(watts: float) -> Callable[[Any], bool]:
    """A `status` row of CP-A with this power."""
    return lambda row: row["identity"] == "CP-A" and row["power_w"] == watts


def has_state(state_id: str, value: Any) -> Callable[[Any], bool]:
    """A `states` event with that row."""
    return lambda rows: any(r["id"] == state_id and r["val"] == value for r in rows)


def send_reading(station: Station, watts: float, wh: float | None = None) -> None:
    """One 1.6 MeterValues of connector 1: power, and the energy register if given."""
    sampled = [{"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"}]
    if wh is not None:
        sampled.append({"value": str(wh), "measurand": "Energy.Active.Import.Register"})
    answer = station.send(
        station.call.MeterValues(
            connector_id=1, meter_value=[{"timestamp": stamp(), "sampled_value": sampled}]
        ),
        timeout=20,
    )
    assert answer is not None


def prefix_of(http: httpx.Client, identity: str) -> str:
    """The charge point's id prefix, as the API lists it."""
    [row] = [p for p in http.get("/api/charge-points").json() if p["identity"] == identity]
    return row["prefix"]


def stalled_stream(base_url: str, glob: str) -> socket.socket:
    """A browser that asks for every state and never reads a byte: its receive window is
    as small as the kernel allows, so what the appliance writes to it backs up at once."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    request = f"GET /api/events?states={quote(glob)} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def unread_bytes(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


#: one DataTransfer with this much data makes a `states` event (its `.raw` and
#: `.data.data` states) far larger than a stalled client's window and the socket buffers
BIG = "x" * 100_000


def stall(appliance: conftest.Appliance, station: Station, count: int) -> list[socket.socket]:
    """`count` streams nobody reads, each with far more queued for it than it takes."""
    url = web_url(appliance)
    sockets = [stalled_stream(url, "*") for _ in range(count)]
    with EventStream(url, ("*",)) as reader:
        # the reader and the stalled streams ask alike: once the reader has a change, the
        # poller has seen them all, and once it has the big states event, so have they
        send_reading(station, 1)
        reader.wait("status", power(1), "the poller's run")
        station.send(station.call.DataTransfer(vendor_id="Test", data=BIG), timeout=20)
        reader.wait("states", lambda rows: any(r["val"] == BIG for r in rows), "the big states")
    assert all(0 < unread_bytes(s) < len(BIG) for s in sockets), [unread_bytes(s) for s in sockets]
    return sockets


def answered_meter_values(appliance: conftest.Appliance) -> int:
    """The appliance's answers to MeterValues, as its database keeps them."""
    return appliance.query(
        "SELECT count(*) FROM messages WHERE action = 'MeterValues'"
        " AND direction = 'out' AND message_type = 3"
    )[0][0]


def log_errors(appliance: conftest.Appliance) -> list[str]:
    return [
        line
        for line in appliance.log().splitlines()
        if " ERROR " in line or "Traceback" in line or "CRITICAL" in line
    ]


# ------------------------------------------------------- GET /api/events?states=


def test_a_stream_gets_the_states_its_glob_matches_and_only_those(start_appliance):
    appliance = start_appliance(web_config(password=False))
    with booted(Station(appliance, "CP-A", V16).open()) as station, client(appliance) as http:
        prefix = prefix_of(http, "CP-A")
        glob = f"{prefix}.meterValues.power*"
        url = web_url(appliance)
        with (
            EventStream(url, (glob,)) as mine,
            EventStream(url, ("CP-ELSEWHERE.*", f"{prefix}.info.vendor")) as other,
            EventStream(url) as plain,
        ):
            streams = (mine, other, plain)
            for stream in streams:
                assert stream.headers is not None
                assert stream.headers["content-type"].startswith("text/event-stream")
                stream.wait("status", lambda row: row["identity"] == "CP-A", "the snapshot")
            # a first reading: once every stream has its status, the poller has seen them
            send_reading(station, 1000, 1000)
            for stream in streams:
                stream.wait("status", power(1000), "the first reading's status")

            send_reading(station, 7200, 1100)
            rows = mine.wait(
                "states", has_state(f"{prefix}.meterValues.powerW", 7200), "powerW = 7200"
            )
            assert all(fnmatch.fnmatchcase(r["id"], glob) for r in rows), rows
            assert all({"id", "val", "ts"} <= set(r) for r in rows), rows
            # a third reading: its status comes after anything of the second reading's
            send_reading(station, 7300, 1200)
            for stream in streams:
                stream.wait("status", power(7300), "the third reading's status")
            mine.wait("states", has_state(f"{prefix}.meterValues.powerW", 7300), "7300")

        delivered = [row for rows in mine.named("states") for row in rows]
        assert delivered and all(fnmatch.fnmatchcase(r["id"], glob) for r in delivered)
        # the energy register changed in the same messages: there, but not matched
        energy = http.get("/api/charge-points/CP-A/states", params={"glob": "meterValues.*"})
        assert {"id": f"{prefix}.meterValues.energyWh", "val": 1200} in [
            {"id": s["id"], "val": s["val"]} for s in energy.json()
        ]
        assert not [r for r in delivered if "energy" in r["id"]], delivered
        # the other streams: every status, no states at all
        assert other.named("states") == [] and plain.named("states") == []
        assert [r["power_w"] for r in other.named("status") if r["power_w"]][-1] == 7300


def test_a_reading_right_after_the_stream_opens_reaches_it(start_appliance):
    """A page opens its stream, then the charge point reports: the page gets the reading.

    The poller runs about once a second; `page` tells when it last ran, so the stream
    `fresh` opens, and the reading lands, before its next run."""
    appliance = start_appliance(web_config(password=False))
    with booted(Station(appliance, "CP-A", V16).open()) as station, client(appliance) as http:
        prefix = prefix_of(http, "CP-A")
        url = web_url(appliance)
        with EventStream(url) as page:
            send_reading(station, 1000)
            page.wait("status", power(1000), "the poller's run")
            with EventStream(url, (f"{prefix}.meterValues.*",)) as fresh:
                send_reading(station, 2000)
                fresh.wait("status", power(2000), "the poller's run after the reading")
                fresh.wait(
                    "states",
                    has_state(f"{prefix}.meterValues.powerW", 2000),
                    "a states event with powerW = 2000, after the status event with it",
                    timeout=5,
                )


# --------------------------------------------------------- a stream nobody reads


def test_a_stream_nobody_reads_does_not_hold_up_the_charge_point(start_appliance):
    appliance = start_appliance(web_config(password=False))
    with booted(Station(appliance, "CP-A", V16).open()) as station, client(appliance) as http:
        sockets = stall(appliance, station, 3)
        try:
            # readings for a few of the poller's runs: each run queues more for the
            # stalled streams, and every reading is answered all the same
            before = answered_meter_values(appliance)
            for n in range(60):
                send_reading(station, 1000 + n, 5000 + n)  # each answered within 20 s
                time.sleep(0.05)
            conftest.wait_for(
                lambda: answered_meter_values(appliance) >= before + 60, 15, "60 answers stored"
            )
            assert answered_meter_values(appliance) == before + 60
            # the web side still serves everyone else
            conftest.wait_for(
                lambda: http.get("/api/charge-points/CP-A").json()["power_w"] == 1059,
                15,
                "the last reading in the API",
            )
            with EventStream(web_url(appliance)) as another:
                another.wait("status", power(1059), "a new page's snapshot")
                send_reading(station, 2000)
                another.wait("status", power(2000), "a live update on the new page")
        finally:
            for sock in sockets:
                sock.close()
    assert log_errors(appliance) == []


def test_sigterm_exits_while_a_stream_nobody_reads_is_open(start_appliance):
    """README "Set-up": SIGTERM "exits 0 within 5 s" — also while a browser that stopped
    reading holds an event stream open."""
    appliance = start_appliance(web_config(password=False))
    with booted(Station(appliance, "CP-A", V16).open()) as station:
        sockets = stall(appliance, station, 1)
        appliance.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = appliance.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            for sock in sockets:
                sock.close()
    tail = "\n".join(appliance.log().splitlines()[-3:])
    assert code is not None, f"still running 10 s after SIGTERM; the log ends:\n{tail}"
    assert code == 0, appliance.log()
    assert "database flushed; bye" in appliance.log()


# ------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), [])


@pytest.fixture
def trusting_charge_points(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    """Charge points (test_controls.Station) trust the test CA on wss://, as a wallbox
    with ca.crt installed does."""
    connect = websockets.connect

    def with_the_ca(uri: str, **kwargs: Any) -> Any:
        if uri.startswith("wss://"):
            kwargs.setdefault("ssl", pki.client_context())
        return connect(uri, **kwargs)

    monkeypatch.setattr(websockets, "connect", with_the_ca)


def cookie_attributes(header: str) -> dict[str, str]:
    """`Set-Cookie` attributes, lower-cased names: {"secure": "", "samesite": "strict"}."""
    parts = [part.strip() for part in header.split(";")[1:]]
    return {
        name.lower(): value.lower()
        for name, _, value in (part.partition("=") for part in parts)
        if name
    }


def set_cookie(response: httpx.Response, name: str) -> str:
    found = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    [header] = [v for v in found if v.startswith(f"{name}=")]
    return header


def test_with_tls_the_dashboard_speaks_https_only(start_appliance, pki, trusting_charge_points):
    appliance = start_appliance(tls_config(pki) + web_config())
    assert appliance.scheme == "wss"
    base = web_url(appliance)  # from the log line announcing the dashboard
    assert base.startswith("https://"), appliance.log()
    assert "web dashboard and API on https://" in appliance.log()
    port = int(base.rsplit(":", 1)[1])

    # the OCPP port's certificate
    served = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    certificate = (pki.folder / "server.crt").read_text()
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(certificate)
    # verified with the CA; not trusted without it
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{base}/api/charge-points", timeout=10)
    # https only: plain http gets no answer
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/api/charge-points", timeout=10)

    with (
        booted(Station(appliance, "CP-TLS", V16).open()) as station,
        httpx.Client(base_url=base, verify=pki.client_context(), timeout=30) as http,
    ):
        points = http.get("/api/charge-points")
        assert points.status_code == 200
        assert [p["identity"] for p in points.json()] == ["CP-TLS"]
        token_cookie = cookie_attributes(set_cookie(points, "oa_csrf"))
        assert "secure" in token_cookie and token_cookie.get("samesite") == "strict"

        assert http.get("/api/me").json() == {
            "logged_in": False,
            "via": None,
            "login_possible": True,
        }
        login = http.post("/api/login", json={"password": PASSWORD}, headers=csrf(http))
        assert login.status_code == 200, login.text
        session = cookie_attributes(set_cookie(login, "oa_session"))
        assert "secure" in session, session
        assert "httponly" in session and session.get("samesite") == "strict", session
        assert http.get("/api/me").json()["logged_in"] is True

        done = http.post(
            "/api/charge-points/CP-TLS/controls",
            json={"id": "control.availability", "value": 0},
            headers=csrf(http),
        )
        assert done.status_code == 200 and done.json()["ok"] is True, done.text
        assert any(c.action == "ChangeAvailability" for c in station.calls)
    assert log_errors(appliance) == []


def open_raw_stream(port: int) -> socket.socket:
    """`GET /api/events` on a socket of its own; returns once the answer's head is in."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: box\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "the stream closed before its head"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def test_open_event_streams_are_capped(start_appliance):
    """A script that opens stream after stream gets 503 once MAX_STREAMS are open, not
    the appliance's memory; a closed page makes room again."""
    from appliance.web.live import MAX_STREAMS

    appliance = start_appliance(web_config(password=False))
    url = web_url(appliance)
    port = int(url.rsplit(":", 1)[1])
    sockets = [open_raw_stream(port) for _ in range(MAX_STREAMS)]
    try:
        with client(appliance) as http:
            refused = http.get("/api/events")
            assert refused.status_code == 503, refused.text
            assert "too many open event streams" in refused.json()["error"]
            assert refused.headers["retry-after"] == "10"
            assert http.get("/api/charge-points").status_code == 200  # the rest serves on
            sockets.pop().close()

            def opens() -> bool:
                with http.stream("GET", "/api/events") as response:
                    return response.status_code == 200

            conftest.wait_for(opens, 10, "room for a new stream")
    finally:
        for sock in sockets:
            sock.close()
    assert log_errors(appliance) == []


def test_a_write_in_the_same_millisecond_as_the_last_one_seen_still_arrives(start_appliance):
    """Two commits can write states in the same millisecond (the time is taken when a
    message is handled, the commit comes later): a stream that has seen the first must
    still get the second. The two commits are made here by hand, with one timestamp."""
    appliance = start_appliance(web_config(password=False))
    with booted(Station(appliance, "CP-A", V16).open()) as station, client(appliance) as http:
        prefix = prefix_of(http, "CP-A")
        with EventStream(web_url(appliance), (f"{prefix}.probe.*",)) as stream:
            stream.wait("status", lambda row: row["identity"] == "CP-A", "the snapshot")
            same_ms = int(time.time() * 1000) + 60_000  # newer than anything written yet
            for name in ("first", "second"):
                with contextlib.closing(sqlite3.connect(appliance.db, timeout=10)) as db, db:
                    db.execute(
                        "INSERT INTO states (id, val, ack, ts, lc) VALUES (?, ?, 1, ?, ?)",
                        (f"{prefix}.probe.{name}", name, same_ms, same_ms),
                    )
                stream.wait(
                    "states", has_state(f"{prefix}.probe.{name}", name), f"the {name} write"
                )
        delivered = [row["id"] for rows in stream.named("states") for row in rows]
        assert delivered == [f"{prefix}.probe.first", f"{prefix}.probe.second"], delivered
        station.heartbeat()
