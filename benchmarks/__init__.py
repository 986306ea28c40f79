"""Load tests of sfsupervisor against the servers people would pick instead, in one run.

`python -m benchmarks [SCENARIO ...] [--quick]`: see benchmarks/README.md.
"""
