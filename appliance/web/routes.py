"""The dashboard's pages and its JSON API, as a Starlette application (README "Web
dashboard and API"). Every database call runs in a worker thread under one capacity
limiter; the pages are rendered by Jinja2 and use the same API as scripts do."""

from __future__ import annotations

import csv
import io
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette_csrf import CSRFMiddleware

from appliance.config import Config
from appliance.domain import clock
from appliance.domain.secrets import MASK
from appliance.errors import DatabaseUnavailable, ReaderError
from appliance.store.queries import explain, write_controls
from appliance.store.web_queries import WebReader
from appliance.web.access import SESSION_MAX_AGE_SEC, Access, Login
from appliance.web.live import MAX_STREAMS, STREAM_BUFFER, Live, sse

log = logging.getLogger("appliance")

HERE = Path(__file__).parent
RANGES_MS = {"hour": 3_600_000, "day": 86_400_000, "week": 7 * 86_400_000}
#: what a control write may touch, relative to the charge point: the controls, 1.6
#: configuration keys and the 2.x Device Model (the trigger refuses what is read-only)
WRITABLE = re.compile(r"^(control|config|dm)\.[^*?\[\]]+$")
#: SSE keep-alive: a comment line now and then keeps proxies and phones from closing
KEEPALIVE_SEC = 15.0
#: the load balancer's health check (README "A big site on several processes")
HEALTHZ = "/healthz"
#: a 503 of /healthz says when to ask again: HAProxy's own interval in the sample
HEALTHZ_RETRY_SEC = 2
SESSION_COOKIE = "oa_session"
CSRF_COOKIE = "oa_csrf"
CSRF_HEADER = "x-csrftoken"


