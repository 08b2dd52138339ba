"""privkeras: Keras 3 compatible privacy-preserving deep learning.

Declare a `PrivateSequential` like a `keras.Sequential`, then choose a privacy
policy at compile time: `DPSGD`, `Federated`, `MPC` or `HE` (or the
shorthands `"dp-sgd"`, `"federated"`, `"mpc"`, `"he"`).
"""

from privkeras import dpsgd, errors, layers, mpc, policies
from privkeras.backends.mpc.shared_data import SharedData
from privkeras.errors import (
    AuthenticationError,
    CapabilityError,
    EngineNotAvailableError,
    PartyError,
    PrecisionOverflowError,
    PrivacyBudgetExceededError,
    PrivacyPolicyError,
    PrivkerasError,
    UnsupportedLayerError,
)
from privkeras.models import PrivateSequential
from privkeras.policies import DPSGD, HE, MPC, Federated

__version__ = "0.1.0"

__all__ = [
    "DPSGD",
    "HE",
    "MPC",
    "AuthenticationError",
    "CapabilityError",
    "EngineNotAvailableError",
    "Federated",
    "PartyError",
    "PrecisionOverflowError",
    "PrivacyBudgetExceededError",
    "PrivacyPolicyError",
    "PrivateSequential",
    "PrivkerasError",
    "SharedData",
    "UnsupportedLayerError",
    "__version__",
    "dpsgd",
    "errors",
    "layers",
    "mpc",
    "policies",
]
