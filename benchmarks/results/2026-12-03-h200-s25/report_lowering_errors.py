"""A pytest plugin (-p report_lowering_errors, this folder on PYTHONPATH): prints the full traceback of every
inductor lowering error behind dpcompile's "runs without inductor" warning, then lets dpcompile fall back."""
import traceback

import torch._inductor.compile_fx as compile_fx

inner = compile_fx.compile_fx_inner


def reporting(*args, **kwargs):
    try:
        return inner(*args, **kwargs)
    except Exception as exc:
        print(f"=== lowering error ({'backward' if kwargs.get('is_backward') else 'forward'}):", flush=True)
        print("".join(traceback.format_exception(exc))[-12000:], flush=True)
        raise


compile_fx.compile_fx_inner = reporting
