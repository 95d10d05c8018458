"""The flow benchmark's sizes: the full run and --quick (bench/product's Plan, flow teachers)."""

from __future__ import annotations

from bench.product.specs import Plan

from .teacher import FlowTeacherSpec

FULL = Plan(
    teachers=(FlowTeacherSpec("mmdit", iterations=2500),),
    seeds=(0, 1, 2),
    student_steps=400,
    student_batch=16,
    n_eval=400,
    n_reference=800,
    ablations=(
        (("loss", "l2"),),  # the default before Huber (not judged): does Huber win on a flow teacher too?
        (("learning_rate", 5e-5),),  # half the lr, as on the eps teachers (not judged)
    ),
    long_ablations=((("steps", 1200),),),  # three times the budget, first seed only (not judged)
    ablation_teachers=("mmdit",),
    ablation_seeds=(0, 1, 2),
)
QUICK = Plan(
    teachers=(FlowTeacherSpec("mmdit-quick", iterations=150),),
    seeds=(0, 1),  # two: the per-seed loop runs twice
    student_steps=12,
    student_batch=8,
    n_eval=100,
    n_reference=200,
    reference_steps=20,
)
