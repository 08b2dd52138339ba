"""`privkeras demo --stages he` prints accuracy and per-sample latency."""

from privkeras.cli.main import main


def test_demo_he_stage_reports_accuracy_and_latency(capsys):
    assert main(["demo", "--stages", "he"]) == 0
    out = capsys.readouterr().out
    assert "[he] digits MLP under CKKS" in out
    assert "argmax agreement with plaintext 1.000" in out or "agreement with plaintext 0.99" in out
    assert "one sample" in out and "samples/s" in out
