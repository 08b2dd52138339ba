import subprocess
import sys

from privkeras.cli.main import main


def test_help_lists_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "privkeras.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_demo_plaintext_stage_trains_on_breast_cancer(capsys):
    assert main(["demo", "--stages", "plaintext"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("[plaintext]"))
    accuracy = float(line.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9


def test_demo_refuses_unknown_stage():
    import pytest

    with pytest.raises(SystemExit, match="Received: \\['nope'\\]"):
        main(["demo", "--stages", "nope"])
