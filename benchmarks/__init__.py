"""privkeras benchmarks: `python -m benchmarks [SUITE ...] [--quick] [--json PATH]`."""
