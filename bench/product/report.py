"""The markdown report and the loss-curve plot from ``run``'s result dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .sampling import CONTROL_SAMPLERS, LCM_SAMPLERS, REFERENCE_SAMPLER, TCD_SAMPLERS, TEACHER_SAMPLERS
from .targets import TARGET_TEXT, cells, judge, mean


def cell_text(cell: dict[int, dict], metric: str) -> str:
    if not cell:
        return "-"
    seeds = " / ".join(f"{row[metric]:.2f}" for _, row in sorted(cell.items()))
    return f"**{mean(cell, metric):.2f}** ({seeds})" if len(cell) > 1 else f"{mean(cell, metric):.2f}"


def table(rows: list[dict], teacher: str, entries: list[tuple[str, str]], steps: list[int], metric: str) -> list[str]:
    lines = ["| who | sampler | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for who, sampler in entries:
        values = [cell_text(cells(rows, teacher, who, sampler, s), metric) for s in steps]
        lines.append(f"| {who} | {sampler} | " + " | ".join(values) + " |")
    return lines


def sensitivity(result: dict, teacher: str, steps: list[int]) -> list[str]:
    """Students at other learning rates and settings next to the default ones (FD ref; not judged)."""
    extra = [s for s in result["students"] if s["teacher"] == teacher and (s.get("lr") or s.get("overrides"))]
    if not extra:
        return []
    seeds = sorted({s["seed"] for s in extra})
    rows = [r for r in result["rows"] if r["seed"] in seeds]
    samplers = {"tcd": [c.label for c in TCD_SAMPLERS], "lcm": [c.label for c in LCM_SAMPLERS]}
    entries = []
    for student in [s for s in result["students"] if s["teacher"] == teacher and s["seed"] in seeds]:
        entries += [(student.get("label", student["method"]), label) for label in samplers[student["method"]]]
    lines = [
        "",
        f"### Sensitivity: the node's learning rate and other settings (seed {', '.join(map(str, seeds))}; not judged)",
        "",
        "FD to the teacher's reference; `tcd` / `lcm` = the node's defaults (lr 1e-4, EMA 0.95, huber, s uniform, "
        "rank 64); other rows change the named widget(s) only.",
        "",
    ]
    lines += table(rows, teacher, list(dict.fromkeys(entries)), steps, "fd_ref")
    return lines


def teachers_table(result: dict) -> list[str]:
    """How each teacher was trained: one Markdown row each."""
    lines = ["", "| teacher | how trained | training time | final loss |", "|---|---|---|---|"]
    for t in result["teachers"]:
        lines.append(f"| {t['name']} | {t['describe']} | {t['seconds'] / 60:.1f} min | {t['loss'][-1]:.4f} |")
    return lines


def timings(result: dict) -> list[str]:
    """One line per student: training time, node steps, the loss at the start and the end, the LoRA's size."""
    return [
        f"- student {s['teacher']} {s.get('label', s['method'])} seed {s['seed']}: {s['seconds']:.0f} s "
        f"({len(s['loss'])} node steps), loss first 20 mean {sum(s['loss'][:20]) / 20:.5f}, "
        f"last 20 mean {sum(s['loss'][-20:]) / 20:.5f}, LoRA size ||dW|| / ||W|| {s['update']:.4f}"
        for s in result["students"]
    ]


