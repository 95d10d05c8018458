"""Tables (Markdown), target verdicts and plots of the distillation benchmark."""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

from .run import GAMMAS, STEPS, Bench, Cell, MissingCell, fmt, ratio_of_means

RING_TARGET = 0.8  # TCD / LCM at 4 and 8 steps, every seed's paired ratio below 1
DIGITS_TARGET = 0.85  # at 8 steps
LORA_TARGET = 1.0  # at 8 steps, 3-seed mean
LEARNING_RATES = (1e-4, 3e-4, 1e-3)  # the lr sweep of both methods (1e-4, the node's default, is the main tables')
S_RULES = (
    ("uniform", 0.2),
    ("uniform+zero", 0.25),
    ("uniform+zero", 0.5),
    ("uniform+zero", 0.75),
    ("uniform+zero-ramp", 0.5),
    ("uniform+zero-ramp", 1.0),
)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


class Report:
    def __init__(self, out: Path, seeds: list[int], iterations: int) -> None:
        self.out = out
        self.seeds = seeds
        self.iterations = iterations
        self.lines: list[str] = []
        self.verdicts: list[str] = []
        self.judging = True  # False while a case whose teacher failed the precondition is reported

    # ---- output -----------------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.line(_row(header))
        self.line(_row(["---"] * len(header)))
        for row in rows:
            self.line(_row(row))
        self.line()

    def rewind(self, mark: int) -> None:
        """Drop the lines (and verdicts) written after ``mark``: a section that could not finish."""
        dropped = self.lines[mark:]
        del self.lines[mark:]
        self.verdicts = [v for v in self.verdicts if v not in dropped]
        print("(section above withdrawn: a student is not cached)", flush=True)

    def progress(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def verdict(self, text: str, met: bool) -> None:
        if not self.judging:
            entry = f"- {text}: not judged (the teacher failed the precondition)"
        else:
            entry = f"- {text}: **{'met' if met else 'NOT met'}**"
        self.verdicts.append(entry)
        self.line(entry)

    def flush(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.verdicts:
            self.lines += ["", "### Targets", "", *self.verdicts]
        (self.out / "distill_results.md").write_text("\n".join(self.lines) + "\n")

    def header(self, command: str) -> None:
        self.line(f"Command: `{command}`; seeds {self.seeds}, {self.iterations} iterations per student.")
        self.line()

    # ---- sections ---------------------------------------------------------------------------

    def teacher(self, bench: Bench) -> None:
        s = bench.setup
        spec = s.teacher_spec
        origin = "loaded from cache" if s.teacher_cached else "trained now"
        self.line(f"## {s.name}")
        self.line()
        self.line(
            f"Teacher: {spec.describe()}, {spec.iterations} iterations, "
            f"batch {spec.batch} ({origin}); {s.n_eval} samples per evaluation."
        )
        floor = ", ".join(f"{k} {v:.4f}" for k, v in s.floor.items())
        self.line(f"Data-vs-data floor: {floor}.")
        if s.classifier_accuracy is not None:
            self.line(f"Feature classifier: held-out accuracy {s.classifier_accuracy:.3f}.")
        t50 = bench.score(None, "sss0.0", 50, 0)
        values = ", ".join(f"{k} {v:.4f}" for k, v in t50.items())
        self.line(f"Teacher DDIM-50, seed 0 (the precondition below takes the seed mean): {values}.")
        self.line()

    def _samplers(self) -> list[tuple[str, str, str]]:
        """(method, sampler, label) rows of the main table."""
        rows = [("lcm", "lcm", "LCM student, LCM sampling")]
        rows += [("lcm", f"sss{g}", f"LCM student, SSS gamma {g}") for g in GAMMAS]
        rows += [("tcd", f"sss{g}", f"TCD student, SSS gamma {g}") for g in GAMMAS]
        rows += [("tcd", "lcm", "TCD student, LCM sampling")]
        return rows

    def _method_table(self, bench: Bench, base: Cell, seeds: list[int], metric: str) -> None:
        header = ["student, sampler", *[f"{n} step{'s' if n > 1 else ''}" for n in STEPS]]
        rows = [["teacher, DDIM", *[fmt(bench.values(None, "sss0.0", n, seeds, metric), 4) for n in STEPS]]]
        for method, sampler, label in self._samplers():
            cell = replace(base, method=method)
            rows.append([label, *[fmt(bench.values(cell, sampler, n, seeds, metric), 4) for n in STEPS]])
        self.table(header, rows)

    def _ratios(
        self, bench: Bench, base: Cell, seeds: list[int], metric: str
    ) -> dict[int, tuple[str, list[float], float]]:
        tcd, lcm = replace(base, method="tcd"), replace(base, method="lcm")
        out = {}
        for n in STEPS:
            sampler, per_seed = bench.paired_ratios(tcd, lcm, n, seeds, metric)
            mean_ratio = ratio_of_means(
                bench.values(tcd, sampler, n, seeds, metric), bench.values(lcm, "lcm", n, seeds, metric)
            )
            out[n] = (sampler, per_seed, mean_ratio)
        return out

    def _ratio_table(self, ratios: dict[int, tuple[str, list[float], float]], metric: str) -> None:
        header = ["steps", "best SSS gamma", f"TCD / LCM {metric.upper()} (seed means)", "per-seed paired ratios"]
        rows = [
            [str(n), sampler[3:], f"**{mean:.3f}**", ", ".join(f"{r:.3f}" for r in per_seed)]
            for n, (sampler, per_seed, mean) in ratios.items()
        ]
        self.table(header, rows)

    def main_table(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        s = bench.setup
        self.line(f"### {s.name}: ({base.settings()}, lr {base.lr:g}), {len(seeds)} seeds (mean ± std)")
        self.line()
        metrics = [s.primary] + [m for m in ("swd",) if m != s.primary]
        for metric in metrics:
            self.line(f"{metric.upper()} (lower is better; floor {s.floor[metric]:.4f}):")
            self.line()
            self._method_table(bench, base, seeds, metric)
        if s.name == "ring":
            self._coverage(bench, base, seeds)
        ratios = self._ratios(bench, base, seeds, s.primary)
        self.line(
            f"TCD student (SSS, best gamma of 0 / 0.3 / 0.5) against LCM student (LCM sampling), {s.primary.upper()}:"
        )
        self.line()
        self._ratio_table(ratios, s.primary)
        if s.name == "ring":
            for n in (4, 8):
                _, per_seed, mean = ratios[n]
                self.verdict(
                    f"ring, {n} steps: TCD/LCM SWD {mean:.3f} <= {RING_TARGET}, every seed < 1 "
                    f"({', '.join(f'{r:.2f}' for r in per_seed)})",
                    mean <= RING_TARGET and all(r < 1 for r in per_seed),
                )
        else:
            _, _, mean = ratios[8]
            self.verdict(f"digits, 8 steps: TCD/LCM FD {mean:.3f} <= {DIGITS_TARGET}", mean <= DIGITS_TARGET)
        self.line()

    def _coverage(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        header = ["student, sampler", *[f"{n} steps: modes / in 3 std" for n in STEPS]]
        rows = []
        for label, cell, sampler in (
            ("teacher, DDIM", None, "sss0.0"),
            ("LCM student, LCM sampling", replace(base, method="lcm"), "lcm"),
            ("TCD student, SSS gamma 0.3", replace(base, method="tcd"), "sss0.3"),
            ("TCD student, SSS gamma 0", replace(base, method="tcd"), "sss0.0"),
        ):
            cols = []
            for n in STEPS:
                modes = statistics.fmean(bench.values(cell, sampler, n, seeds, "modes"))
                near = statistics.fmean(bench.values(cell, sampler, n, seeds, "in_3std"))
                cols.append(f"{modes:.2f} / {near:.2f}")
            rows.append([label, *cols])
        self.line(
            "Mode coverage (share of the 8 modes holding >= 2.5% of samples / share of samples within 3 std of a mode):"
        )
        self.line()
        self.table(header, rows)

    def lora(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        s = bench.setup
        cell = replace(base, lora_rank=8, lr=1e-3)
        self.line(f"### {s.name}: LoRA rank 8 instead of full fine-tuning (lr {cell.lr}), {s.primary.upper()}")
        self.line()
        header = ["student, sampler", *[f"{n} steps" for n in STEPS]]
        tcd, lcm = replace(cell, method="tcd"), replace(cell, method="lcm")
        rows = [["LCM LoRA, LCM sampling", *[fmt(bench.values(lcm, "lcm", n, seeds, s.primary), 4) for n in STEPS]]]
        for g in (0.0, 0.3, 0.5):
            rows.append(
                [
                    f"TCD LoRA, SSS gamma {g}",
                    *[fmt(bench.values(tcd, f"sss{g}", n, seeds, s.primary), 4) for n in STEPS],
                ]
            )
        self.table(header, rows)
        ratios = self._ratios(bench, cell, seeds, s.primary)
        self._ratio_table(ratios, s.primary)
        _, _, mean = ratios[8]
        self.verdict(f"{s.name}, LoRA rank 8, 8 steps: TCD/LCM {mean:.3f} <= {LORA_TARGET}", mean <= LORA_TARGET)
        self.line()

    def ablation_target_loss(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        s = bench.setup
        settings = f"full fine-tuning, s uniform, lr {base.lr:g}"
        self.line(f"### {s.name}: target rule x loss ({settings}), {s.primary.upper()}")
        self.line()
        header = ["target, loss", "LCM 4 / 8 steps", "TCD (best gamma) 4 / 8 steps", *[f"TCD/LCM {n}" for n in STEPS]]
        rows = []
        best = None
        for ema in (0.0, 0.95):
            for loss in ("l2", "huber"):
                cell = replace(base, ema_decay=ema, loss=loss)
                name = f"{'EMA ' + str(ema) if ema else 'stop-grad'}, {loss}"
                try:
                    ratios = self._ratios(bench, cell, seeds, s.primary)
                except MissingCell:
                    rows.append([name, "not run (CPU time)", "", "", "", "", ""])
                    continue
                lcm = [fmt(bench.values(replace(cell, method="lcm"), "lcm", n, seeds, s.primary), 4) for n in (4, 8)]
                tcd_means = []
                tcd = []
                for n in (4, 8):
                    vals = bench.values(replace(cell, method="tcd"), ratios[n][0], n, seeds, s.primary)
                    tcd.append(fmt(vals, 4))
                    tcd_means.append(statistics.fmean(vals))
                score = statistics.fmean(tcd_means)
                if best is None or score < best[0]:
                    best = (score, name)
                rows.append([name, " / ".join(lcm), " / ".join(tcd), *[f"{ratios[n][2]:.3f}" for n in STEPS]])
        self.table(header, rows)
        if best is not None:
            self.line(f"Best TCD student (mean of its 4- and 8-step {s.primary.upper()}): **{best[1]}**.")
        self.line()

    def learning_rate(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        """Both methods at each of LEARNING_RATES, then each at its own best: is the win the shared lr's?"""
        s = bench.setup
        metric = s.primary
        self.line(f"### {s.name}: learning rate ({base.settings()}), {metric.upper()}")
        self.line()
        header = ["lr", *[f"LCM {n}" for n in (4, 8)], *[f"TCD {n}" for n in (4, 8)], "TCD/LCM 4", "TCD/LCM 8"]
        rows = []
        best: dict[str, dict[int, tuple[float, float]]] = {"lcm": {}, "tcd": {}}  # method -> steps -> (mean, lr)
        for lr in LEARNING_RATES:
            cell = replace(base, lr=lr)
            ratios = self._ratios(bench, cell, seeds, metric)
            cols = {}
            for method in ("lcm", "tcd"):
                for n in (4, 8):
                    sampler = "lcm" if method == "lcm" else ratios[n][0]
                    vals = bench.values(replace(cell, method=method), sampler, n, seeds, metric)
                    cols[(method, n)] = fmt(vals, 4)
                    mean = statistics.fmean(vals)
                    if n not in best[method] or mean < best[method][n][0]:
                        best[method][n] = (mean, lr)
            rows.append(
                [f"{lr:g}", *[cols[k] for k in (("lcm", 4), ("lcm", 8), ("tcd", 4), ("tcd", 8))]]
                + [f"{ratios[n][2]:.3f}" for n in (4, 8)]
            )
        self.table(header, rows)
        parts = []
        for n in (4, 8):
            (t, t_lr), (c, c_lr) = best["tcd"][n], best["lcm"][n]
            parts.append(f"{n} steps {t / c:.3f} (TCD at lr {t_lr:g}, LCM at lr {c_lr:g})")
        self.line(f"Each method at its own best lr, TCD / LCM {metric.upper()}: " + "; ".join(parts) + ".")
        self.line()
        teacher = statistics.fmean(bench.values(None, "sss0.0", 50, seeds, metric))
        target, steps = (RING_TARGET, (4, 8)) if s.name == "ring" else (DIGITS_TARGET, (8,))
        lcm_best = min(best["lcm"][n][0] for n in steps)
        need = target * lcm_best
        room = (
            "below it: meeting the target against LCM at its best lr would need TCD to sample better than "
            "the ODE it was distilled from."
            if need < teacher
            else "above it: the target against LCM at its best lr leaves TCD room below its teacher's ODE."
        )
        self.line(
            f"Headroom: the teacher's own DDIM-50 is {teacher:.4f}; {target} x LCM's best at "
            f"{' and '.join(map(str, steps))} steps ({lcm_best:.4f}) is {need:.4f}, {room}"
        )
        self.line()

    def ablation_s_rule(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        s = bench.setup
        self.line(f"### {s.name}: the s rule (TCD, {base.settings()}, lr {base.lr:g}), {s.primary.upper()}")
        self.line()
        header = ["s rule", *[f"TCD {n}" for n in STEPS], *[f"TCD/LCM {n}" for n in STEPS]]
        rows = []
        for rule, share in S_RULES:
            cell = replace(base, s_rule=rule, s_zero_share=share)
            name = rule if rule == "uniform" else f"{rule}, share {share}"
            try:
                ratios = self._ratios(bench, cell, seeds, s.primary)
            except MissingCell:
                rows.append([name, "not run (CPU time)", *[""] * 7])
                continue
            tcd = [fmt(bench.values(replace(cell, method="tcd"), ratios[n][0], n, seeds, s.primary), 4) for n in STEPS]
            rows.append([name, *tcd, *[f"{ratios[n][2]:.3f}" for n in STEPS]])
        lcm = replace(base, method="lcm")
        rows.append(
            [
                "(LCM, LCM sampling)",
                *[fmt(bench.values(lcm, "lcm", n, seeds, s.primary), 4) for n in STEPS],
                "",
                "",
                "",
                "",
            ]
        )
        self.table(header, rows)

    def cost(self, bench: Bench) -> None:
        from .cost import measure

        spec = bench.setup.teacher_spec
        what = f"{bench.setup.name} teacher, {spec.describe()}, batch 256"
        self.line(f"### Cost per training iteration (CPU, 1 thread; {what})")
        self.line()
        self.line(
            "No GPU was lent to this session: CPU numbers only. "
            "The GPU row (the ComfyUI node on an SD1.5-sized model) is left open."
        )
        self.line()
        for rank in (0, 8):
            m = measure(bench.teacher, bench.setup.dim, batch=256, lora_rank=rank)
            header = ["", "time", "peak live tensors", "time / (sum of passes)"]
            rows = [
                [name, f"{m[key]['seconds'] * 1e3:.2f} ms", f"{m[key]['peak_bytes'] / 2**20:.2f} MiB", ratio]
                for name, key, ratio in (
                    ("TCD iteration (guided, Huber)", "tcd", f"**{m['tcd']['ratio_to_passes']:.2f}x**"),
                    ("LCM iteration (guided, Huber)", "lcm", f"**{m['lcm']['ratio_to_passes']:.2f}x**"),
                    ("student forward + backward", "student_fwd_bwd", ""),
                    ("teacher guided forward (2 forwards)", "teacher_guided_fwd", ""),
                    ("target forward (no grad)", "target_fwd", ""),
                )
            ]
            speed = m["tcd"]["seconds"] / m["lcm"]["seconds"]
            self.line(f"{'LoRA rank 8' if rank else 'Full fine-tuning'}: TCD / LCM time {speed:.3f}x.")
            self.line()
            self.table(header, rows)

    def plot(self, bench: Bench, base: Cell, seeds: list[int]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = bench.setup
        metric = s.primary
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        curves = [
            ("teacher, DDIM", None, "sss0.0", "k", "-"),
            ("LCM student, LCM sampling", replace(base, method="lcm"), "lcm", "tab:red", "-"),
            ("LCM student, SSS gamma 0.3", replace(base, method="lcm"), "sss0.3", "tab:red", ":"),
            ("TCD student, SSS gamma 0.3", replace(base, method="tcd"), "sss0.3", "tab:blue", "-"),
            ("TCD student, SSS gamma 0", replace(base, method="tcd"), "sss0.0", "tab:cyan", "-"),
            ("TCD student, LCM sampling", replace(base, method="tcd"), "lcm", "tab:blue", ":"),
        ]
        for label, cell, sampler, color, style in curves:
            means, spreads = [], []
            for n in STEPS:
                vals = bench.values(cell, sampler, n, seeds, metric)
                means.append(statistics.fmean(vals))
                spreads.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            ax.errorbar(STEPS, means, yerr=spreads, label=label, color=color, linestyle=style, marker="o", capsize=3)
        t50 = bench.score(None, "sss0.0", 50, 0)[metric]
        ax.axhline(t50, color="k", linestyle="--", linewidth=0.8, label="teacher DDIM-50")
        ax.axhline(s.floor[metric], color="grey", linestyle="-.", linewidth=0.8, label="data vs data")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(STEPS), [str(n) for n in STEPS])
        ax.set_xlabel("sampling steps")
        ax.set_ylabel({"swd": "sliced Wasserstein distance", "fd": "Frechet distance (classifier features)"}[metric])
        ax.set_title(f"{s.name}: TCD vs LCM distillation ({len(seeds)} seeds, {base.iterations} iterations)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"distill_{s.name}.png"
        fig.savefig(path)
        plt.close(fig)
        self.line(f"Plot: `{path.relative_to(path.parents[2]) if len(path.parents) > 2 else path}`.")
        self.line()
