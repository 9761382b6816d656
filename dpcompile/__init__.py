"""dpcompile: differentially private training of PyTorch models as a compiler pass."""
from . import passes
from .api import DPModel, dpcompile
from .backend import DPBackend, backend
from .config import DPConfig
from .fix import fix
from .errors import (ConfigError, DPCompileError, GraphBreakError, ReleaseError, SampleMixingError,
                     UnsupportedOpError)
from .passes.export import to_networkx
from .privacy import Accountant, PoissonBatchSampler, PrivacyEngine, calibrate_noise_multiplier, poisson_loader

__all__ = ["dpcompile", "backend", "fix", "DPModel", "DPBackend", "DPConfig", "to_networkx", "passes",
           "DPCompileError", "ConfigError", "UnsupportedOpError", "SampleMixingError", "GraphBreakError", "ReleaseError",
           "Accountant", "PoissonBatchSampler", "PrivacyEngine", "calibrate_noise_multiplier", "poisson_loader"]
