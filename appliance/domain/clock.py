"""Time, from two clocks that are never mixed up (README "The database", "`transactions`").

The charge point's clock: its timestamps are parsed for ordering and distrusted when
implausible (`time_suspect`, `stamp`, `newer`).

The appliance's own clock, behind one seam: `wall()` (the system's real-time clock, in
seconds since the epoch) and `synchronised()` (whether the system says that clock is
right). Everything that stamps a row or answers `currentTime` reads them. Durations and
timeouts never do: they use the monotonic clock (trio's deadlines, `time.monotonic`).

The wall clock may step: a Raspberry Pi without a real-time clock boots with the time of
its last shutdown and jumps forward by days when NTP answers; an administrator sets it
back by hours. A step is noticed as the wall clock and the monotonic clock diverging
between two checks (`check`: once a second, and before a session event is stamped),
logged once, and handed to whoever subscribed (`subscribe`: the appliance moves its
running sessions onto the new clock before any session event is stamped on it).

While the system says its clock is not synchronised, `current_time()` — what
BootNotification and Heartbeat answer — is the newest plausible time the appliance has
seen (its own clock, its previous run's last sign of life, the charge points' clocks),
so that it never teaches a charge point a time it knows may be days behind.

Tests move the clock without touching the appliance's parts: `$OCPP_APPLIANCE_TEST_CLOCK`
names a TOML file the process reads whenever it changes, with `offset_sec` (added to the
system's clock) and `synchronised` (true/false, instead of what the system says). Unset,
as in production, nothing but the system is read.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

log = logging.getLogger("appliance")

# README "`transactions`": a timestamp is implausible before 2010 or more than a day ahead.
EARLIEST_PLAUSIBLE = datetime(2010, 1, 1, tzinfo=UTC).timestamp()
MAX_AHEAD_SEC = 24 * 3600

#: the environment variable naming the test clock's file (see the module's docstring)
SEAM_ENV = "OCPP_APPLIANCE_TEST_CLOCK"
#: wall and monotonic clock diverging by more than this between two readings is a step
STEP_SEC = 2.0
#: ... plus what NTP may slew in between (the kernel slews at most 500 ppm)
SLEW = 0.001
#: a reading whose two monotonic bounds are further apart than this (the thread was
#: descheduled between them) is not compared
BRACKET_SEC = 0.25
#: systemd-timesyncd's flag: the directory exists where it runs; the file once it synced
TIMESYNC_DIR = "/run/systemd/timesync"
TIMESYNC_FLAG = TIMESYNC_DIR + "/synchronized"
#: the kernel's estimated maximum error below which the clock is synchronised (µs); the
#: rule of systemd's `timedatectl` ("System clock synchronized"), set by any NTP daemon
MAX_ERROR_SYNCED_US = 16_000_000
#: while unsynchronised, a charge point's clock counts as evidence of the time if it is
#: after 2010 and less than this ahead of what the appliance itself knows
MAX_TAUGHT_AHEAD_SEC = 366 * 24 * 3600

# --------------------------------------------------------------- the seam


class _Timex(ctypes.Structure):
    """The head of the kernel's `struct timex` (adjtimex(2)); the rest is room."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 256),
    ]


def _adjtimex() -> Callable[..., int] | None:
    """The C library's adjtimex; None where there is none (not Linux)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.POINTER(_Timex)]
    function.restype = ctypes.c_int
    return function


_ADJTIMEX = _adjtimex()


def system_synchronised() -> bool:
    """Whether the system says its clock is synchronised: not where systemd-timesyncd
    runs and has not synced yet (`/run/systemd/timesync/synchronized` absent), nor where
    the kernel's maximum error is 16 s or more (adjtimex; read-only, no privileges: the
    kernel says so at boot and after the clock is set by hand, until an NTP daemon — any:
    timesyncd, chrony, ntpd — disciplines it). Where neither can be asked (no adjtimex),
    the clock is taken as synchronised: nothing changes where nothing is known."""
    if os.path.isdir(TIMESYNC_DIR) and not os.path.exists(TIMESYNC_FLAG):
        return False
    if _ADJTIMEX is None:
        return True
    timex = _Timex()
    if _ADJTIMEX(ctypes.byref(timex)) < 0:
        return True
    return bool(timex.maxerror < MAX_ERROR_SYNCED_US)


class Moved(NamedTuple):
    """What the test clock's file says."""

    offset: float = 0.0
    #: None: what the system says
    synchronised: bool | None = None


