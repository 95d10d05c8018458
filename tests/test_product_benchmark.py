"""The product distillation benchmark in small (``python -m bench.product --quick``): a 150-iteration teacher,
one seed, 12-step students trained by the TCD Distill LoRA node, sampled through ComfyUI. Checks that it runs
end to end and writes its report; the numbers of the full run are in docs/benchmarks/product_results.md."""

from __future__ import annotations

import json

import torch

from bench.product.__main__ import main
from bench.product.data import decode, encode, load_digits


def test_latent_mapping_round_trips() -> None:
    digits = load_digits().train[:16]
    latents = encode(digits)
    assert latents.shape == (16, 4, 8, 8)
    torch.testing.assert_close(decode(latents), digits)


def test_quick_benchmark_writes_its_report(tmp_path, test_models) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "product_quick_results.md").read_text()
    assert "### Targets" in report and (tmp_path / "product_quick_losses.png").exists()
    result = json.loads((tmp_path / "product_quick_results.json").read_text())
    assert {s["method"] for s in result["students"]} == {"tcd", "lcm"}
    assert all(len(s["loss"]) == result["plan"]["student_steps"] for s in result["students"])
