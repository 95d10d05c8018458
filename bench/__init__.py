"""Benchmarks (not part of the tests): run from the repo root as `python -m bench.cpu` / `python -m bench.gpu`."""
