"""Privacy accounting (via dp-accounting) and Poisson sampling for DP-SGD."""
from .accounting import Accountant, calibrate_noise_multiplier, steps_for
from .sampling import PoissonBatchSampler, poisson_loader

__all__ = ["Accountant", "PoissonBatchSampler", "calibrate_noise_multiplier", "poisson_loader", "steps_for"]
