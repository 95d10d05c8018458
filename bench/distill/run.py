"""The experiments: distil, sample, score; every student and every score cached by its settings.

A *cell* is one distillation run (case, method, target rule, loss, s rule, LoRA rank, seed, budget).
Seeds pair the methods: seed ``k`` gives every method the same training draws and the same
evaluation noise, so per-seed ratios compare like with like.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tcd_core.distill import DistillConfig

from .sampling import as_eps_net, sample_lcm, sample_sss
from .setups import Metrics, Setup
from .teacher import CACHE_DIR
from .train import TrainSpec, distill, model_fns

STEPS = (1, 2, 4, 8)
GAMMAS = (0.0, 0.2, 0.3, 0.5)
BEST_OF_GAMMAS = (0.0, 0.3, 0.5)  # the targets' "best gamma of 0 / 0.3 / 0.5"
NUM_DDIM_TIMESTEPS = 50


@dataclass(frozen=True)
class Cell:
    method: str  # "lcm" | "tcd"
    ema_decay: float = 0.95  # the node's default (tcd_core.distill.DistillConfig)
    loss: str = "l2"
    s_rule: str = "uniform"
    s_zero_share: float = 0.2
    lora_rank: int = 0
    seed: int = 0
    iterations: int = 2000
    batch: int = 256
    lr: float = 1e-4  # the node's default (nodes/distill_training.TrainSettings.learning_rate)

    def config(self) -> DistillConfig:
        """Unguided distillation (Algorithm 1): the toy teachers are unconditional."""
        return DistillConfig(
            method=self.method,
            num_ddim_timesteps=NUM_DDIM_TIMESTEPS,
            guidance_min=0.0,
            guidance_max=0.0,
            loss=self.loss,
            s_rule=self.s_rule,
            s_zero_share=self.s_zero_share,
            ema_decay=self.ema_decay,
        ).validate()

    def train_spec(self) -> TrainSpec:
        return TrainSpec(self.iterations, self.batch, self.lr, self.lora_rank, self.seed)

    def settings(self) -> str:
        """Target rule, loss, s rule and weights, e.g. "EMA 0.95, l2, uniform, full" (the report's headings)."""
        target = f"EMA {self.ema_decay}" if self.ema_decay else "stop-grad"
        rule = self.s_rule if self.method == "tcd" else "s=0"
        if self.method == "tcd" and self.s_rule != "uniform":
            rule += f" {self.s_zero_share}"
        weights = f"LoRA r{self.lora_rank}" if self.lora_rank else "full"
        return f"{target}, {self.loss}, {rule}, {weights}"

    def label(self) -> str:
        return f"{self.method.upper()} ({self.settings()})"


class MissingCell(LookupError):
    """A student the run was told not to train (``train=False``) is not in the cache."""


class Bench:
    """Students and scores for one case, cached on disk (``use_cache=False``: always recompute)."""

    def __init__(self, setup: Setup, use_cache: bool = True, log=print, train: bool = True) -> None:
        self.setup = setup
        self.use_cache = use_cache
        self.train = train
        self.log = log
        self.teacher = setup.load_teacher()
        self.students: dict[Cell, nn.Module] = {}
        self.scores_dir = (
            CACHE_DIR / "scores" / f"{setup.name}-{setup.teacher_spec.key()}-n{setup.n_eval}{setup.score_id}"
        )
        self.scores: dict[str, Metrics] = {}

    def _key(self, cell: Cell) -> str:
        if cell.method == "lcm":  # LCM ignores s and draws nothing for it: one student for every s rule
            cell = replace(cell, s_rule="uniform", s_zero_share=0.2)
        text = json.dumps({"teacher": self.setup.teacher_spec.key(), **asdict(cell)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def student(self, cell: Cell) -> nn.Module:
        if cell in self.students:
            return self.students[cell]
        path = CACHE_DIR / "students" / f"{self.setup.name}-{self._key(cell)}.pt"
        if self.use_cache and path.exists():
            module = model_fns(self.teacher, cell.train_spec())[0]
            module.load_state_dict(torch.load(path, weights_only=True))
            for p in module.parameters():
                p.requires_grad_(False)
            module.eval()
        elif not self.train:
            raise MissingCell(f"{cell.label()} seed {cell.seed}")
        else:
            self.log(f"  distilling {self.setup.name}: {cell.label()} seed {cell.seed} ...")
            module = distill(self.teacher, cell.config(), cell.train_spec(), self.setup.draw_batch)
            if self.use_cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.part")
                torch.save(module.state_dict(), partial)
                partial.replace(path)  # atomic: parallel runs never read a half-written student
        self.students[cell] = module
        return module

    def noise(self, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randn(self.setup.n_eval, self.setup.dim, generator=gen)

    def sample(self, net: nn.Module, sampler: str, steps: int, seed: int) -> torch.Tensor:
        """``sampler``: "lcm" (LCM multistep) or "sss<gamma>" (gamma 0 = DDIM)."""
        fn = as_eps_net(net)
        noise_seed = 2000 + 10 * seed + steps
        if sampler == "lcm":
            return sample_lcm(fn, self.noise(seed), steps, NUM_DDIM_TIMESTEPS, noise_seed)
        return sample_sss(fn, self.noise(seed), steps, float(sampler[3:]), NUM_DDIM_TIMESTEPS, noise_seed)

    def score(self, cell: Cell | None, sampler: str, steps: int, seed: int) -> Metrics:
        """Metrics of ``cell``'s student (None: the teacher) with ``sampler`` at ``steps``."""
        who = "teacher" if cell is None else self._key(cell)
        key = f"{who}|{sampler}|{steps}|{seed}"
        path = self.scores_dir / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")
        if key not in self.scores and self.use_cache and path.exists():
            self.scores[key] = json.loads(path.read_text())  # one file per score: parallel runs share the cache
        if key not in self.scores:
            net = self.teacher if cell is None else self.student(cell)
            self.scores[key] = self.setup.score(self.sample(net, sampler, steps, seed))
            if self.use_cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(self.scores[key]))
        return self.scores[key]

    # ---- derived quantities -------------------------------------------------------------------

    def precondition(self, seeds: tuple[int, ...] = (0,)) -> dict[str, float]:
        """Teacher DDIM-50 against the data-vs-data floor, in every metric (ratio <= 1.5 required),
        averaged over the evaluation seeds (one draw's distance is noisy: a 400-sample digits FD spreads by a third)."""
        scores = [self.score(None, "sss0.0", 50, seed) for seed in seeds]
        metrics = [m for m in ("swd", "fd") if m in self.setup.floor]
        return {m: statistics.fmean(sc[m] for sc in scores) / self.setup.floor[m] for m in metrics}

    def values(self, cell: Cell | None, sampler: str, steps: int, seeds: list[int], metric: str) -> list[float]:
        return [self.score(None if cell is None else replace(cell, seed=s), sampler, steps, s)[metric] for s in seeds]

    def best_gamma(self, cell: Cell, steps: int, seeds: list[int], metric: str) -> str:
        """The SSS gamma of BEST_OF_GAMMAS with the lowest seed-mean distance at ``steps``."""
        options = [f"sss{g}" for g in BEST_OF_GAMMAS]
        return min(options, key=lambda s: statistics.fmean(self.values(cell, s, steps, seeds, metric)))

    def paired_ratios(self, tcd: Cell, lcm: Cell, steps: int, seeds: list[int], metric: str) -> tuple[str, list[float]]:
        """(best gamma, per-seed ratio TCD-SSS(best gamma) / LCM-LCM-sampling) at ``steps``."""
        sampler = self.best_gamma(tcd, steps, seeds, metric)
        t = self.values(tcd, sampler, steps, seeds, metric)
        c = self.values(lcm, "lcm", steps, seeds, metric)
        return sampler, [a / b for a, b in zip(t, c, strict=True)]


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    mean, spread = mean_spread(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def ratio_of_means(a: list[float], b: list[float]) -> float:
    return statistics.fmean(a) / statistics.fmean(b)


def cache_dir() -> Path:
    return CACHE_DIR
