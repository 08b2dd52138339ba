"""The MPC engines: encrypted inference and training on secret-shared data and models.

Importing this package registers the engines `"mpc-tfe"` and `"mpc-torch"`.
The secure-computation runtime (shares, protocols, dealer, communicator)
lives in `runtime.py`, `tensor.py` and `protocols/`; the Keras side (secure
layers, losses, optimizer, trainer, `SharedData`) in the other modules.
"""

from privkeras.backends.mpc.engine import MPCEngine, MPCTFEEngine, MPCTorchEngine
from privkeras.backends.mpc.shared_data import SharedData

__all__ = ["MPCEngine", "MPCTFEEngine", "MPCTorchEngine", "SharedData"]
