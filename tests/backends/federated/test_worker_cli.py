"""`privkeras worker`'s data loading and rules, without starting a server."""

import argparse

import numpy as np
import pytest

from privkeras.backends.federated.errors import OwnerDataError
from privkeras.cli import main as cli
from privkeras.cli import worker
from privkeras.errors import PrivacyPolicyError


def _args(*argv):
    return cli.build_parser().parse_args(["worker", "--name", "alice", *argv])


def load_pair():
    return np.ones((3, 2), np.float32), np.array([0, 1, 0])


def test_npz_csv_and_loader_data(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 1]))
    x, y = worker.load_data(_args("--data", str(tmp_path / "a.npz")))
    assert x.shape == (3, 2) and list(y) == [0, 1, 1]
    (tmp_path / "a.csv").write_text("age,risk,label\n30,0.5,1\n40,0.1,0\n")
    x, y = worker.load_data(_args("--data", str(tmp_path / "a.csv"), "--label", "label"))
    np.testing.assert_allclose(x, [[30, 0.5], [40, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(y, [1, 0])
    x, y = worker.load_data(_args("--loader", f"{__name__}:load_pair"))
    assert x.shape == (3, 2) and len(y) == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ((), "exactly one of --data and --loader"),
        (("--data", "missing.npz"), "not found"),
        (("--data", "{tmp}/a.txt"), ".npz or a .csv"),
        (("--data", "{tmp}/a.csv"), "--label"),
        (("--data", "{tmp}/a.csv", "--label", "nope"), "column 'nope'"),
        (("--data", "{tmp}/bad.npz"), "arrays 'x' and 'y'"),
        (("--loader", "no_such_module:f"), "imported"),
        (("--loader", "nocolon"), "MODULE:FUNCTION"),
    ],
)
def test_bad_data_is_named(tmp_path, argv, match):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    np.savez(tmp_path / "bad.npz", features=np.zeros(3))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(OwnerDataError, match=match):
        worker.load_data(_args(*argv))


def test_rules_from_flags_keep_the_ledger_next_to_the_data(tmp_path):
    args = _args("--data", str(tmp_path / "a.npz"), "--allow", "federated,mpc",
                 "--max-epsilon", "4", "--delta", "1e-6")  # fmt: skip
    rules = worker.owner_rules(args)
    assert rules.allow == ("federated", "mpc") and rules.max_epsilon == 4.0
    assert rules.ledger_path == str(tmp_path / "a.npz") + ".ledger.json"
    with pytest.raises(PrivacyPolicyError, match="--ledger"):
        worker.owner_rules(_args("--loader", "m:f", "--max-epsilon", "4", "--delta", "1e-6"))
    with pytest.raises(PrivacyPolicyError, match="allow"):
        worker.owner_rules(_args("--data", "a.npz", "--allow", "training"))


def test_the_worker_command_is_listed():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "worker" in sub.choices
