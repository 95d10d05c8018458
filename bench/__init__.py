"""Benchmarks (not part of the tests): run from the repo root as `python -m bench.cpu` / `python -m bench.gpu`."""

import devkit  # noqa: F401 - makes this checkout importable as comfyui_tcd_sampling
