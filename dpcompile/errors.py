"""Errors dpcompile raises. Every refusal names the module path and the op, and says what to do."""


class DPCompileError(RuntimeError):
    """A model or setting that dpcompile cannot make differentially private."""


class UnsupportedOpError(DPCompileError):
    """A parameter gradient comes from an op that has no per-sample rule."""


class SampleMixingError(DPCompileError):
    """An op mixes samples along the batch dimension, so per-sample gradients do not exist."""


class GraphBreakError(DPCompileError):
    """The model does not capture as one graph; the clip factor needs every layer's norm."""


class ConfigError(DPCompileError, ValueError):
    """An invalid privacy or compiler setting, caught before training starts."""


class ReleaseError(DPCompileError):
    """A gradient would leave without exactly one noisy DP-SGD release: un-noised clipped sums, raw
    gradients, several releases in one optimizer step, or two forwards of one DP model in one backward."""
