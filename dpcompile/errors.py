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


def surfacing(err: DPCompileError) -> DPCompileError:
    """err as an exception Dynamo lets through unwrapped: under torch.compile(model, backend=...), an
    exception from a backend reaches the user as BackendCompilerFailed, except for Dynamo's
    ShortenTraceback family. The copy is an instance of err's own class (SampleMixingError, ...), so
    `except SampleMixingError` works whether the model was compiled by dpcompile() or by torch.compile."""
    try:
        from torch._dynamo.exc import ShortenTraceback
    except ImportError:  # a torch without it: Dynamo wraps the error; its message still says what to do
        return err
    if isinstance(err, ShortenTraceback):
        return err
    cls = type(err)
    surfaced_cls = _SURFACED.get(cls)
    if surfaced_cls is None:
        surfaced_cls = _SURFACED[cls] = type(cls.__name__, (cls, ShortenTraceback),
                                             {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                              "__init__": BaseException.__init__})
    out = surfaced_cls(*err.args)
    out.first_useful_frame = None
    return out


_SURFACED: dict[type, type] = {}
