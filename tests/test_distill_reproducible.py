"""Refactoring guard: with the same seed and settings the node and the trainer train bit-identical LoRAs
to the ones recorded in tests/fixtures/distill_lora_digests.json (recorded before the distillation loops
became one engine, tcd_core.distiller).

The digest is the SHA-256 of every saved tensor's bytes, keys sorted. Bit-identity holds for the same
arithmetic: the recording's CPU kernels (``torch.backends.cpu.get_cpu_capability()``, torch's version)
and one thread. On another CPU capability or torch version the kernels may sum in another order, so the
test then compares a fingerprint instead (per tensor: its norm and two fixed random projections, stored
beside the digests) to 1e-5 of the tensor's norm, and says so.
``TCD_RECORD_DIGESTS=1 dev/test tests/test_distill_reproducible.py`` writes the fixture anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_distill_node import DISTILL_WIDGETS, conditioning, latents, tiny_model
from test_distill_trainer import checkpoint as checkpoint  # noqa: F401 - the module fixture
from test_distill_trainer import one_thread, train_here, trainer_args
from test_distill_trainer import shards as shards  # noqa: F401 - the module fixture

from devkit.inprocess import load_comfy
from devkit.model_files import default_models_dir

FIXTURES = Path(__file__).parent / "fixtures"
DIGESTS = FIXTURES / "distill_lora_digests.json"
RECORD = os.environ.get("TCD_RECORD_DIGESTS") == "1"

NODE_CASES: dict[str, dict[str, Any]] = {
    "tcd-ema-l2": {"ema_decay": 0.95, "loss": "l2"},
    "lcm-huber-accumulate-3": {"method": "lcm", "loss": "huber", "grad_accumulation_steps": 3},
    "tcd-mixed-sizes-zero-ramp": {"s_rule": "uniform+zero-ramp", "s_zero_share": 0.5, "mixed": True},
}
TRAINER_CASES: dict[str, tuple[int, list[str]]] = {
    "adamw-ema": (2, ["--loss_type", "l2"]),  # l2: the default when the digests were recorded
    "sgd-accumulate-3-lcm": (
        1,
        "--optimizer SGD --learning_rate 0.2 --gradient_accumulation_steps 3 --method lcm --loss_type l2".split(),
    ),
}


def digest(lora: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(lora):
        h.update(key.encode())
        h.update(lora[key].detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def arithmetic() -> dict[str, str]:
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__.split("+")[0]}


def fingerprint(lora: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per tensor: its norm and its dot products with two fixed random tensors (float64)."""
    out = {}
    for key in sorted(lora):
        value = lora[key].double().reshape(-1)
        gen = torch.Generator().manual_seed(len(out))
        projections = [float(value @ torch.randn(value.numel(), generator=gen, dtype=torch.float64)) for _ in range(2)]
        out[key] = [float(value.norm()), *projections]
    return out


def check(name: str, lora: dict[str, torch.Tensor]) -> None:
    lora = {k: v.detach().cpu().float().contiguous() for k, v in lora.items()}
    if RECORD:
        recorded = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {}
        recorded.update(arithmetic())
        recorded.setdefault("digests", {})[name] = digest(lora)
        recorded.setdefault("fingerprints", {})[name] = fingerprint(lora)
        DIGESTS.write_text(json.dumps(recorded, indent=0, sort_keys=True) + "\n")
        return
    recorded = json.loads(DIGESTS.read_text())
    if {k: recorded[k] for k in arithmetic()} == arithmetic():
        assert digest(lora) == recorded["digests"][name], f"{name}: the LoRA is no longer bit-identical"
        return
    expected, got = recorded["fingerprints"][name], fingerprint(lora)
    assert expected.keys() == got.keys()
    worst = max(abs(a - b) / max(e[0], 1e-12) for key, e in expected.items() for a, b in zip(e, got[key], strict=True))
    print(f"{name}: other CPU kernels than recorded ({arithmetic()}); worst fingerprint difference {worst:.3g}")
    assert worst < 1e-5


@pytest.mark.parametrize("name", list(NODE_CASES))
def test_the_node_trains_the_recorded_lora(name: str) -> None:
    node = load_comfy(default_models_dir()).node("TrajectoryConsistencyDistillLoRA")
    case = dict(NODE_CASES[name])
    mixed = case.pop("mixed", False)
    data = [latents(2, 8, seed=7), latents(1, 16, seed=8)] if mixed else [latents()]
    positive = conditioning(1, 3) if mixed else conditioning(1)
    values = {**DISTILL_WIDGETS, "steps": 3, "learning_rate": 1e-3, "seed": 5, **case}
    with one_thread(), torch.inference_mode():
        outputs = node.execute(model=[tiny_model()], latents=data, positive=positive, negative=conditioning(2),
                               **{k: [v] for k, v in values.items()}).args  # fmt: skip
    check(f"node-{name}", outputs[1])


@pytest.mark.parametrize("name", list(TRAINER_CASES))
def test_the_trainer_trains_the_recorded_lora(name: str, checkpoint: Path, shards: str, tmp_path: Path) -> None:  # noqa: F811
    batch, extra = TRAINER_CASES[name]
    summary = train_here(trainer_args(checkpoint, shards, tmp_path / name, batch, *extra))
    check(f"trainer-{name}", load_file(summary["lora"]))
