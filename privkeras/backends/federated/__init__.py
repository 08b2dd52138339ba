"""The federated engine: training on remote data owners whose rows never leave them.

Coordinator (`coordinator`), owners (`owner`: rows, rules, ledger), the
owner protocol and its transports (`protocol`, `wire`), aggregation
(`aggregation`; secure aggregation in `secagg`), server optimizers (FedAvg
family), client-level DP accounting (`accounting`). See docs/policies/federated.md.
"""

from privkeras.backends.federated.data import DataOwner, FederatedData
from privkeras.backends.federated.engine import FederatedEngine

# Registers the secure aggregation ("secagg") with the aggregation registry.
from privkeras.backends.federated import secagg  # noqa: F401  isort: skip

__all__ = ["DataOwner", "FederatedData", "FederatedEngine"]
