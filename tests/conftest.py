"""Shared fixtures. Keras fixes its backend at import: tests marked
`multi_backend` are re-run under the torch backend by tests/test_keras_backends.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import pytest


@pytest.fixture
def keras_backend() -> str:
    return keras.backend.backend()