class Web:
    """What the routes share: the config in force, the reader, the live feed."""

    def __init__(
        self,
        config: Callable[[], Config],
        reader: WebReader,
        live: Live,
        access: Access,
        limiter: trio.CapacityLimiter,
        unready: Callable[[], str | None] = lambda: None,
        status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.config = config
        #: why this process should get no new charge points now, or None (`/healthz`)
        self.unready = unready
        #: the process's own state (`/api/status`; its `notice` rides on a 200 of /healthz)
        self.status = status
        self.reader = reader
        self.live = live
        self.access = access
        self.limiter = limiter
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["ago"] = _ago
        self.templates.env.filters["localtime"] = _localtime
        self.templates.env.filters["lasting"] = _lasting
        self.templates.env.filters["upstreams"] = _upstreams
        # a secret's value is shown as this (README "What is protected"): its field starts
        # empty, so that "Set" never sends the mask to the charge point
        self.templates.env.globals["MASK"] = MASK

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ------------------------------------------------------------------ access

    async def user(self, request: Request) -> str | None:
        """ "token", "session" or None. With an Authorization header only the token
        counts (and CSRF does not apply: a browser never adds that header by itself)."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            host = request.client.host if request.client else "?"
            if scheme.lower() == "bearer" and await self.access.token(host, token.strip()):
                return "token"
            raise HTTPException(401, "wrong or unknown API token", {"WWW-Authenticate": "Bearer"})
        if self.access.session_valid(request.session):
            return "session"
        return None

    async def require(self, request: Request) -> str:
        who = await self.user(request)
        if who is None:
            hint = "log in" if self.access.login_possible else _NO_PASSWORD_HINT
            raise HTTPException(401, f"this needs a login: {hint}")
        return who


_NO_PASSWORD_HINT = (
    "the dashboard is read-only until [web] password_hash is set"
    " (ocpp-appliance hash-password, then kill -HUP)"
)


def _iso_ms(text: Any) -> int | None:
    """ISO 8601 (UTC unless it says) as ms since the epoch; None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _ms(text: str | None, default: int) -> int:
    """A time in a query: ms since the epoch, or ISO 8601 (UTC unless it says)."""
    if text is None or text == "":
        return default
    if text.lstrip("-").isdigit():
        return int(text)
    parsed = _iso_ms(text)
    if parsed is None:
        raise HTTPException(400, f"not a time: {text!r} (ms since the epoch or ISO 8601)")
    return parsed


def _int(text: str | None, default: int, name: str) -> int:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None


def _now_ms() -> int:
    return clock.wall_ms()


#: "until" left open: also what arrived after what the clock says now (it stepped back)
NO_END_MS = 2**62


def _duration(ms: int | float) -> str:
    """A duration: "42 s", "12 min", "1 h 05 min", "2 d 03 h" (app.js's `duration` says
    it the same way)."""
    minutes, seconds = divmod(int(max(0, ms) / 1000), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min" if minutes else f"{seconds} s"


def _lasting(ms: Any) -> str:
    """How long since `ms`, for a running session."""
    return _duration(_now_ms() - ms) if isinstance(ms, int | float) else ""


def _upstreams(upstreams: Any) -> str:
    """README "A second backend": each upstream's state in a line (app.js `upstreams`
    writes the same text live)."""
    said = []
    for name, link in sorted((upstreams or {}).items()):
        text = f"{name}: connected" if link.get("connected") else f"{name}: not connected"
        if not link.get("connected") and link.get("reason"):
            text += f" ({link['reason']})"
        if link.get("waiting"):
            text += f", {link['waiting']} waiting"
        said.append(text)
    return " · ".join(said)


def _ago(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    seconds = max(0, (_now_ms() - ms) / 1000)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 129600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _localtime(value: Any) -> str:
    """A time (ms, or ISO 8601 as a charge point sent it) as `<time datetime="…Z">`
    with UTC text: the server cannot know the viewer's time zone, so app.js rewrites it
    in the browser's; without JavaScript the text says UTC. What is not a time is shown
    as it is."""
    if value is None or value == "":
        return "-"
    ms = value if isinstance(value, int | float) else _iso_ms(value)
    if ms is None:
        return str(value)
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    iso = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup(f'<time datetime="{iso}">{escape(text)}</time>')


def _session_row(session: dict[str, Any], point: dict[str, Any], current: str) -> dict[str, Any]:
    """A row of the page's session table: its duration, or since when it runs (ms; by
    the charge point's clock where it is plausible, else by the appliance's, as
    `tx_started`), and whether it is the running session of `charge_point_status`."""
    started, stopped = _iso_ms(session["started_at"]), _iso_ms(session["stopped_at"])
    row = {**session, "duration": None, "since": None, "current": False}
    if session["stopped_at"] is None:
        if point["tx_active"]:
            suspect = session["time_suspect"] or started is None
            row["since"] = session["received_at"] if suspect else started
            row["current"] = session["transaction_id"] == current
    elif session["time_suspect"]:
        # a clock set while the session ran makes the charge point's difference wrong
        ended = session["updated_at"] or session["received_at"]
        row["duration"] = _duration(ended - session["received_at"])
    elif started is not None and stopped is not None and stopped >= started:
        row["duration"] = _duration(stopped - started)
    return row


def build(web: Web, tls: bool) -> ASGIApp:
    """The ASGI application: sessions outside, CSRF (unless a Bearer token) inside."""

    async def charge_point_or_404(identity: str) -> dict[str, Any]:
        found = await web.run(web.reader.charge_point, identity)
        if found is None:
            raise HTTPException(404, f"no charge point {identity!r} has ever connected")
        return found

    # ------------------------------------------------------------------ pages

    async def page(request: Request, name: str, **context: Any) -> Response:
        who = await web.user(request)
        return web.templates.TemplateResponse(
            request,
            name,
            {
                "logged_in": who is not None,
                "login_possible": web.access.login_possible,
                **context,
            },
        )

    async def overview(request: Request) -> Response:
        points = await web.run(web.reader.charge_points)
        refused = await web.run(web.reader.refused, _now_ms() - RANGES_MS["week"])
        known = {p["identity"] for p in points}
        refused = [r for r in refused if r["identity"] not in known or r["reason"]]
        return await page(request, "overview.html", points=points, refused=refused)

    async def charge_point_page(request: Request) -> Response:
        identity = request.path_params["identity"]
        point = await charge_point_or_404(identity)
        prefix = point["prefix"]
        states = await web.run(web.reader.states, f"{prefix}.*")
        values = {s["id"][len(prefix) + 1 :]: s for s in states}
        # the newest, whatever the clock says now: after it stepped back, the latest
        # sessions arrived "later" than now
        sessions = await web.run(web.reader.sessions, identity, 0, NO_END_MS, 20)
        last_id = values.get("transactions.last.id")
        current = "" if last_id is None or last_id["val"] is None else str(last_id["val"])
        sessions = [_session_row(s, point, current) for s in sessions]
        log_rows = await web.run(web.reader.connection_log, identity, None, 30)
        writable = [
            (name, s)
            for name, s in values.items()
            if s["writable"] and name.startswith(("config.", "dm."))
        ]
        return await page(
            request,
            "charge_point.html",
            point=point,
            values=values,
            sessions=sessions,
            log_rows=log_rows,
            writable=writable,
        )

    async def login_page(request: Request) -> Response:
        return await page(request, "login.html")

    # -------------------------------------------------------------------- API

    async def me(request: Request) -> Response:
        who = await web.user(request)
        return JSONResponse(
            {"logged_in": who is not None, "via": who, "login_possible": web.access.login_possible}
        )

    async def login(request: Request) -> Response:
        try:
            body = await request.json()
            password = body["password"]
            assert isinstance(password, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise HTTPException(400, 'send {"password": "…"} as JSON') from None
        host = request.client.host if request.client else "?"
        result = await web.access.login(host, password)
        if result is not Login.OK:
            status = {Login.WRONG: 401, Login.BUSY: 429, Login.NO_PASSWORD: 409}[result]
            return JSONResponse({"error": result.value}, status)
        request.session.clear()
        request.session.update({"user": "admin", "pw": web.access.fingerprint()})
        return JSONResponse({"logged_in": True})

    async def logout(request: Request) -> Response:
        request.session.clear()
        return JSONResponse({"logged_in": False})

    async def charge_points(request: Request) -> Response:
        return JSONResponse(await web.run(web.reader.charge_points))

    async def status(request: Request) -> Response:
        """The process's own state from memory (no database read): what /healthz says,
        the writer's health, the disk guard (README "Storage design")."""
        return JSONResponse(web.status(), headers={"Cache-Control": "no-store"})

    async def charge_point(request: Request) -> Response:
        return JSONResponse(await charge_point_or_404(request.path_params["identity"]))

    async def states(request: Request) -> Response:
        point = await charge_point_or_404(request.path_params["identity"])
        pattern = request.query_params.get("glob", "*")
        rows = await web.run(web.reader.states, f"{point['prefix']}.{pattern}")
        return JSONResponse(rows)

    async def sessions(request: Request) -> Response:
        identity = request.path_params.get("identity") or request.query_params.get("identity")
        now = _now_ms()
        since = _ms(request.query_params.get("since"), now - 31 * RANGES_MS["day"])
        until = _ms(request.query_params.get("until"), NO_END_MS)
        limit = _int(request.query_params.get("limit"), 1000, "limit")
        rows = await web.run(web.reader.sessions, identity, since, until, limit)
        if request.query_params.get("format") == "csv" or request.url.path.endswith(".csv"):
            out = io.StringIO()
            columns = list(rows[0]) if rows else ["identity", "transaction_id"]
            writer = csv.DictWriter(out, columns)
            writer.writeheader()
            writer.writerows(rows)
            name = f"sessions-{identity or 'all'}.csv".replace("/", "_").replace('"', "_")
            return Response(
                out.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        return JSONResponse(rows)

    async def meter_values(request: Request) -> Response:
        identity = request.path_params["identity"]
        await charge_point_or_404(identity)
        query = request.query_params
        measurand = query.get("measurand", "Power.Active.Import")
        now = _now_ms()
        span = RANGES_MS.get(query.get("range", "hour"))
        if span is None:
            raise HTTPException(400, f"range is one of {', '.join(RANGES_MS)}")
        until = _ms(query.get("until"), now + 1)
        since = _ms(query.get("since"), until - span)
        points = _int(query.get("points"), 500, "points")
        rows = await web.run(web.reader.series, identity, measurand, since, until, points)
        ends = await web.run(web.reader.session_ends, identity, since, until)
        return JSONResponse(
            {"identity": identity, "measurand": measurand, "since": since, "until": until,
             "points": rows, "ends": ends}
        )  # fmt: skip

    async def connection_log(request: Request) -> Response:
        query = request.query_params
        identity = request.path_params.get("identity") or query.get("identity")
        limit = _int(query.get("limit"), 100, "limit")
        rows = await web.run(web.reader.connection_log, identity, query.get("event"), limit)
        return JSONResponse(rows)

    async def refused(request: Request) -> Response:
        since = _ms(request.query_params.get("since"), _now_ms() - RANGES_MS["week"])
        return JSONResponse(await web.run(web.reader.refused, since))

    async def frames(request: Request) -> Response:
        await web.require(request)
        identity = request.path_params["identity"]
        query = request.query_params
        limit = _int(query.get("limit"), 50, "limit")
        rows = await web.run(web.reader.frames, identity, query.get("action") or None, limit)
        actions = await web.run(web.reader.actions, identity)
        return JSONResponse({"actions": actions, "frames": rows})

    async def control(request: Request) -> Response:
        """Write controls as `ocpp-appliance set` does, wait for the outcome."""
        await web.require(request)
        point = await charge_point_or_404(request.path_params["identity"])
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
        if isinstance(body, dict) and "id" in body:
            writes = [(body["id"], body.get("value"))]
        elif isinstance(body, dict) and isinstance(body.get("writes"), dict):
            writes = list(body["writes"].items())
        else:
            raise HTTPException(
                400, 'send {"id": "control.chargeLimit", "value": 16} or {"writes": {…}}'
            )
        for name, value in writes:
            if not isinstance(name, str) or not WRITABLE.match(name):
                raise HTTPException(400, f"{name!r}: only control.*, config.* and dm.* are written")
            if isinstance(value, dict | list):
                raise HTTPException(400, f"{name}: write JSON as a string")
        ids = [f"{point['prefix']}.{name}" for name, _ in writes]
        path = web.config().database_path
        started = _now_ms()
        try:
            values = [(i, v) for i, (_, v) in zip(ids, writes, strict=True)]
            seq = await web.run(write_controls, path, values)
        except DatabaseUnavailable as exc:  # locked, full, damaged: not this request's fault
            return JSONResponse({"ok": False, "error": str(exc)}, 503, {"Retry-After": "10"})
        except ReaderError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, 400)
        who = "token" if "authorization" in request.headers else "session"
        log.info("web: control %s written (by %s)", ", ".join(ids), who)
        deadline = trio.current_time() + web.config().call_timeout_sec + 10
        while await web.run(web.reader.queued, seq):
            if trio.current_time() > deadline:
                return JSONResponse({"ok": None, "error": "no outcome yet", "ids": ids}, 504)
            await trio.sleep(0.1)
        outcomes = []
        for state_id in ids:
            found = await web.run(web.reader.outcome, state_id)
            if found is not None and found["ts"] >= started - 1000:
                outcomes.append(found)
        ok = all(o["ok"] for o in outcomes) if outcomes else True
        last = outcomes[-1] if outcomes else {}
        return JSONResponse(
            {"ok": ok, "error": last.get("error"), "outcomes": outcomes}, 200 if ok else 422
        )

    async def events(request: Request) -> Response:
        """Server-Sent Events: a snapshot of every charge point first, then each
        change (`status`, `connection`, and `states` for `?states=GLOB`)."""
        if len(web.live.streams) >= MAX_STREAMS:
            error = f"too many open event streams (at most {MAX_STREAMS}); try again later"
            return JSONResponse({"error": error}, 503, headers={"Retry-After": "10"})
        globs = tuple(request.query_params.getlist("states"))
        # what is written from now on is this page's, whenever the poller runs next
        since, written = await web.run(web.reader.newest_states) if globs else (0, set())
        snapshot = await web.run(web.reader.charge_points)
        stream, receive = web.live.open(globs, since, written)

        async def body() -> AsyncIterator[str]:
            try:
                yield "".join(sse("status", row) for row in snapshot)
                while True:
                    with trio.move_on_after(KEEPALIVE_SEC) as waited:
                        try:
                            texts = [await receive.receive()]
                        except trio.EndOfChannel:
                            return
                    if waited.cancelled_caught:
                        yield ": keep-alive\n\n"
                        continue
                    # what else is waiting goes out with it: one write per look at the
                    # database, not one per charge point
                    while len(texts) < STREAM_BUFFER:
                        try:
                            texts.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    yield "".join(texts)
            finally:
                web.live.close(stream)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)
        return web.templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail, "logged_in": False,
             "login_possible": web.access.login_possible},
            status_code=exc.status_code,
        )  # fmt: skip

    async def database_error(request: Request, exc: Exception) -> Response:
        """A read the database refused (damaged, a disk error, locked for longer than
        the busy timeout): 503 with the reason, one log line, never a traceback page."""
        reason = explain(web.config().database_path, exc, "read")
        log.warning("web: %s %s: %s", request.method, request.url.path, reason)
        return await error(request, HTTPException(503, reason, {"Retry-After": "10"}))

    cp = "/api/charge-points/{identity}"
    routes = [
        Route("/", overview),
        Route("/cp/{identity}", charge_point_page),
        Route("/login", login_page),
        Route("/api/me", me),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/status", status),
        Route("/api/charge-points", charge_points),
        Route(cp, charge_point),
        Route(f"{cp}/states", states),
        Route(f"{cp}/sessions", sessions),
        Route(f"{cp}/sessions.csv", sessions),
        Route(f"{cp}/meter-values", meter_values),
        Route(f"{cp}/connection-log", connection_log),
        Route(f"{cp}/frames", frames),
        Route(f"{cp}/controls", control, methods=["POST"]),
        Route("/api/sessions", sessions),
        Route("/api/sessions.csv", sessions),
        Route("/api/connection-log", connection_log),
        Route("/api/refused", refused),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: error, sqlite3.Error: database_error}
    )
    csrf = CSRFMiddleware(
        app,
        web.access.csrf_secret,
        cookie_name=CSRF_COOKIE,
        header_name=CSRF_HEADER,
        cookie_secure=tls,
        cookie_samesite="strict",
    )
    checked = _CsrfUnlessBearer(app, csrf)
    sessions_app = SessionMiddleware(
        checked,
        web.access.session_secret,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_SEC,
        same_site="strict",
        https_only=tls,
    )
    return _SecurityHeaders(_Healthz(sessions_app, web.unready, lambda: web.status().get("notice")))


