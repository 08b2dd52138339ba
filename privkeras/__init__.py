"""privkeras: Keras 3 compatible privacy-preserving deep learning.

Declare a `PrivateSequential` like a `keras.Sequential`, then choose a privacy
policy at compile time: `DPSGD`, `Federated`, `MPC` or `HE` (or the
shorthands `"dp-sgd"`, `"federated"`, `"mpc"`, `"he"`).

Names are imported on first use (PEP 562), so that `import privkeras` and the
`privkeras` command start without TensorFlow, torch or TenSEAL; `pk.X` and
`from privkeras import X` behave as if every name were imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it (a submodule when the name is the module).
_EXPORTS: dict[str, str] = {
    # submodules
    "dpsgd": "privkeras.dpsgd",
    "errors": "privkeras.errors",
    "federated": "privkeras.federated",
    "layers": "privkeras.layers",
    "mpc": "privkeras.mpc",
    "policies": "privkeras.policies",
    "serving": "privkeras.serving",
    # models and data
    "PrivateSequential": "privkeras.models",
    "SharedData": "privkeras.backends.mpc.shared_data",
    "DataOwner": "privkeras.backends.federated.data",
    "FederatedData": "privkeras.backends.federated.data",
    # policies
    "DPSGD": "privkeras.policies",
    "HE": "privkeras.policies",
    "MPC": "privkeras.policies",
    "Federated": "privkeras.policies",
    # errors
    "AuthenticationError": "privkeras.errors",
    "CapabilityError": "privkeras.errors",
    "EngineNotAvailableError": "privkeras.errors",
    "InvalidInputError": "privkeras.errors",
    "PartyError": "privkeras.errors",
    "PrecisionOverflowError": "privkeras.errors",
    "PrivacyBudgetExceededError": "privkeras.errors",
    "PrivacyPolicyError": "privkeras.errors",
    "PrivkerasError": "privkeras.errors",
    "RegistrationError": "privkeras.errors",
    "UnsupportedLayerError": "privkeras.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'privkeras' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what static tools and IDEs see
    from privkeras import dpsgd, errors, layers, mpc, policies  # noqa: F401
    from privkeras.backends.mpc.shared_data import SharedData  # noqa: F401
    from privkeras.errors import (  # noqa: F401
        AuthenticationError,
        CapabilityError,
        EngineNotAvailableError,
        InvalidInputError,
        PartyError,
        PrecisionOverflowError,
        PrivacyBudgetExceededError,
        PrivacyPolicyError,
        PrivkerasError,
        RegistrationError,
        UnsupportedLayerError,
    )
    from privkeras.models import PrivateSequential  # noqa: F401
    from privkeras.policies import DPSGD, HE, MPC, Federated  # noqa: F401
