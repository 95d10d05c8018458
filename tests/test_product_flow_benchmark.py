"""The flow half of the product benchmark in small (``python -m bench.product_flow --quick``): a 150-iteration
SD3-class teacher (ComfyUI's MMDiT), two seeds of 12-step students trained by the TCD Distill LoRA node's flow path,
sampled through ComfyUI. Checks the latent mapping, that the run goes end to end and writes its report; the numbers
of the full run are in docs/benchmarks/product_flow_results.md."""

from __future__ import annotations

import json

import torch

from bench.product.data import load_digits
from bench.product_flow.__main__ import main
from bench.product_flow.data import FLOW_CODEC, PooledPrompts, make_pooled_prompts


def test_flow_latent_mapping_round_trips_and_projects_noise_out() -> None:
    digits = load_digits().train[:16]
    latents = FLOW_CODEC.encode(digits)
    assert latents.shape == (16, 16, 8, 8)
    torch.testing.assert_close(FLOW_CODEC.decode(latents), digits)
    torch.testing.assert_close(FLOW_CODEC.from_raw(FLOW_CODEC.to_raw(latents)), latents)
    torch.testing.assert_close(latents.pow(2).mean(), digits.pow(2).mean())  # |r|^2 = 16: a pixel's scale
    noise = torch.randn(4000, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    assert abs(float(FLOW_CODEC.decode(noise).std()) - 0.25) < 0.01  # 1 of 16 directions kept, / |r|


def test_pooled_prompts_give_sd3_conditioning() -> None:
    prompts = make_pooled_prompts(8, 6)
    assert isinstance(prompts, PooledPrompts)
    (entry,) = prompts.batch(torch.tensor([3, 5]))
    assert entry[0].shape == (2, 4, 8) and entry[1]["pooled_output"].shape == (2, 6)
    (negative,) = prompts.negative()
    assert negative[1]["pooled_output"].shape == (1, 6)


def test_quick_flow_benchmark_writes_its_report(tmp_path, one_torch_thread) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "product_flow_quick_results.md").read_text()
    assert "## Teacher mmdit-quick" in report and "euler (simple)" in report and "### Targets" in report
    assert (tmp_path / "product_flow_quick_losses.png").exists()
    result = json.loads((tmp_path / "product_flow_quick_results.json").read_text())
    assert {row["who"] for row in result["rows"]} == {"teacher", "no-lora", "tcd", "lcm"}
    assert {(s["method"], s["seed"]) for s in result["students"]} == {(m, s) for m in ("tcd", "lcm") for s in (0, 1)}
    assert all(len(s["loss"]) == result["plan"]["student_steps"] for s in result["students"])
    assert all(torch.isfinite(torch.tensor(row["fd_ref"])) for row in result["rows"])


def test_teacher_only_skips_the_students(tmp_path, one_torch_thread) -> None:
    assert main(["--quick", "--teacher-only", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "product_flow_quick_results.json").read_text())
    assert {row["who"] for row in result["rows"]} == {"teacher", "no-lora"} and not result["students"]
    assert "not judged: no students" in (tmp_path / "product_flow_quick_results.md").read_text()
