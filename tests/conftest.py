"""Test settings: float64, the device and backend under test (env DPCOMPILE_TEST_DEVICE / _BACKEND)."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

DEVICE = os.environ.get("DPCOMPILE_TEST_DEVICE", "cpu")
BACKEND = os.environ.get("DPCOMPILE_TEST_BACKEND", "eager")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
