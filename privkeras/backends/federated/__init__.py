"""The federated engine: training on remote data owners whose rows never leave them.

Coordinator, aggregation strategies (FedAvg family), client-level DP with an
accountant, and secure aggregation (`secagg`). See docs/policies/federated.md.
"""
