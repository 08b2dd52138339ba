"""Routing (registry) and the engines behind each privacy policy.

Importing this package registers every engine that ships with privkeras.
Engines are imported here, and only here, so that the model reaches them
through `privkeras.backends.registry` alone.
"""

from privkeras.backends import (
    dpsgd,  # noqa: F401  (registers the DP-SGD engine)
    federated,  # noqa: F401  (registers the federated engine)
    he,  # noqa: F401  (registers the HE engine)
    mpc,  # noqa: F401  (registers the MPC engines)
    plaintext,  # noqa: F401  (registers the engine)
)
from privkeras.backends.base import Engine
from privkeras.backends.registry import (
    available_engines,
    get_engine,
    register_engine,
    unregister_engine,
)

__all__ = ["Engine", "available_engines", "get_engine", "register_engine", "unregister_engine"]
