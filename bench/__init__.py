"""Benchmarks of `crtool deliver` and friends, run as whole processes: `make bench`.

Each figure is a ratio against a bare interpreter of the same virtual environment measured in
the same run, in interleaved rounds, so a machine loaded by other work shifts both sides alike.
"""