def write_outputs(result: dict, out_dir: Path, prefix: str, command: str, markdown: Any) -> Path:
    """``<prefix>_results.json``, the loss plot (when there are students) and ``<prefix>_results.md`` (made by
    ``markdown(result, command, plot_name)``) in ``out_dir``; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{prefix}_results.json").write_text(json.dumps(result, indent=1))
    plot_name = f"{prefix}_losses.png" if result["students"] else None
    if plot_name:
        plot_losses(result, out_dir / plot_name)
    report = out_dir / f"{prefix}_results.md"
    report.write_text(markdown(result, command, plot_name))
    print(f"wrote {report} (made by: {command})")
    return report


def plot_losses(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t["name"] for t in result["teachers"]]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for student in [s for s in result["students"] if s["teacher"] == name]:
            loss = student["loss"]
            window = max(1, len(loss) // 25)
            smooth = [
                sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1])
                for i in range(len(loss))
            ]
            ax.plot(
                smooth,
                color="C0" if student["method"] == "tcd" else "C1",
                alpha=0.5 + 0.15 * student["seed"],
                label=f"{student.get('label', student['method'])} seed {student['seed']}",
            )
        ax.set_yscale("log")
        ax.set_title(f"teacher {name}: distillation loss (running mean)")
        ax.set_xlabel("node step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(result: dict, command: str, plot_name: str) -> str:
    plan, rows = result["plan"], result["rows"]
    steps = list(plan["step_counts"])
    ref_steps = plan["reference_steps"]
    lines = [
        "# Product distillation benchmark (bench/product)",
        "",
        f"Made by `{command}`; this invocation ran {result['seconds'] / 60:.1f} min, reusing what earlier "
        "invocations trained and scored (cached under $TCD_DEV_DIR/bench-product/; training times below).",
        "",
        "ComfyUI's SD1.5 UNet class (scaled down) as the teacher, trained on scikit-learn's 8x8 digits as "
        "[4, 8, 8] latents (2x nearest upsampling, pixel unshuffle; decoded by the exact left inverse), "
        "class-conditional through CONDITIONING (a fixed embedding per class, an empty negative, CFG dropout). "
        "Students trained only by the pack's TCD Distill LoRA node (in-process), guidance "
        f"w = {result['guidance_w']:g} (guidance_min = guidance_max), so the reference is the teacher's "
        f"{ref_steps}-step DDIM at CFG {result['cfg']:g}; node defaults except steps {plan['student_steps']}, "
        f"batch_size {plan['student_batch']}, seed, training_dtype fp32, gradient_checkpointing off (memory only). "
        "Students sampled at CFG 1 with ComfyUI's LoRA loading and sample_custom. "
        f"Every evaluation: {plan['n_eval']} class-balanced samples.",
        "",
        "FD ref = Frechet distance (digit classifier features) to the teacher's "
        f"{ref_steps}-step samples ({plan['n_reference']}); FD held-out = to the held-out digits; acc = share "
        "classified as the conditioned class. Cells: **3-seed mean** (seed 0 / 1 / 2). Rows `no-lora`: the "
        "students' samplers on the teacher itself at CFG 1 (what the LoRA changed).",
        "",
        "The node's training path agrees with ComfyUI's sampling path on the same tensors (timestep / sigma, "
        "the guided teacher step, the TCD step): `python -m bench.product.checks`, output in "
        "[product_checks.txt](product_checks.txt).",
        "",
        "## Teachers",
        *teachers_table(result),
    ]
    for t in result["teachers"]:
        name = t["name"]
        own = [("teacher", c.label) for c in TEACHER_SAMPLERS]
        students = [("tcd", c.label) for c in TCD_SAMPLERS] + [("lcm", c.label) for c in LCM_SAMPLERS]
        students += [("no-lora", c.label) for c in CONTROL_SAMPLERS]
        ref = cells(rows, name, "teacher", REFERENCE_SAMPLER.label, ref_steps)
        lines += [
            "",
            f"## Teacher {name}",
            "",
            f"Teacher {ref_steps}-step DDIM at CFG {result['cfg']:g} (fresh seeds): FD ref {cell_text(ref, 'fd_ref')}"
            f" (the sampling floor), FD held-out {cell_text(ref, 'fd_test')}, acc {cell_text(ref, 'acc')}.",
            "",
            f"### FD to the teacher's {ref_steps}-step samples",
            "",
        ]
        lines += table(rows, name, own + students, steps, "fd_ref")
        lines += ["", "### FD to held-out data", ""]
        lines += table(rows, name, own + students, steps, "fd_test")
        lines += ["", "### Class accuracy", ""]
        lines += table(rows, name, own + students, steps, "acc")
        lines += ["", "### Targets", ""]
        for v in judge(rows, name, tuple(steps), ref_steps):
            lines.append(f"- ({v.target}) {v.steps} steps: **{'met' if v.passed else 'MISSED'}**: {v.detail}")
        lines += sensitivity(result, name, steps)
    lines += [
        "",
        "Targets: " + "; ".join(f"({k}) {text}" for k, text in TARGET_TEXT.items()) + ".",
        "",
        "## Loss curves",
        "",
        f"![loss curves]({plot_name})",
        "",
        "## Timings",
        "",
    ]
    lines += timings(result)
    return "\n".join(lines) + "\n"
