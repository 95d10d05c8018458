"""Train what is missing, sample every cell through ComfyUI, score it (scores cached by their settings)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import torch

from .data import balanced_labels, load_digits
from .env import cache_dir, comfy, digest
from .metrics import Scorer, train_classifier
from .sampling import SamplerConfig, sample
from .specs import GUIDANCE_W, Plan
from .students import StudentSpec, distill, lora_update, student_model
from .teacher import load_teacher

SCORE_VERSION = "v1"  # bump when the scoring rule changes
REFERENCE_SEED = 99


def sampling_seed(seed: int) -> int:
    return 1000 + seed


class ScoreCache:
    """Scores keyed by a digest of everything that made them, in one JSON file per teacher."""

    def __init__(self, name: str) -> None:
        self.path = cache_dir() / f"scores-{name}.json"
        self.data: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: Any, compute: Any) -> dict:
        k = digest([SCORE_VERSION, key])
        if k not in self.data:
            self.data[k] = compute()
            self.path.write_text(json.dumps(self.data))
        return self.data[k]


def run(plan: Plan, log: Any = print) -> dict:
    """Every number of the report, as a JSON-able dict.

    A teacher spec's class is its model family (bench/product's eps teachers, bench/product_flow's flow teachers):
    it names the latents (``codec``), the samplers and the cache files' prefix. ``plan.students`` False: teachers
    and no-LoRA rows only."""
    start = time.time()
    host = comfy()
    digits = load_digits()
    classifier = train_classifier(digits)
    cfg = GUIDANCE_W + 1.0
    labels = balanced_labels(plan.n_eval)
    out: dict = {"plan": asdict(plan), "guidance_w": GUIDANCE_W, "cfg": cfg, "teachers": [], "rows": [], "students": []}
    for spec in plan.teachers:
        teacher, prompts, tinfo = load_teacher(spec, log)
        family, codec, prefix = spec.samplers, spec.codec, spec.file_prefix
        out["teachers"].append({"name": spec.name, "describe": spec.describe(), "key": spec.key(), **tinfo})
        ref_key = [spec.key(), plan.reference_steps, plan.n_reference, cfg, REFERENCE_SEED]
        ref_path = cache_dir() / f"{prefix}reference-{spec.name}-{digest(ref_key)}.pt"
        if ref_path.exists():
            reference = torch.load(ref_path, weights_only=True)
        else:
            log(
                f"teacher {spec.name}: {plan.reference_steps}-step reference, {plan.n_reference} samples at CFG {cfg:g}"
            )
            ref_labels = balanced_labels(plan.n_reference)
            reference = sample(
                host, teacher, family.reference, plan.reference_steps, cfg, ref_labels, prompts, REFERENCE_SEED,
                codec,
            )  # fmt: skip
            torch.save(reference, ref_path)
        scorer = Scorer(digits, classifier, reference)
        cache = ScoreCache(f"{prefix}{spec.name}-{spec.key()}")

        def cell(
            model: Any,
            who: str,
            model_key: Any,
            conf: SamplerConfig,
            steps: int,
            cfg_: float,
            seed: int,
            spec_name: str = spec.name,
            scorer: Scorer = scorer,
            cache: ScoreCache = cache,
            prompts: Any = prompts,
            ref_key: Any = ref_key,
            codec: Any = codec,
        ) -> None:
            key = [model_key, asdict(conf), steps, cfg_, sampling_seed(seed), plan.n_eval, ref_key]

            def compute() -> dict:
                t0 = time.time()
                x = sample(host, model, conf, steps, cfg_, labels, prompts, sampling_seed(seed), codec)
                return {**scorer(x, labels), "seconds": time.time() - t0}

            scores = cache.get(key, compute)
            out["rows"].append(
                {"teacher": spec_name, "who": who, "sampler": conf.label, "steps": steps, "seed": seed, **scores}
            )
            log(
                f"  {spec_name} seed {seed} {who:7s} {conf.label:20s} {steps:2d} steps: FD ref {scores['fd_ref']:7.2f}"
                f"  FD held-out {scores['fd_test']:7.2f}  acc {scores['acc']:.3f}"
            )

        for seed in plan.seeds:
            for conf in family.teacher:
                for steps in plan.step_counts:
                    cell(teacher, "teacher", spec.key(), conf, steps, cfg, seed)
            cell(teacher, "teacher", spec.key(), family.reference, plan.reference_steps, cfg, seed)
            for conf in family.control:  # the students' samplers on the teacher itself (no LoRA) at CFG 1
                for steps in plan.step_counts:
                    cell(teacher, "no-lora", spec.key(), conf, steps, 1.0, seed)
            if not plan.students:
                continue
            lrs = [None, *(plan.sensitivity_lrs if seed in plan.sensitivity_seeds else ())]
            both = (("tcd", family.tcd), ("lcm", family.lcm))
            variants = [(lr, (), both) for lr in lrs]
            if seed in plan.ablation_seeds:
                chosen = plan.ablations if spec.name in plan.ablation_teachers else plan.confirmations
                if spec.name in plan.ablation_teachers and seed == plan.ablation_seeds[0]:
                    chosen = (*chosen, *plan.long_ablations)
                variants += [(None, overrides, (("tcd", family.tcd),)) for overrides in chosen]
            for lr, overrides, methods in variants:
                for method, samplers in methods:
                    sspec = StudentSpec(
                        method, plan.student_steps, plan.student_batch, seed, GUIDANCE_W, learning_rate=lr,
                        overrides=overrides,
                    )  # fmt: skip
                    lora, sinfo = distill(host, teacher, spec.key(), prompts, sspec, log, codec, prefix)
                    out["students"].append(
                        {
                            "teacher": spec.name,
                            "method": method,
                            "label": sspec.label,
                            "lr": lr,
                            "overrides": dict(overrides),
                            "seed": seed,
                            "seconds": sinfo["seconds"],
                            "loss": sinfo["loss"],
                            "update": lora_update(teacher, lora),
                        }
                    )
                    model = student_model(teacher, lora)
                    model_key = [spec.key(), sspec.key_fields(), sinfo["widgets"]]
                    for conf in samplers:
                        for steps in plan.step_counts:
                            cell(model, sspec.label, model_key, conf, steps, 1.0, seed)
    out["seconds"] = time.time() - start
    return out
