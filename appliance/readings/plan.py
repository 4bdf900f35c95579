"""What to write so that a charge point measures what `[readings]` asks for: pure.

README "Readings the appliance asks for": after each boot the settings the charge point
reported are compared with the config; only what differs is written, never a setting it
reports read-only or does not report at all, never one whose earlier write it did not keep.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from appliance.config import Readings
from appliance.domain import Setting
from appliance.domain.meter import DEFAULT_MEASURAND

#: the roles whose value is a list of measurands (README: the sampled list is what the
#: config says; the others need only hold the energy register)
SAMPLED = "measurands"
REGISTER_LISTS = ("endedMeasurands", "alignedMeasurands")
INTERVALS = {"interval": "interval_sec", "alignedInterval": "aligned_interval_sec"}
ALIGNED = ("alignedMeasurands", "alignedInterval")
#: the order of the writes
ROLES = ("measurands", "interval", "endedMeasurands", "alignedMeasurands", "alignedInterval")
#: answers that mean the value is taken (RebootRequired: at the next reboot, which the
#: appliance never causes)
TAKEN = frozenset({"Accepted", "RebootRequired"})


@dataclass(slots=True)
class Memory:
    """What the appliance learnt of one setting of one charge point in this run."""

    #: the value last written and accepted
    written: str | None = None
    #: measurands the charge point refused in this setting's list
    refused: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Step:
    """One setting to write: the value wanted, and for the sampled list whether a refusal
    is searched for the measurand the charge point does not take."""

    role: str
    setting: Setting
    value: str
    measurands: tuple[str, ...] = ()
    search: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    """A setting left alone, and why (logged)."""

    role: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Terms:
    """One version's words: role → setting name, list → its length setting, measurands."""

    settings: dict[str, str]
    list_lengths: dict[str, str]
    measurands: frozenset[str]


def plan(
    reported: list[Setting], wanted: Readings, terms: Terms, memory: dict[str, Memory]
) -> tuple[list[Step], list[Skip]]:
    """The writes that make `reported` match `wanted`, and the settings left alone."""
    by_name = {s.name: s for s in reported}
    steps: list[Step] = []
    skipped: list[Skip] = []
    for role in ROLES:
        name = terms.settings.get(role)
        if name is None:
            continue  # this version has no such setting
        if role in ALIGNED and wanted.aligned_interval_sec == 0:
            continue  # README: aligned_interval_sec = 0 leaves them alone
        setting = by_name.get(name)
        if setting is None:
            skipped.append(Skip(role, name, "not reported by the charge point"))
            continue
        if not setting.writable:
            skipped.append(Skip(role, name, "read-only"))
            continue
        remembered = memory.get(name, Memory())
        step = _step(role, setting, wanted, terms, by_name, remembered)
        if step is None:
            continue
        if remembered.written == step.value:
            # written and accepted earlier in this run, reported otherwise now: it did not
            # keep it (or reboots to its default); writing again could loop
            reason = f"did not keep {step.value!r} written earlier; not written again"
            skipped.append(Skip(role, name, reason))
            continue
        steps.append(step)
    return steps, skipped


def _step(
    role: str,
    setting: Setting,
    wanted: Readings,
    terms: Terms,
    by_name: dict[str, Setting],
    memory: Memory,
) -> Step | None:
    current = setting.value
    if role in INTERVALS:
        seconds = getattr(wanted, INTERVALS[role])
        if setting.max_limit is not None:
            seconds = min(seconds, int(setting.max_limit))
        if _seconds(current) == seconds:
            return None
        return Step(role, setting, str(seconds))
    have = members(current)
    if role == SAMPLED:
        names = [m for m in wanted.measurands if _takes(setting, terms, m)]
        names = [m for m in names if m not in memory.refused]
        names = _cut(names, setting, by_name, terms)
        if not names or set(names) == set(have):
            return None
        return Step(role, setting, ",".join(names), tuple(names), search=True)
    # a list that needs only the energy register: what it has, and the register
    if DEFAULT_MEASURAND in have or not _takes(setting, terms, DEFAULT_MEASURAND):
        return None
    names = _cut([DEFAULT_MEASURAND, *have], setting, by_name, terms)
    return Step(role, setting, ",".join(names), tuple(names))


def members(value: str | None) -> list[str]:
    """A CSL / MemberList value as its items."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _takes(setting: Setting, terms: Terms, measurand: str) -> bool:
    """Whether the version names it and the setting's reported values list holds it."""
    listed = setting.values_list
    return measurand in terms.measurands and (listed is None or measurand in listed)


def _cut(
    names: list[str], setting: Setting, by_name: dict[str, Setting], terms: Terms
) -> list[str]:
    """The first ones that fit: 1.6 `…MaxLength` items, 2.x maxLimit characters."""
    length_key = terms.list_lengths.get(setting.name)
    if length_key is not None and length_key in by_name:
        most = _seconds(by_name[length_key].value)
        if most is not None and most > 0:
            names = names[:most]
    if setting.max_limit is not None:
        while names and len(",".join(names)) > setting.max_limit:
            names = names[:-1]
    return names


def _seconds(value: str | None) -> int | None:
    try:
        number = float(value or "")
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def trials(wanted: tuple[str, ...]) -> Generator[tuple[str, ...], bool, None]:
    """The lists to write until the charge point takes one (send whether it took the one
    yielded; the last it took is in force). README: the whole list; then without one
    measurand at a time, the least important first (one it does not take is found in at
    most as many writes as measurands); if none is taken, built up one measurand at a
    time, keeping each it takes. Each list is written at most once."""
    tried = {wanted}
    if (yield wanted):
        return
    for measurand in reversed(wanted[1:]):  # the most important stays
        rest = tuple(m for m in wanted if m != measurand)
        if rest in tried:
            continue
        tried.add(rest)
        if (yield rest):
            return
    kept: tuple[str, ...] = ()
    for measurand in wanted:
        candidate = (*kept, measurand)
        if candidate in tried:
            continue  # refused already
        tried.add(candidate)
        if (yield candidate):
            kept = candidate
