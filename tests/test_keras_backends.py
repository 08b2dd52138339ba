"""Re-runs every `multi_backend` test under the torch Keras backend.

Keras picks its backend once, at import, so the other backend needs its own
interpreter: a second pytest run in a subprocess.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="runs from the main run only")
def test_multi_backend_tests_pass_under_torch():
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "multi_backend",
            "-p",
            "no:cacheprovider",
            "tests",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"torch-backend run failed:\n{tail}"
    assert " passed" in result.stdout, f"torch-backend run ran no test:\n{tail}"
