"""Sampled values: measurand and phase → state name, and units normalised.

One table says what each measurand is called in the tree; every other measurand gets a
derived camelCase name. Energy is kept in Wh, power in W, whatever the charge point sent
(1.6 `unit`, 2.x `unitOfMeasure.unit` × 10^`multiplier`).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import NamedTuple

#: measurand → (state name, normalised unit). A phase adds its suffix: currentL1, voltageL1L2.
MEASURANDS: dict[str, tuple[str, str]] = {
    "Energy.Active.Import.Register": ("energyWh", "Wh"),
    "Energy.Active.Export.Register": ("energyExportWh", "Wh"),
    "Energy.Reactive.Import.Register": ("energyReactiveImportVarh", "varh"),
    "Energy.Reactive.Export.Register": ("energyReactiveExportVarh", "varh"),
    "Energy.Active.Import.Interval": ("energyIntervalWh", "Wh"),
    "Energy.Active.Export.Interval": ("energyExportIntervalWh", "Wh"),
    "Energy.Active.Net": ("energyNetWh", "Wh"),
    "Power.Active.Import": ("power", "W"),
    "Power.Active.Export": ("powerExport", "W"),
    "Power.Reactive.Import": ("powerReactiveImport", "var"),
    "Power.Reactive.Export": ("powerReactiveExport", "var"),
    "Power.Offered": ("powerOffered", "W"),
    "Power.Factor": ("powerFactor", ""),
    "Current.Import": ("current", "A"),
    "Current.Export": ("currentExport", "A"),
    "Current.Offered": ("currentOffered", "A"),
    "Voltage": ("voltage", "V"),
    "Frequency": ("frequency", "Hz"),
    "Temperature": ("temperature", "Celsius"),
    "SoC": ("soc", "Percent"),
    "RPM": ("rpm", "rpm"),
}
#: what a sampled value without a measurand is (1.6 §7.31, 2.x MeasurandEnumType default)
DEFAULT_MEASURAND = "Energy.Active.Import.Register"
#: ... unless its unit says it cannot be: field chargers (Alfen) send currents without a
#: measurand, which must not become the meter reading
_MEASURAND_OF_UNIT = {
    "A": "Current.Import",
    "V": "Voltage",
    "W": "Power.Active.Import",
    "Percent": "SoC",
    "Celsius": "Temperature",
    "Hz": "Frequency",
    "var": "Power.Reactive.Import",
}

#: the aggregate names README "`states` and `objects`" pins: powerW, and powerL1..3 per phase
_UNPHASED_SUFFIX = {"power": "W"}

# unit as sent → (normalised unit, factor)
_UNITS: dict[str, tuple[str, float]] = {
    "wh": ("Wh", 1),
    "kwh": ("Wh", 1000),
    "w": ("W", 1),
    "kw": ("W", 1000),
    "varh": ("varh", 1),
    "kvarh": ("varh", 1000),
    "var": ("var", 1),
    "kvar": ("var", 1000),
    "va": ("VA", 1),
    "kva": ("VA", 1000),
    "a": ("A", 1),
    "v": ("V", 1),
    "percent": ("Percent", 1),
    "%": ("Percent", 1),
    "celsius": ("Celsius", 1),
    "celcius": ("Celsius", 1),  # the 1.6 schema's own spelling (errata: accept both)
    "hz": ("Hz", 1),
    "hertz": ("Hz", 1),  # 1.6 errata v4.0
}

# OCPP phases → name suffix: L1 and L1-N are the same conductor for a reading
_PHASES = {
    "L1": "L1",
    "L2": "L2",
    "L3": "L3",
    "N": "N",
    "L1-N": "L1",
    "L2-N": "L2",
    "L3-N": "L3",
    "L1-L2": "L1L2",
    "L2-L3": "L2L3",
    "L3-L1": "L3L1",
}

# Within one message the register a Transaction.Begin reading carries (often 0 on
# chargers that count per session) must not override a periodic reading beside it.
CONTEXT_RANK = {
    "Sample.Periodic": 5,
    "Sample.Clock": 5,
    "Trigger": 4,
    "Transaction.End": 3,
    "Transaction.Begin": 2,
    "Interruption.End": 1,
    "Interruption.Begin": 1,
    "Other": 0,
}


_new = tuple.__new__


class Reading(NamedTuple):
    """One sampled value, normalised. (A named tuple: a message carries dozens of them,
    and tuples are the cheapest thing Python builds.)"""

    name: str  # state name: energyWh, powerW, currentL1, …
    measurand: str
    phase: str | None
    location: str | None
    context: str | None
    unit: str
    value: float
    sampled_at: str | None


def _derived_name(measurand: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", measurand)
    return words[0].lower() + "".join(w[:1].upper() + w[1:] for w in words[1:])


@lru_cache(maxsize=512)
def state_name(measurand: str, phase: str | None) -> tuple[str, str]:
    """(state name, normalised unit) of a measurand on a phase."""
    name, unit = MEASURANDS.get(measurand) or (_derived_name(measurand), "")
    suffix = (_PHASES.get(phase) or re.sub(r"[^A-Za-z0-9]", "", phase)) if phase else ""
    if not suffix:
        suffix = _UNPHASED_SUFFIX.get(name, "")
    return name + suffix, unit


class _Kind(NamedTuple):
    """What a sampled value is, apart from its number: the same for every message of a
    charge point, so worked out once (`_kind`)."""

    name: str
    measurand: str
    context: str
    unit: str
    #: 10^multiplier (2.x unitOfMeasure), None without one
    scale: float | None
    #: the normalised unit's factor, or a temperature scale (`_TEMPERATURE`)
    factor: float | str


#: temperatures converted to Celsius, by the unit sent (lowercase)
_TEMPERATURE = {"fahrenheit": "F", "k": "K"}


@lru_cache(maxsize=1024)
def _kind(
    measurand: str | None, phase: str | None, context: str | None, unit: str | None, multiplier: int
) -> _Kind:
    # the schemas' default (1.6 and 2.x SampledValue.context)
    context = context or "Sample.Periodic"
    if not measurand:
        sent = _UNITS.get(unit.lower(), (unit, 1))[0] if unit else None
        measurand = _MEASURAND_OF_UNIT.get(sent or "", DEFAULT_MEASURAND)
    name, natural_unit = state_name(measurand, phase)
    scale = None
    if multiplier:
        try:
            scale = 10.0**multiplier
        except OverflowError:
            raise Unusable(f"multiplier {multiplier} is beyond a double") from None
    factor: float | str = 1
    if not unit:
        normalised = natural_unit
    elif unit.lower() in _TEMPERATURE:
        normalised, factor = "Celsius", _TEMPERATURE[unit.lower()]
    else:
        normalised, factor = _UNITS.get(unit.lower(), (unit, 1))
    return _Kind(name, measurand, context, normalised, scale, factor)


def reading(
    raw_value: object,
    measurand: str | None,
    phase: str | None,
    location: str | None,
    context: str | None,
    unit: str | None,
    multiplier: int,
    sampled_at: str | None,
) -> Reading | None:
    """A Reading, or None for a value that is not a number (1.6 SignedData, garbage).
    Raises Unusable for a number that cannot be a reading (beyond a double, or a
    multiplier that makes it so)."""
    try:
        value = float(raw_value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    except OverflowError:
        raise Unusable(f"value {str(raw_value)[:40]} is beyond a double") from None
    if not math.isfinite(value):
        return None
    kind = _kind(measurand, phase, context, unit, multiplier)
    if kind.scale is not None:
        value *= kind.scale
    factor = kind.factor
    if factor == "F":
        value = (value - 32) * 5 / 9
    elif factor == "K":
        value = value - 273.15
    elif factor != 1:
        value *= factor  # type: ignore[operator]
    if not math.isfinite(value):
        raise Unusable(f"value {raw_value} × 10^{multiplier} is beyond a double")
    # tuple.__new__ as NamedTuple._make does, without its Python-level checks: a message
    # carries dozens of readings
    return _new(
        Reading,
        (kind.name, kind.measurand, phase, location, kind.context, kind.unit, value, sampled_at),
    )


#: units of readings that describe a moment, not a register: they do not outlive the
#: session, the plugged-in car or the connection (README "Readings")
INSTANTANEOUS_UNITS = frozenset({"W", "A", "var", "VA"})


class Unusable(ValueError):
    """A sampled value that is a number but cannot be a reading; the frame keeps it."""
