"""python -m dpcompile: epsilon, calibrate, explain; user errors are one line and exit code 2."""
import subprocess
import sys

import pytest

from dpcompile.cli import main
from dpcompile.privacy.accounting import Accountant, calibrate_noise_multiplier


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def test_epsilon_matches_the_accountant(capsys):
    code, out, _ = run(capsys, "epsilon", "--noise-multiplier", "1.1", "--sample-rate", "0.01", "--steps", "500",
                       "--delta", "1e-5")
    accountant = Accountant("pld")
    accountant.record(1.1, 0.01, 500)
    assert code == 0 and float(out) == pytest.approx(accountant.epsilon(1e-5), rel=1e-5)


def test_epsilon_by_epochs_with_rdp(capsys):
    code, out, _ = run(capsys, "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "0.1", "--epochs", "2",
                       "--delta", "1e-5", "--accountant", "rdp")
    accountant = Accountant("rdp")
    accountant.record(1.0, 0.1, 20)
    assert code == 0 and float(out) == pytest.approx(accountant.epsilon(1e-5), rel=1e-5)


def test_calibrate_matches_the_library(capsys):
    code, out, _ = run(capsys, "calibrate", "--epsilon", "3", "--delta", "1e-5", "--sample-rate", "0.02", "--steps", "200")
    assert code == 0 and float(out) == pytest.approx(calibrate_noise_multiplier(3, 1e-5, 0.02, 200), rel=1e-5)


def test_explain_prints_the_plan(capsys):
    code, out, _ = run(capsys, "explain", "models:small_cnn", "--input-shape", "3,8,8", "--batch", "3")
    assert code == 0 and "method" in out.splitlines()[0] and "convolution_backward" in out
    code, capped, _ = run(capsys, "explain", "models:small_cnn", "--input-shape", "3,8,8", "--batch", "3",
                          "--auto-extra-memory", "0")
    assert code == 0 and "convolution_backward" in capped


@pytest.mark.parametrize("argv, says", [
    (("epsilon", "--noise-multiplier", "-1", "--sample-rate", "0.01", "--steps", "10", "--delta", "1e-5"),
     "noise_multiplier"),
    (("calibrate", "--epsilon", "1", "--delta", "2", "--sample-rate", "0.01", "--steps", "10"), "delta"),
    (("explain", "no_such_module:f", "--input-shape", "3"), "cannot import"),
    (("explain", "models:no_such_factory", "--input-shape", "3"), "no callable"),
    (("explain", "models:small_cnn", "--input-shape", "3,8,8", "--auto-extra-memory", "-1"), "auto_extra_memory"),
])
def test_user_errors_are_one_line(capsys, argv, says):
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1 and says in err


def test_module_entry_point_and_help():
    done = subprocess.run([sys.executable, "-m", "dpcompile", "epsilon", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--noise-multiplier" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "dpcompile", "epsilon", "--steps", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
