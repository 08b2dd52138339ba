"""`privkeras certs`, and every `--help` answering fast without the frameworks."""

import contextlib
import json
import subprocess
import sys
import time

from privkeras.cli.main import build_parser, main

HEAVY = ("tensorflow", "torch", "tenseal", "keras", "jax")


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_help_imports_no_framework_and_prints_no_log_lines():
    probe = (
        "import json, sys\n"
        "from privkeras.cli.main import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    for argv in [["--help"], *[[name, "--help"] for name in _subcommands()]]:
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1]) == [], argv
        assert result.stderr == "", (argv, result.stderr)


def test_help_answers_in_under_two_seconds():
    for argv in [["--help"], *[[name, "--help"] for name in _subcommands()]]:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "privkeras.cli.main", *argv], capture_output=True, timeout=60
        )
        elapsed = time.perf_counter() - start
        assert result.returncode == 0
        assert elapsed < 2.0, (argv, elapsed)


def test_net_echo_is_hidden_from_the_command_list(capsys):
    with contextlib.suppress(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "certs" in out and "net-echo" not in out


def test_certs_makes_a_ca_and_one_certificate_per_party_and_the_driver(tmp_path, capsys):
    assert main(["certs", str(tmp_path), "--parties", "p0,p1,dealer"]) == 0
    for name in ("ca", "p0", "p1", "dealer", "driver"):
        assert (tmp_path / f"{name}.pem").exists() and (tmp_path / f"{name}.key").exists()
    assert (tmp_path / "token").exists()
    assert "DEVELOPMENT ONLY" in capsys.readouterr().out
    assert main(["certs", str(tmp_path), "--parties", "p0"]) == 2
    assert "existing files" in capsys.readouterr().err
    assert main(["certs", str(tmp_path), "--parties", "p0", "--force", "--driver", ""]) == 0


def test_certs_refuses_names_that_cannot_be_identities(tmp_path, capsys):
    assert main(["certs", str(tmp_path), "--parties", "p0,bad name"]) == 2
    assert "DNS label" in capsys.readouterr().err
