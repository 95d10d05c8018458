"""Students: trained only by the pack's TCD Distill LoRA node, in-process, as ComfyUI executes it
(every input a list, under torch.inference_mode). The LoRA and the loss curve are cached by a hash of the
teacher and the node's inputs; the student model is ComfyUI's LoRA loader on the teacher.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .data import SD15_CODEC, LatentCodec, Prompts, load_digits
from .env import cache_dir, digest

NODE_ID = "TrajectoryConsistencyDistillLoRA"


@dataclass(frozen=True)
class StudentSpec:
    """The node's widgets that the benchmark sets; every other widget keeps the node's default."""

    method: str  # "tcd" | "lcm"
    steps: int
    batch_size: int
    seed: int
    guidance: float  # LCM's w: guidance_min = guidance_max = w (the teacher's CFG is w + 1)
    training_dtype: str = "fp32"
    gradient_checkpointing: bool = False  # memory only: off, it saves the recompute on this CPU
    learning_rate: float | None = None  # None: the node's default (the sensitivity runs set it)
    overrides: tuple[tuple[str, Any], ...] = ()  # other node widgets of an ablation (not judged)

    def key_fields(self) -> dict:
        """The fields that name this student in the caches (learning_rate only when set)."""
        fields = asdict(self)
        if self.learning_rate is None:
            del fields["learning_rate"]
        if not self.overrides:
            del fields["overrides"]
        return fields

    @property
    def label(self) -> str:
        label = self.method if self.learning_rate is None else f"{self.method} lr {self.learning_rate:g}"
        return " ".join([label, *(f"{name} {value}" for name, value in self.overrides)])

    def widgets(self, node: Any) -> dict:
        """The node's widget values: its defaults (from its schema), then this spec's."""
        values = {
            i.id: i.default
            for i in node.define_schema().inputs
            if i.id not in ("model", "latents", "positive", "negative")
        }
        spec = asdict(self)
        values.update(
            {k: spec[k] for k in ("method", "steps", "batch_size", "seed", "training_dtype", "gradient_checkpointing")}
        )
        values["guidance_min"] = values["guidance_max"] = self.guidance
        if self.learning_rate is not None:
            values["learning_rate"] = self.learning_rate
        values.update(dict(self.overrides))
        return values


def identifying_widgets(node: Any, widgets: dict) -> dict:
    """The widgets that identify a student in the cache: all but optional inputs at their default (inputs appended
    later with a default that trains what the node trained before they existed), so adding one keeps the cache."""
    optional = {i.id: i.default for i in node.define_schema().inputs if getattr(i, "optional", False)}
    return {k: v for k, v in widgets.items() if not (k in optional and v == optional[k])}


def distill(
    host: Any,
    teacher: Any,
    teacher_key: str,
    prompts: Prompts,
    spec: StudentSpec,
    log: Any = print,
    codec: LatentCodec = SD15_CODEC,
    file_prefix: str = "",
) -> tuple[dict, dict]:
    """(lora state dict, info with the loss curve and training seconds), trained by the node or from the cache.

    ``codec``: the teacher family's latents; ``file_prefix``: the family's prefix for its cache files."""
    import comfy.utils

    node = host.node(NODE_ID)
    widgets = spec.widgets(node)
    keyed = identifying_widgets(node, widgets)
    key = digest([teacher_key, keyed, "digits-train-v1"])
    # no dots in the stem: the suffixes below replace what follows one
    stem = f"{file_prefix}student-{spec.method}-s{spec.seed}-{key}"
    path = cache_dir() / stem
    if path.with_suffix(".safetensors").exists():
        lora = comfy.utils.load_torch_file(str(path.with_suffix(".safetensors")))
        return lora, json.loads(path.with_suffix(".json").read_text())
    digits = load_digits()
    latents = [{"samples": codec.to_raw(codec.encode(digits.train))}]  # one batched LATENT in the raw latent space
    positive = [prompts.positive(int(label)) for label in digits.train_labels]  # one CONDITIONING per latent
    negative = [prompts.negative()]
    inputs = {"model": [teacher], "latents": latents, "positive": positive, "negative": negative}
    inputs.update({name: [value] for name, value in widgets.items()})
    log(
        f"  distilling {spec.label} seed {spec.seed}: {widgets['steps']} steps x batch {widgets['batch_size']}, "
        f"w {spec.guidance:g}"
    )
    start = time.time()
    with torch.inference_mode():
        _, lora, loss_map, steps = node.execute(**inputs).args
    seconds = time.time() - start
    info = {"seconds": seconds, "loss": [float(v) for v in loss_map["loss"]], "steps": int(steps), "widgets": keyed}
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in lora.items()}, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(info, default=str))
    log(f"  distilled {spec.label} seed {spec.seed} in {seconds:.0f}s, last loss {info['loss'][-1]:.5f}")
    return lora, info


def student_model(teacher: Any, lora: dict) -> Any:
    """The teacher with the student LoRA, through ComfyUI's LoRA loading (LoraLoaderModelOnly's call)."""
    import comfy.sd

    model, _ = comfy.sd.load_lora_for_models(teacher, None, lora, 1.0, 0)
    return model


def lora_update(teacher: Any, lora: dict) -> float:
    """The LoRA's size: ||scale up @ down|| / ||W|| over all adapted layers together (0 = the teacher)."""
    weights = teacher.model.state_dict()
    delta_sq, base_sq = 0.0, 0.0
    for key in [k for k in lora if k.endswith(".lora_up.weight")]:
        name = key[: -len(".lora_up.weight")]
        up, down = lora[key].float().flatten(1), lora[f"{name}.lora_down.weight"].float().flatten(1)
        scale = float(lora[f"{name}.alpha"]) / down.shape[0]
        delta_sq += float((scale * up @ down).pow(2).sum())
        base_sq += float(weights[f"{name}.weight"].float().pow(2).sum())
    return (delta_sq / base_sq) ** 0.5
