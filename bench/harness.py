"""Shared pieces of the benchmarks: ComfyUI's model sampling, stand-in models, fair timing.

Every comparison runs TCD and ComfyUI's own samplers in the same process, interleaved, and
reports medians, so machine noise hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from devkit.comfy_import import import_comfyui, import_pack_sampling


def import_comfy_and_pack(cpu: bool) -> ModuleType:
    """Import ComfyUI on the chosen device and this pack's sampling code (``pack.tcd_core``,
    ``pack.tcd_comfy.sampling``); enough for a bare GPU machine with ComfyUI's sampling path."""
    import_comfyui(cpu=cpu)
    return import_pack_sampling()


def discrete_model_sampling() -> Any:
    """ComfyUI's own SD1.5/SDXL model sampling (discrete, eps)."""
    import comfy.model_sampling

    class ModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    return ModelSampling()


class StandInModel:
    """Looks like the denoiser ComfyUI hands a sampler, but costs nothing: returns a fixed tensor."""

    def __init__(self, model_sampling: Any, denoised: torch.Tensor) -> None:
        self.inner_model = SimpleNamespace(
            inner_model=SimpleNamespace(model_sampling=model_sampling),
            model_patcher=SimpleNamespace(get_model_object=lambda name: model_sampling),
        )
        self.denoised = denoised
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        self.calls += 1
        return self.denoised


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, list[float]]:
    """Time each run `repeats` times, round-robin; returns every timing (seconds) per name."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(values: list[float], baseline: list[float]) -> tuple[float, float]:
    """Median and half-IQR of the per-round ratios values[i] / baseline[i].

    Interleaved runs of one round share the machine's state, so their ratio cancels slow drifts
    (clocks, other load) that widen the spread of either timing alone.
    """
    ratios = [a / b for a, b in zip(values, baseline, strict=True)]
    if len(ratios) < 4:
        return statistics.median(ratios), 0.0
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), (q[2] - q[0]) / 2


def spread(values: list[float]) -> float:
    """Half the interquartile range relative to the median: the run-to-run noise."""
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2 / statistics.median(values)


def count_syncs(run: Callable[[], Any]) -> int:
    """Host-device synchronisations in one run (torch.cuda.set_sync_debug_mode)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


class PeakLiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of tensor storage created inside the block and still alive (CPU or GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        import weakref

        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
