"""The training mechanisms of newer ComfyUI hosts, as options of the distill node: the LoRA family
(``comfy.weight_adapter.adapter_maps``), bypass adapters (``comfy.weight_adapter.bypass``: forward hooks, so
that quantized / fp8 base weights train), offloading and checkpoint depth (``comfy_extras.nodes_train``), the
fp8 backward switch (``comfy.model_management.training_fp8_bwd``), bucketed datasets (ResolutionBucket) and
training previews.

Each mechanism is detected on the running ComfyUI (``HostTraining.missing``); one asked for on a host that
lacks it is refused before any work, naming the ComfyUI version that has it. The defaults keep what the node
did before these options existed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import comfy.model_management
import comfy.weight_adapter

from ..tcd_core.settings import check_fields, setting
from .distill_model import input_error

TESTED_NEWER_HOST = "0.30.0"  # the ComfyUI version these mechanisms were tested on (its Train LoRA has them all)
ALGORITHMS = tuple(comfy.weight_adapter.adapter_maps)  # Train LoRA's list: LoRA, LoHa, LoKr, OFT


def comfyui_version() -> str:
    """The running ComfyUI's version (``comfyui_version.__version__``), or "unknown"."""
    try:
        import comfyui_version
    except ImportError:
        return "unknown"
    return str(getattr(comfyui_version, "__version__", "unknown"))


def _nodes_train_has(name: str) -> bool:
    from comfy_extras import nodes_train

    return hasattr(nodes_train, name)


def host_has(mechanism: str) -> bool:
    """Whether the running ComfyUI has ``mechanism`` (one of ``MECHANISMS``)."""
    return MECHANISMS[mechanism]()


MECHANISMS = {
    "bypass_mode": lambda: importlib.util.find_spec("comfy.weight_adapter.bypass") is not None,
    "offloading": lambda: _nodes_train_has("OffloadCheckpointFunction"),
    "checkpoint_depth": lambda: _nodes_train_has("find_modules_at_depth"),
    "quantized_backward": lambda: hasattr(comfy.model_management, "training_fp8_bwd"),
}


@dataclass(frozen=True)
class HostTraining:
    """How the network is adapted and run while training (ComfyUI Train LoRA's newer inputs, in its order), and
    the preview; appended after the distillation settings. Checked on construction, naming the field."""

    algorithm: str = setting(
        "LoRA",
        "The adapter family trained (ComfyUI's weight adapters, as Train LoRA). LoRA is what TCD LoRAs are and what "
        "every LoRA loader reads; LoHa / LoKr / OFT train other LyCORIS-style adapters (rank is their size).",
        choices=ALGORITHMS,
    )
    bypass_mode: bool = setting(
        False,
        "Apply the adapters through forward hooks instead of changing the weights, so that quantized / fp8 base "
        "weights can be trained on. The teacher is still the base model with the adapters off.",
        kind=bool,
    )
    offloading: bool = setting(
        False,
        "Keep the model's weights in system memory and stream them to the GPU during training (less GPU "
        "memory, slower). Works with gradient checkpointing.",
        kind=bool,
    )
    checkpoint_depth: int = setting(
        1,
        "With gradient checkpointing: 1 checkpoints the network's top-level blocks (least memory saved per "
        "block, fastest), 2 their children, and so on.",
        low=1, high=5,
    )  # fmt: skip
    quantized_backward: bool = setting(
        False,
        "With training_dtype none on a quantized (fp8) model: run the backward pass with quantized matmuls too.",
        kind=bool,
    )
    bucket_mode: bool = setting(
        False,
        "Draw each batch from one resolution bucket (images of one size, as Resolution Bucket groups them), the "
        "bucket chosen in proportion to its size. Off: a batch mixes sizes, trained as one same-size group each.",
        kind=bool,
    )
    preview_every: int = setting(
        0,
        "Every N steps, show the student's image (TCD Sampler, 4 steps, gamma 0.3, CFG 1, the first positive "
        "prompt, a fixed seed) as the node's preview; 0 = off. Previews do not change what is trained.",
        low=0, high=100000,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)

    def missing(self) -> list[str]:
        """The inputs set to something the running ComfyUI cannot do (their mechanism is absent)."""
        asked = {
            "bypass_mode": self.bypass_mode,
            "offloading": self.offloading,
            "checkpoint_depth": self.checkpoint_depth != 1,
            "quantized_backward": self.quantized_backward,
        }
        return [name for name, wanted in asked.items() if wanted and not host_has(name)]

    def check_host(self) -> None:
        """Refuse, naming the input, what this ComfyUI lacks (and the version that has it)."""
        for name in self.missing():
            raise input_error(
                name,
                f"this ComfyUI ({comfyui_version()}) has no mechanism for it; ComfyUI {TESTED_NEWER_HOST} or newer "
                "has it (update ComfyUI, or leave this input at its default)",
            )
