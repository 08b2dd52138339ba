"""`privkeras serve`: its help, and the bundles it refuses before anything starts (exit code 2)."""

from __future__ import annotations

import subprocess
import sys

import keras
import pytest

from privkeras.cli.main import main
from privkeras.models import PrivateSequential
from privkeras.policies import MPC

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*INSECURE plain-text"),
]


def test_help_shows_an_example_and_the_limits():
    result = subprocess.run(
        [sys.executable, "-m", "privkeras.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "privkeras serve credit_model/p0 --listen" in result.stdout
    assert "pk.serving.connect" in result.stdout
    for flag in ("--party", "--max-batch-rows", "--max-delay-ms", "--rate-limit", "--certs"):
        assert flag in result.stdout


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = PrivateSequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(loss="mse", privacy=MPC(protocol="pond"))
    root = tmp_path_factory.mktemp("cli") / "model"
    model.export(str(root), format="mpc")
    return root


def _serve(capsys, *argv):
    code = main(["serve", *map(str, argv), "--insecure", "--listen", "127.0.0.1:0"])
    return code, capsys.readouterr().err


def test_a_tampered_bundle_is_refused_before_the_server_starts(bundle, capsys, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    shares = copy / "p1" / "shares.npz"
    data = bytearray(shares.read_bytes())
    data[-20] ^= 0xFF
    shares.write_bytes(bytes(data))
    code, err = _serve(capsys, copy / "p1")
    assert code == 2
    assert "privkeras serve: error: Expected bundle file 'p1/shares.npz' to match" in err
    assert "privkeras-ready" not in capsys.readouterr().out


def test_roles_are_resolved_or_refused(bundle, capsys, tmp_path):
    code, err = _serve(capsys, bundle)
    assert code == 2 and "Expected a role to serve" in err and "--party p0" in err
    code, err = _serve(capsys, bundle, "--party", "p7")
    assert code == 2 and "Received: --party p7" in err
    code, err = _serve(capsys, bundle / "p0", "--party", "p1")
    assert code == 2 and "Received: --party p1" in err
    code, err = _serve(capsys, tmp_path / "nothing")
    assert code == 2 and "Expected a privkeras bundle" in err