class _Seam:
    """The test clock's file, read again whenever it changes (its inode, size or
    modification time)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self.moved = Moved()

    def read(self) -> Moved:
        try:
            info = os.stat(self.path)
        except OSError:
            self._key, self.moved = None, Moved()
            return self.moved
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        if key != self._key:
            self._key = key
            try:
                with open(self.path, "rb") as file:
                    found = tomllib.load(file)
                offset = float(found.get("offset_sec", 0.0))
                synchronised = found.get("synchronised")
                if synchronised is not None and not isinstance(synchronised, bool):
                    raise ValueError("synchronised must be true or false")
                self.moved = Moved(offset, synchronised)
            except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
                log.warning("clock: %s: %s: ignored", self.path, exc)
                self.moved = Moved()
        return self.moved


# ---------------------------------------------------------------- the clock


_STEADY = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
_time = time.time
_time_ns = time.time_ns
_gettime = time.clock_gettime


def elapsed() -> float:
    """Seconds on a clock that only moves forward with real time, also while the machine
    is suspended (CLOCK_BOOTTIME where there is one): what a step is measured against."""
    return _gettime(_STEADY)


class Step(NamedTuple):
    """The wall clock stepped: from `before` (seconds since the epoch, the last reading
    before the step) by `by` seconds (negative: back)."""

    before: float
    by: float


class Clock:
    """The appliance's wall clock and what it knows about it; one per process (`CLOCK`)."""

    def __init__(self, seam: str | None = None) -> None:
        self._seam = _Seam(seam) if seam else None
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Step], None]] = []
        self._last_wall = self._now()
        self._at = elapsed()
        #: wall − elapsed at the last check
        self._offset = self._last_wall - self._at
        #: the newest plausible time known, as (that time − elapsed() when it was known)
        self._known = -float("inf")
        #: the appliance's own evidence: its clock and its previous run
        self._own = -float("inf")

    @property
    def seam(self) -> str | None:
        """The test clock's file, if `$OCPP_APPLIANCE_TEST_CLOCK` names one."""
        return self._seam.path if self._seam else None

    def _now(self) -> float:
        if self._seam is None:
            return _time()
        return _time() + self._seam.read().offset

    def wall(self) -> float:
        """The wall clock, in seconds since the epoch. On the hot path (every row is
        stamped with it): one system call, no check."""
        return _time() if self._seam is None else self._now()

    def check(self) -> float:
        """Notice a step of the wall clock since the last check (wall and monotonic clock
        diverging by more than STEP_SEC): logged once, handed to the subscribers before
        anything else reads the new time on this thread. Returns the wall clock. Called
        once a second (app `watch_clock`) and before a session event is stamped."""
        at = _gettime(_STEADY)
        now = self.wall()
        drift = now - at - self._offset
        if -STEP_SEC <= drift <= STEP_SEC:
            self._offset, self._at, self._last_wall = now - at, at, now
            return now
        with self._lock:
            while True:
                start = elapsed()
                now = self.wall()
                at = elapsed()
                if at - start < BRACKET_SEC:
                    break
            offset = now - at
            by = offset - self._offset
            if abs(by) > STEP_SEC + SLEW * (at - self._at):
                step = Step(self._last_wall + (at - self._at), by)
                log.warning(
                    "clock: the clock stepped %s by %s (%s → %s)",
                    "forward" if by > 0 else "back",
                    span(by),
                    iso(step.before),
                    iso(now),
                )
                for subscriber in list(self._subscribers):
                    try:
                        subscriber(step)
                    except Exception:
                        log.exception("clock: a step could not be handled")
            self._offset, self._at, self._last_wall = offset, at, now
            return now

    def subscribe(self, subscriber: Callable[[Step], None]) -> Callable[[], None]:
        """Call `subscriber(step)` on every step, from the thread that notices it (the
        event loop's: `check`); returns the function that ends it."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def synchronised(self) -> bool:
        if self._seam is not None:
            said = self._seam.read().synchronised
            if said is not None:
                return said
        return system_synchronised()

    def learn(self, seconds: float, own: bool = False) -> None:
        """A time that was true at some moment before now: a charge point's timestamp, or
        (`own`) the appliance's last sign of life of its previous run. Kept if plausible:
        after 2010 and less than MAX_TAUGHT_AHEAD_SEC ahead of the appliance's own clock
        and runs (a charge point's clock never vouches for another's)."""
        at = _gettime(_STEADY)
        if seconds - at <= self._known or seconds < EARLIEST_PLAUSIBLE:
            return
        if seconds > max(self.wall(), self._own + at) + MAX_TAUGHT_AHEAD_SEC:
            return
        self._known = seconds - at
        if own:
            self._own = max(self._own, seconds - at)

    def newest(self) -> float:
        """The newest plausible time the appliance knows: its own clock, or later what it
        learnt, moved on by the time since (`learn`)."""
        return max(self.wall(), self._known + elapsed())

    def current_time(self) -> float:
        """What the appliance tells a charge point the time is (BootNotification,
        Heartbeat): its clock once the system says it is synchronised; until then the
        newest plausible time it knows."""
        return self.wall() if self.synchronised() else self.newest()


CLOCK = Clock(os.environ.get(SEAM_ENV) or None)
#: the appliance's clock, in seconds since the epoch
wall = CLOCK.wall
#: notice a step of the clock (`Clock.check`); returns the wall clock
check = CLOCK.check


if CLOCK.seam is None:

    def wall_ms() -> int:
        """The appliance's clock in integer milliseconds since the epoch (the `ts`-style
        columns)."""
        return _time_ns() // 1_000_000

else:

    def wall_ms() -> int:
        """The appliance's clock, moved by the test clock, in ms since the epoch."""
        return int(wall() * 1000)


