"""`privkeras demo --stages federated`: DP-FedAvg on three real worker processes.

The stage starts its workers with `local_owners`, which stops them on exit.
Runtime: about 30 s on 2 shared cores (TensorFlow starting in each worker).
"""

import math

from privkeras.cli.stages import federated


def test_the_federated_demo_stage_trains_on_workers_and_reports_epsilon(capsys):
    result = federated.run(verbose=False)
    line = capsys.readouterr().out
    assert "[federated]" in line and "worker processes" in line and "epsilon" in line
    assert result["accuracy"] > 0.75  # unseeded DP noise: room below the 0.90 typical
    assert math.isfinite(result["epsilon"]) and result["epsilon"] > 0
