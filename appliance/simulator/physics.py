"""What a simulated charge point measures: an EV on a three-phase 16 A wallbox.

Pure functions of simulated time; the charge point feeds them seconds and reads back a
`Reading`. The curve is the usual one for AC charging: a short ramp while the car's
on-board charger negotiates, constant power up to ~80 % state of charge, then a taper.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NOMINAL_VOLTAGE_V = 230.0
PHASES = 3
#: 16 A per phase: the most common AC wallbox (11 kW)
MAX_CURRENT_A = 16.0
MAX_POWER_W = NOMINAL_VOLTAGE_V * PHASES * MAX_CURRENT_A
#: a mid-size EV battery
BATTERY_WH = 60_000.0
#: seconds from contactor close to full power (on-board charger soft start)
RAMP_SEC = 60.0
#: state of charge where constant power ends and the taper begins
TAPER_FROM_SOC = 80.0
#: the taper never drops below this share of full power (balancing current)
TAPER_FLOOR = 0.05
#: below 6 A per phase IEC 61851 pauses charging: a cap under it means zero power
MIN_CURRENT_A = 6.0


def cap_in_watts(limit: float, unit: str, phases: int | None) -> float:
    """A charging-profile limit (W, or A per phase) as watts at the nominal voltage."""
    if unit.upper() == "A":
        return limit * (phases or PHASES) * NOMINAL_VOLTAGE_V
    return limit


@dataclass(slots=True)
class Reading:
    energy_wh: float
    power_w: float
    soc: float
    voltage_v: tuple[float, float, float]
    current_a: tuple[float, float, float]


@dataclass(slots=True)
class Vehicle:
    """One plugged-in car: its state of charge rises with the energy it takes."""

    soc: float
    battery_wh: float = BATTERY_WH


@dataclass(slots=True)
class Meter:
    """The wallbox's energy meter and power electronics."""

    energy_wh: float
    rng: random.Random = field(default_factory=random.Random)
    #: charging-profile caps in watts, by profile id; the lowest one applies
    caps: dict[int, float] = field(default_factory=dict)

    @property
    def cap_w(self) -> float:
        return min(self.caps.values(), default=MAX_POWER_W)

    def power_w(self, vehicle: Vehicle, charging_for_s: float) -> float:
        ramp = min(1.0, max(charging_for_s, 0.0) / RAMP_SEC)
        taper = 1.0
        if vehicle.soc >= TAPER_FROM_SOC:
            taper = max(TAPER_FLOOR, (100.0 - vehicle.soc) / (100.0 - TAPER_FROM_SOC))
        power = MAX_POWER_W * ramp * taper * self.rng.uniform(0.985, 1.0)
        cap = self.cap_w
        if cap < MIN_CURRENT_A * NOMINAL_VOLTAGE_V * PHASES:
            # IEC 61851: under 6 A the car pauses (single-phase fallback not simulated)
            cap = cap if cap >= MIN_CURRENT_A * NOMINAL_VOLTAGE_V else 0.0
        return max(0.0, min(power, cap))

    def advance(self, vehicle: Vehicle, charging_for_s: float, step_s: float) -> Reading:
        """Charge for `step_s` simulated seconds and read the meter."""
        power = self.power_w(vehicle, charging_for_s)
        added = power * step_s / 3600.0
        self.energy_wh += added
        vehicle.soc = min(100.0, vehicle.soc + added / vehicle.battery_wh * 100.0)
        return self.read(vehicle, power)

    def read(self, vehicle: Vehicle | None, power: float = 0.0) -> Reading:
        volts = tuple(round(NOMINAL_VOLTAGE_V + self.rng.uniform(-3, 3), 1) for _ in range(3))
        amps = tuple(round(power / PHASES / v, 2) for v in volts)
        soc = vehicle.soc if vehicle is not None else 0.0
        return Reading(self.energy_wh, power, soc, volts, amps)  # type: ignore[arg-type]
