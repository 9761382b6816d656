"""Privacy accounting for Poisson-sampled Gaussian steps, delegated to dp-accounting."""
from __future__ import annotations

import functools
import logging
import math
from numbers import Integral, Real
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from ..errors import ConfigError

logger = logging.getLogger(__name__)

MECHANISMS = ("pld", "rdp")
# PLD grid step: 1e-4 keeps the pessimistic estimate within ~0.1% of the exact value; 1e-3 errs by
# up to ~2% at small epsilon. 20k steps at sigma >= 0.5 take well under a second on one core.
PLD_DISCRETIZATION = 1e-4
# Calibration search range. Below ~0.25, PLD needs minutes and gigabytes (and epsilon is in the hundreds).
MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 0.25, 1e6

Entry = tuple[float, float, int]


def _check_step(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Refuse a noise multiplier, sample rate or step count no accountant accepts."""
    if not (isinstance(noise_multiplier, Real) and noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (isinstance(sample_rate, Real) and 0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")


def _check_delta(delta: float) -> None:
    """Refuse a delta outside (0, 1)."""
    if not (isinstance(delta, Real) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")


def _check_mechanism(mechanism: str) -> None:
    """Refuse an unknown accounting mechanism."""
    if mechanism not in MECHANISMS:
        raise ConfigError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def _epsilon(history: tuple[Entry, ...], delta: float, mechanism: str, discretization: float) -> float:
    """Epsilon of the composed history, computed by a fresh dp-accounting accountant."""
    history = tuple(e for e in history if e[2] > 0)
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    events = [dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), count)
        for sigma, q, count in history]
    event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
    if mechanism == "pld":
        accountant = pld.PLDAccountant(value_discretization_interval=discretization)
    else:
        accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


class Accountant:
    """Running record of noisy steps; epsilon(delta) asks dp-accounting for the composed guarantee."""

    def __init__(self, mechanism: str = "pld", *, discretization: float = PLD_DISCRETIZATION) -> None:
        _check_mechanism(mechanism)
        if not discretization > 0:
            raise ConfigError(f"discretization must be > 0, got {discretization!r}")
        self.mechanism = mechanism
        self.discretization = discretization
        self._history: list[list] = []
        self._cache: dict[tuple[tuple[Entry, ...], float], float] = {}

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record `steps` Poisson-sampled Gaussian steps; equal consecutive settings share one entry."""
        _check_step(noise_multiplier, sample_rate, steps)
        if steps == 0:
            return
        sigma, q, steps = float(noise_multiplier), float(sample_rate), int(steps)
        if self._history and self._history[-1][:2] == [sigma, q]:
            self._history[-1][2] += steps
        else:
            self._history.append([sigma, q, steps])

    @property
    def steps(self) -> int:
        """Total number of recorded steps."""
        return sum(count for _, _, count in self._history)

    @property
    def history(self) -> tuple[Entry, ...]:
        """Recorded (noise_multiplier, sample_rate, count) entries, oldest first."""
        return tuple((sigma, q, count) for sigma, q, count in self._history)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at this delta (math.inf if any step had no noise)."""
        _check_delta(delta)
        key = (self.history, float(delta))
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
            self._cache[key] = _epsilon(key[0], key[1], self.mechanism, self.discretization)
        return self._cache[key]

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: mechanism and history."""
        return {"mechanism": self.mechanism, "history": [list(e) for e in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by an accountant of the same mechanism."""
        if not isinstance(state, dict) or set(state) != {"mechanism", "history"}:
            raise ConfigError("not an Accountant state: expected a dict with keys 'mechanism' and 'history'")
        if state["mechanism"] != self.mechanism:
            raise ConfigError(f"state was saved by a {state['mechanism']!r} accountant; this one uses "
                              f"{self.mechanism!r}. Create Accountant({state['mechanism']!r}) to load it")
        history = []
        for entry in state["history"]:
            if len(entry) != 3:
                raise ConfigError(f"history entry must be (noise_multiplier, sample_rate, count), got {entry!r}")
            _check_step(*entry)
            history.append([float(entry[0]), float(entry[1]), int(entry[2])])
        self._history, self._cache = history, {}


def steps_for(epochs: float, sample_rate: float) -> int:
    """Number of steps for `epochs` expected passes over the data: ceil(epochs / sample_rate)."""
    if not (isinstance(epochs, Real) and 0 < epochs < math.inf):
        raise ConfigError(f"epochs must be a positive finite number, got {epochs!r}")
    _check_step(1.0, sample_rate, 0)
    ratio = epochs / sample_rate
    nearest = round(ratio)
    return int(nearest) if math.isclose(ratio, nearest, rel_tol=1e-9) else math.ceil(ratio)


def calibrate_noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                               mechanism: str = "pld", tolerance: float = 0.01, *,
                               discretization: float = PLD_DISCRETIZATION) -> float:
    """Smallest noise multiplier with (1 - tolerance)·target <= epsilon <= target, by bisection."""
    _check_mechanism(mechanism)
    _check_delta(target_delta)
    _check_step(1.0, sample_rate, steps)
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance must be in (0, 1), got {tolerance!r}")
    if not (isinstance(target_epsilon, Real) and 0 < target_epsilon < math.inf):
        raise ConfigError(f"target_epsilon {target_epsilon!r} is unreachable: it must be a positive finite number")
    if steps == 0:
        raise ConfigError("steps must be > 0: with no steps epsilon is 0 for every noise multiplier")

    @functools.cache
    def eps(sigma: float) -> float:
        """Epsilon after `steps` steps at this noise multiplier."""
        return _epsilon(((sigma, float(sample_rate), int(steps)),), target_delta, mechanism, discretization)

    high = 1.0
    while eps(high) > target_epsilon:
        high *= 2
        if high > MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"target_epsilon {target_epsilon} is unreachable: it needs noise_multiplier > "
                              f"{MAX_NOISE_MULTIPLIER:g} (sample_rate={sample_rate}, steps={steps}, delta={target_delta})")
    low = high / 2  # bracket: eps(low) > target >= eps(high)
    while eps(low) <= target_epsilon:
        if low <= MIN_NOISE_MULTIPLIER:
            raise ConfigError(f"target_epsilon {target_epsilon} is so large that noise_multiplier "
                              f"{MIN_NOISE_MULTIPLIER} already meets it; noise that weak gives no meaningful "
                              "privacy (and PLD accounting for it is very slow): set noise_multiplier directly")
        low, high = low / 2, low
    while eps(high) < (1 - tolerance) * target_epsilon:
        mid = (low + high) / 2
        if not low < mid < high:
            logger.warning("calibration stopped at noise_multiplier=%g, epsilon=%g (target %g)",
                           high, eps(high), target_epsilon)
            break
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    logger.debug("calibrated noise_multiplier=%g: epsilon=%g for target %g", high, eps(high), target_epsilon)
    return high
