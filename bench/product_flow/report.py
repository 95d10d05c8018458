"""The flow benchmark's markdown report from ``bench.product.run``'s result dict (bench/product's tables and plot)."""

from __future__ import annotations

from bench.product.report import cell_text, sensitivity, table, teachers_table, timings
from bench.product.targets import cells

from .sampling import EULER, FLOW_SAMPLERS
from .targets import TARGET_TEXT, judge


def _entries(students: bool) -> list[tuple[str, str]]:
    s = FLOW_SAMPLERS
    entries = [("teacher", c.label) for c in s.teacher]
    if students:
        entries += [("tcd", c.label) for c in s.tcd] + [("lcm", c.label) for c in s.lcm]
    return entries + [("no-lora", c.label) for c in s.control]


def markdown(result: dict, command: str, plot_name: str | None) -> str:
    plan, rows = result["plan"], result["rows"]
    steps = list(plan["step_counts"])
    ref_steps = plan["reference_steps"]
    students = bool(result["students"])
    lines = [
        "# Flow distillation benchmark (bench/product_flow)",
        "",
        f"Made by `{command}`; this invocation ran {result['seconds'] / 60:.1f} min, reusing what earlier "
        "invocations trained and scored (cached under $TCD_DEV_DIR/bench-product/, flow-* files).",
        "",
        "ComfyUI's SD3 model class (MMDiT, scaled down; flow prediction on SD3's shift-3 sigma table) as the teacher, "
        "trained here by flow matching through its own `model_sampling` and `apply_model` on scikit-learn's 8x8 "
        "digits as [16, 8, 8] latents (a fixed random channel direction per pixel; decoded by its exact left "
        "inverse), class-conditional through CONDITIONING (a fixed context and pooled vector per class, an empty "
        "negative pair, CFG dropout), sampled with true CFG "
        f"{result['cfg']:g}. Students (w = {result['guidance_w']:g}, so the reference is the teacher's "
        f"{ref_steps}-step Euler at CFG {result['cfg']:g}) trained only by the pack's TCD Distill LoRA node, "
        f"node defaults except steps {plan['student_steps']}, batch_size {plan['student_batch']}, seed, fp32, "
        "gradient checkpointing off; sampled at CFG 1 with ComfyUI's LoRA loading and sample_custom. "
        f"Every evaluation: {plan['n_eval']} class-balanced samples; the same classifier, Frechet distance, seeds "
        "and table form as bench/product.",
        "",
        "FD ref = Frechet distance (digit classifier features) to the teacher's "
        f"{ref_steps}-step Euler samples ({plan['n_reference']}); FD held-out = to the held-out digits; acc = share "
        "classified as the conditioned class. Cells: **3-seed mean** (seed 0 / 1 / 2). `no-lora`: the students' "
        "samplers on the teacher itself at CFG 1.",
        "",
        "## Teacher",
        *teachers_table(result),
    ]
    for t in result["teachers"]:
        name = t["name"]
        ref = cells(rows, name, "teacher", EULER.label, ref_steps)
        entries = _entries(students)
        lines += [
            "",
            f"## Teacher {name}",
            "",
            f"Teacher {ref_steps}-step Euler at CFG {result['cfg']:g} (fresh seeds): FD ref {cell_text(ref, 'fd_ref')}"
            f" (the sampling floor), FD held-out {cell_text(ref, 'fd_test')}, acc {cell_text(ref, 'acc')}.",
            "",
            f"### FD to the teacher's {ref_steps}-step Euler samples",
            "",
        ]
        lines += table(rows, name, entries, steps, "fd_ref")
        lines += ["", "### FD to held-out data", ""]
        lines += table(rows, name, entries, steps, "fd_test")
        lines += ["", "### Class accuracy", ""]
        lines += table(rows, name, entries, steps, "acc")
        lines += ["", "### Targets", ""]
        verdicts = judge(rows, name, tuple(steps))
        for v in verdicts:
            lines.append(f"- ({v.target}) {v.steps} steps: **{'met' if v.passed else 'MISSED'}**: {v.detail}")
        if not verdicts:
            lines.append("- not judged: no students in this run (`--teacher-only`)")
        lines += sensitivity(result, name, steps)
    lines += ["", "Targets: " + "; ".join(f"({k}) {text}" for k, text in TARGET_TEXT.items()) + "."]
    if plot_name:
        lines += ["", "## Loss curves", "", f"![loss curves]({plot_name})"]
    lines += ["", "## Timings", ""]
    lines += timings(result)
    return "\n".join(lines) + "\n"
