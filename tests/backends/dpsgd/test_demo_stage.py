"""`privkeras demo --stages dp-sgd` trains on breast cancer and reports epsilon."""

import re

import pytest

from privkeras import dpsgd
from privkeras.cli.main import main
from privkeras.cli.stages import dpsgd as stage


@pytest.mark.multi_backend
def test_dpsgd_demo_stage_prints_accuracy_and_epsilon(capsys):
    assert main(["demo", "--stages", "dp-sgd"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"\[dp-sgd\] breast cancer: test accuracy ([0-9.]+), epsilon ([0-9.]+)", out)
    assert match, out
    accuracy, epsilon = float(match.group(1)), float(match.group(2))
    # The noise is fresh from os.urandom every run: 12 runs gave 0.894-0.958; the
    # majority class alone gives 0.63.
    assert accuracy > 0.8
    policy = stage.POLICY
    expected = dpsgd.compute_epsilon(32 / 427, policy.noise_multiplier, 8 * 14, policy.delta)
    assert epsilon == pytest.approx(expected, abs=0.006)
