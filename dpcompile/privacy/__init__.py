"""Privacy accounting (via dp-accounting), Poisson sampling and the privacy engine for DP-SGD."""
from .accounting import Accountant, calibrate_noise_multiplier, steps_for
from .engine import PrivacyEngine
from .sampling import PoissonBatchSampler, poisson_loader

__all__ = ["Accountant", "PoissonBatchSampler", "PrivacyEngine", "calibrate_noise_multiplier", "poisson_loader",
           "steps_for"]