def synchronised() -> bool:
    """Whether the appliance's clock is synchronised, as the system says (or the test
    clock's file)."""
    return CLOCK.synchronised()


def span(seconds: float) -> str:
    """A length of time for people, in its two largest units: "2 d 3 h", "3 h 20 min",
    "5 min 3 s", "42 s"."""
    left = round(abs(seconds))
    units: list[tuple[int, str]] = []
    for name, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count or units:
            units.append((count, name))
    shown = [f"{count} {name}" for count, name in units[:2] if count]
    return " ".join(shown) or "0 s"


def iso(seconds: float) -> str:
    """A time as OCPP wants it: ISO 8601, UTC, milliseconds."""
    whole = int(seconds // 1)
    ms = min(999, int((seconds - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def iso_now() -> str:
    """The appliance's clock as OCPP wants it: ISO 8601, UTC, milliseconds."""
    return iso(wall())


def current_time() -> str:
    """`currentTime` of BootNotification and Heartbeat (`Clock.current_time`)."""
    return iso(CLOCK.current_time())


# ------------------------------------------------------- the charge point's clock


def parse(stamp: object) -> float | None:
    # one message repeats its timestamp for every sampled value: parse each text once
    return _parse(stamp) if isinstance(stamp, str) else None


@lru_cache(maxsize=1024)
def _parse(stamp: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 timestamp (no zone: UTC), None if unreadable."""
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def time_suspect(stamp: object) -> bool:
    seconds = parse(stamp)
    if seconds is None:
        return True
    CLOCK.learn(seconds)
    return not (EARLIEST_PLAUSIBLE <= seconds <= wall() + MAX_AHEAD_SEC)


class Stamp(NamedTuple):
    """When a reading was taken, as far as each clock knows: the charge point's time
    where it is plausible, and the appliance's time when it arrived."""

    device: float | None
    received: float


def stamp(text: object, received: float) -> Stamp:
    seconds = parse(text)
    if seconds is not None:
        CLOCK.learn(seconds)
    if seconds is None or not (EARLIEST_PLAUSIBLE <= seconds <= received + MAX_AHEAD_SEC):
        seconds = None
    return Stamp(seconds, received)


def newer(new: Stamp, known: Stamp) -> bool:
    """Whether `new` is not older than `known`. Like is compared with like (README
    "Time"): the charge point's clock only with itself; where either lacks a plausible
    one, the order of arrival decides (a clock a few seconds behind the appliance's
    never hides a fresh reading)."""
    if new.device is not None and known.device is not None:
        return new.device >= known.device
    return new.received >= known.received
