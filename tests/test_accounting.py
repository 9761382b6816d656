"""Accountant and calibration agree with dp-accounting and refuse invalid settings."""
import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from dpcompile.errors import ConfigError
from dpcompile.privacy.accounting import PLD_DISCRETIZATION, Accountant, calibrate_noise_multiplier, steps_for


def direct_epsilon(mechanism, entries, delta):
    """Epsilon from dp-accounting called directly on the same events."""
    events = [dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n) for sigma, q, n in entries]
    acc = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION) if mechanism == "pld" else rdp.RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("mechanism", ["pld", "rdp"])
def test_matches_dp_accounting(mechanism):
    entries = [(1.5, 0.01, 300), (1.2, 0.02, 200)]
    acc = Accountant(mechanism)
    for sigma, q, n in entries:
        acc.record(sigma, q, n)
    assert acc.epsilon(1e-5) == pytest.approx(direct_epsilon(mechanism, entries, 1e-5), rel=1e-9)
    assert acc.epsilon(1e-6) > acc.epsilon(1e-5)


@pytest.mark.parametrize("mechanism, expected", [("rdp", 4.52), ("pld", 4.17)])
def test_published_values(mechanism, expected):
    acc = Accountant(mechanism)
    acc.record(1.0, 256 / 50000, 19531)
    assert acc.epsilon(1e-5) == pytest.approx(expected, abs=0.05)


def test_zero_steps_and_zero_noise():
    acc = Accountant()
    assert acc.epsilon(1e-5) == 0.0
    acc.record(1.0, 0.01, 0)
    assert acc.steps == 0 and acc.history == ()
    acc.record(0.0, 0.01, 1)
    assert acc.epsilon(1e-5) == math.inf


def test_history_merges_consecutive_settings():
    acc = Accountant()
    for _ in range(5):
        acc.record(1.0, 0.01)
    acc.record(1.0, 0.01, steps=10)
    acc.record(2.0, 0.01, steps=3)
    acc.record(1.0, 0.01)
    assert acc.history == ((1.0, 0.01, 15), (2.0, 0.01, 3), (1.0, 0.01, 1))
    assert acc.steps == 19


def test_epsilon_grows_with_steps():
    acc = Accountant()
    acc.record(1.0, 0.01, 100)
    first = acc.epsilon(1e-5)
    assert acc.epsilon(1e-5) == first
    acc.record(1.0, 0.01, 100)
    assert acc.epsilon(1e-5) > first


def test_state_round_trip():
    acc = Accountant("rdp")
    acc.record(1.0, 0.01, 50)
    acc.record(1.5, 0.02, 20)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state == {"mechanism": "rdp", "history": [[1.0, 0.01, 50], [1.5, 0.02, 20]]}
    other = Accountant("rdp")
    other.load_state_dict(state)
    assert other.history == acc.history
    assert other.epsilon(1e-5) == acc.epsilon(1e-5)
    other.record(1.5, 0.02, 5)
    assert other.history[-1] == (1.5, 0.02, 25)


@pytest.mark.parametrize("target", [0.5, 1.0])
def test_calibration_pld(target):
    sigma = calibrate_noise_multiplier(target, 1e-5, 0.01, 500)
    acc = Accountant()
    acc.record(sigma, 0.01, 500)
    assert 0.99 * target <= acc.epsilon(1e-5) <= target


def test_calibration_rdp():
    sigma = calibrate_noise_multiplier(3.0, 1e-5, 0.01, 1000, mechanism="rdp", tolerance=0.005)
    acc = Accountant("rdp")
    acc.record(sigma, 0.01, 1000)
    assert 0.995 * 3.0 <= acc.epsilon(1e-5) <= 3.0


def test_steps_for():
    assert steps_for(1, 256 / 50000) == 196
    assert steps_for(3, 0.1) == 30
    assert steps_for(3, 0.3) == 10
    assert steps_for(2.5, 0.5) == 5
    with pytest.raises(ConfigError):
        steps_for(0, 0.1)
    with pytest.raises(ConfigError):
        steps_for(1, 0.0)


@pytest.mark.parametrize("sigma, q, steps", [(-1.0, 0.1, 1), (math.nan, 0.1, 1), (1.0, 0.0, 1), (1.0, 1.5, 1),
                                             (1.0, -0.1, 1), (1.0, 0.1, -1), (1.0, 0.1, 1.5)])
def test_record_refusals(sigma, q, steps):
    with pytest.raises(ConfigError):
        Accountant().record(sigma, q, steps)


@pytest.mark.parametrize("delta", [0.0, -1e-5, 1.0, 2.0])
def test_delta_refusals(delta):
    acc = Accountant()
    acc.record(1.0, 0.01, 10)
    with pytest.raises(ConfigError):
        acc.epsilon(delta)


def test_mechanism_and_state_refusals():
    with pytest.raises(ConfigError):
        Accountant("gdp")
    rdp_acc = Accountant("rdp")
    rdp_acc.record(1.0, 0.01, 10)
    with pytest.raises(ConfigError, match="rdp"):
        Accountant("pld").load_state_dict(rdp_acc.state_dict())
    with pytest.raises(ConfigError):
        Accountant("rdp").load_state_dict({"mechanism": "rdp", "history": [[-1.0, 0.01, 10]]})


@pytest.mark.parametrize("target", [0.0, -1.0, math.inf, math.nan])
def test_calibration_unreachable(target):
    with pytest.raises(ConfigError, match="unreachable"):
        calibrate_noise_multiplier(target, 1e-5, 0.01, 100, mechanism="rdp")


def test_calibration_tiny_target_is_met_with_a_warning(caplog):
    # dp-accounting's RDP conversion reports epsilon 0 at very large noise, so the tolerance cannot be met.
    sigma = calibrate_noise_multiplier(1e-12, 1e-5, 0.01, 100, mechanism="rdp")
    acc = Accountant("rdp")
    acc.record(sigma, 0.01, 100)
    assert acc.epsilon(1e-5) <= 1e-12
    assert "calibration stopped" in caplog.text


def test_calibration_refusals():
    with pytest.raises(ConfigError):
        calibrate_noise_multiplier(1.0, 0.0, 0.01, 100)
    with pytest.raises(ConfigError):
        calibrate_noise_multiplier(1.0, 1e-5, 1.5, 100)
    with pytest.raises(ConfigError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, 100, mechanism="gdp")
    with pytest.raises(ConfigError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, 0)
    with pytest.raises(ConfigError, match="meaningful"):
        calibrate_noise_multiplier(1e4, 1e-5, 1.0, 1, mechanism="rdp")
