"""The benchmark's sizes: the full run and --quick."""

from __future__ import annotations

from dataclasses import dataclass

from .teacher import TeacherSpec

GUIDANCE_W = 2.0
"""The distilled guidance: LCM's w = 2 (guidance_min = guidance_max = 2), i.e. the teacher's CFG 3."""


@dataclass(frozen=True)
class Plan:
    teachers: tuple[TeacherSpec, ...]
    seeds: tuple[int, ...]
    student_steps: int
    student_batch: int
    n_eval: int  # samples per evaluation, class-balanced
    n_reference: int  # teacher 50-step reference samples
    step_counts: tuple[int, ...] = (1, 2, 4, 8)
    reference_steps: int = 50
    sensitivity_lrs: tuple[float, ...] = ()  # extra students at these learning rates (not judged)
    sensitivity_seeds: tuple[int, ...] = (0,)
    ablations: tuple[tuple[tuple[str, object], ...], ...] = ()  # TCD students with these node widgets
    ablation_teachers: tuple[str, ...] = ()
    ablation_seeds: tuple[int, ...] = (0,)
    confirmations: tuple[tuple[tuple[str, object], ...], ...] = ()  # ablations also run on every other teacher
    long_ablations: tuple[tuple[tuple[str, object], ...], ...] = ()  # costly ablations: first ablation seed only
    students: bool = True  # False: the teachers' rows and the no-LoRA controls only


FULL = Plan(
    teachers=(
        TeacherSpec("small", model_channels=32, iterations=800),
        TeacherSpec("base", model_channels=32, iterations=2500),
    ),
    seeds=(0, 1, 2),
    student_steps=400,
    student_batch=16,
    n_eval=400,
    n_reference=800,
    sensitivity_lrs=(),  # lr 1e-3 trained far worse students at 1-8 steps in the runs before (BENCHMARKS.md)
    ablations=(
        (("ema_decay", 0.0),),  # stop-grad target, as the LCM-LoRA scripts
        (("loss", "l2"),),  # the default before Huber (diffusers' --loss_type default)
        (("s_rule", "uniform+zero"), ("s_zero_share", 0.5)),  # trains the jumps to s = 0
        (("rank", 16),),
        (("learning_rate", 5e-5),),  # half the default: a smaller step than diffusers' (ComfyUI's adapter init)
    ),
    long_ablations=(
        (("steps", 1200), ("loss", "l2")),  # 3x the budget, beside the l2 row: closes the 4-step gap?
        (("steps", 1200),),  # the same with the Huber default
        (("steps", 1200), ("learning_rate", 3e-5)),  # 3x the steps at a third of the lr: drift or under-training?
    ),
    ablation_teachers=("base",),
    ablation_seeds=(0, 1, 2),
    confirmations=(  # the base teacher's ablations that kept a default, on the small teacher too
        (("loss", "l2"),),
        (("ema_decay", 0.0),),
        (("s_rule", "uniform+zero"), ("s_zero_share", 0.5)),
        (("rank", 16),),
    ),
)
QUICK = Plan(
    teachers=(TeacherSpec("quick", model_channels=32, iterations=150),),
    seeds=(0,),
    student_steps=12,
    student_batch=8,
    n_eval=100,
    n_reference=200,
    step_counts=(1, 2, 4),
    reference_steps=20,
)
