"""`privkeras demo --stages mpc`: encrypted training and private inference, printed."""

import re

import pytest

from privkeras.cli.demo import STAGES
from privkeras.cli.main import main


@pytest.mark.filterwarnings("ignore:MPC protocol 'pond' trusts its dealer:UserWarning")
def test_demo_mpc_stage_prints_accuracy_and_time(capsys):
    assert "mpc" in STAGES
    assert main(["demo", "--stages", "mpc"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[mpc]")]
    assert len(lines) == 3
    processes, training, inference = lines
    assert "processes on loopback over mutual TLS" in processes
    assert float(re.search(r"test accuracy ([0-9.]+)", training).group(1)) > 0.9
    assert float(re.search(r"accuracy ([0-9.]+)", inference).group(1)) > 0.9
    assert re.search(r"agrees with plaintext on (9[9]|100)\.\d%", inference)
    assert all(re.search(r"\([0-9.]+ s", line) for line in lines[1:])