class _Healthz:
    """`/healthz`: 200 `ok`, or 503 with the reason in one line. Answered before the
    session and CSRF layers, from what the process knows in memory: a check every 2 s
    from each load balancer costs no cookie, no signature and no database read. Open to
    all, like the other reads: it names a state, never a secret.

    The disk guard is not a 503 (README "Storage design"): the process stores what
    matters, and the processes of a site share one disk, so a 503 would take them all
    out at once. A 200 then says `ok; disk guard on: …` on its one line."""

    def __init__(
        self,
        app: ASGIApp,
        unready: Callable[[], str | None],
        notice: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.app = app
        self.unready = unready
        self.notice = notice

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEALTHZ:
            await self.app(scope, receive, send)
            return
        why = self.unready()
        headers = {"Cache-Control": "no-store"}
        if why is None:
            notice = self.notice()
            text = "ok" if notice is None else f"ok; {' '.join(notice.split())}"
            response = PlainTextResponse(text, headers=headers)
        else:
            headers["Retry-After"] = str(HEALTHZ_RETRY_SEC)
            response = PlainTextResponse(" ".join(why.split()), 503, headers)
        await response(scope, receive, send)


class _CsrfUnlessBearer:
    """CSRF protection (starlette-csrf's double-submit cookie) on every request that a
    browser could send by itself; a request with an Authorization header is a script's
    (browsers never add one to a cross-site request) and is checked by its token."""

    def __init__(self, app: ASGIApp, csrf: ASGIApp) -> None:
        self.app = app
        self.csrf = csrf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(k == b"authorization" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
        else:
            await self.csrf(scope, receive, send)


#: no inline script anywhere: the pages load /static/app.js; uPlot sets styles from JS
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'self'"
)


class _SecurityHeaders:
    """The headers every answer carries (a browser's defences: no framing, no sniffing,
    no inline script, no referrer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", _CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
            await send(message)

        await self.app(scope, receive, with_headers)
