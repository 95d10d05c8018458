"""LoRA training adapters on a ModelPatcher: ComfyUI's own ``comfy.weight_adapter`` adapters added as weight
wrappers of a clone (``ModelPatcher.add_weight_wrapper``, as ComfyUI's Train LoRA does) or, in bypass mode,
as forward hooks (``comfy.weight_adapter.bypass``, Train LoRA's bypass mode, for quantized base weights), all
behind one on/off switch, so that the teacher is the same network with the switch off and the base weights
exist once in memory. The trained LoRA comes out in Train LoRA's saved-LoRA layout
(``diffusion_model.<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``; other algorithms their
own parameter names, as Train LoRA saves them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import comfy.lora
import comfy.lora_convert
import comfy.weight_adapter
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.weight_adapter import LoRAAdapter
from comfy.weight_adapter.lora import LoraDiff
from torch import Tensor

from .distill_model import FLOW_FAMILIES, input_error


class AdapterSwitch:
    """One on/off switch shared by every adapter of a run: off = the teacher (the base weights)."""

    def __init__(self) -> None:
        self.enabled = True

    def inject(self) -> None:
        """Put the adapters in the network (weight wrappers need nothing: they read ``enabled``)."""

    def eject(self) -> None:
        """Take the adapters out of the network's forward (nothing to do for weight wrappers)."""

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous


class BypassSwitch(AdapterSwitch):
    """The switch of bypass-mode adapters: off = their forward hooks taken out (ComfyUI's ``PatcherInjection``
    eject), so the teacher runs the layers' own forward; on = put back (inject)."""

    def __init__(self, patcher: Any, adapters: dict[str, Any]) -> None:
        super().__init__()
        from comfy.weight_adapter.bypass import BypassInjectionManager

        self.patcher = patcher
        manager = BypassInjectionManager()
        for name, adapter in adapters.items():
            manager.add_adapter(f"{name}.weight", adapter, strength=1.0)
        self.injections = manager.create_injections(patcher.model)
        self.injected = False

    def inject(self) -> None:
        if not self.injected:
            for injection in self.injections:
                injection.inject(self.patcher)
            self.injected = True

    def eject(self) -> None:
        if self.injected:
            for injection in self.injections:
                injection.eject(self.patcher)
            self.injected = False

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        was_injected = self.injected
        self.eject()
        try:
            with super().off():
                yield
        finally:
            if was_injected:
                self.inject()


class SwitchedAdapter:
    """A weight wrapper (ModelPatcher.add_weight_wrapper) applying a ComfyUI training adapter when on."""

    def __init__(self, adapter: LoraDiff, switch: AdapterSwitch) -> None:
        self.adapter = adapter
        self.switch = switch

    def __call__(self, weight: Tensor) -> Tensor:
        return self.adapter(weight) if self.switch.enabled else weight

    def passive_memory_usage(self) -> int:
        return self.adapter.passive_memory_usage()

    def move_to(self, device: torch.device) -> int:
        return self.adapter.move_to(device)


class FreshWeight:
    """A weight wrapper that hands autograd a normal copy of a weight made under ``torch.inference_mode``
    (how ComfyUI loads checkpoints): norm layers save their weight for the backward pass, and inference
    tensors cannot be saved. The LoRA layers need none: ``w + delta`` is a new tensor already."""

    def __call__(self, weight: Tensor) -> Tensor:
        return weight.clone() if weight.is_inference() else weight

    def passive_memory_usage(self) -> int:
        return 0

    def move_to(self, device: torch.device) -> int:
        return 0


def frozen_weight_layers(base_model: Any, targets: set[str]) -> list[str]:
    """The network's ComfyUI ops with a weight that no adapter wraps (a UNet's norms; a flow model's norms,
    embedders and final layers too): frozen, but on the backward path."""
    return [
        name
        for name, module in base_model.named_modules()
        if name.startswith("diffusion_model.")
        and name not in targets
        and hasattr(module, "weight_function")
        and getattr(module, "weight", None) is not None
    ]


@contextlib.contextmanager
def normal_plain_tensors(base_model: Any) -> Iterator[None]:
    """While training, normal copies of the network's parameters and buffers that no ComfyUI op owns and that were
    made under ``torch.inference_mode`` (as a server loads models): Flux's RMSNorm ``scale``, MMDiT's qk-norm
    ``weight`` and ``pos_embed``, Z-Image's pad tokens. Autograd cannot save inference tensors for the backward
    pass, and ComfyUI's weight functions (``FreshWeight``) reach only its own ops; Train LoRA fails on these in
    fp32 ("Inference tensors cannot be saved for backward"). The originals are put back afterwards, so the model
    is left as it was."""
    swapped: list[tuple[dict, str, Tensor]] = []
    with torch.inference_mode(False):
        for module in base_model.diffusion_model.modules():
            if hasattr(module, "weight_function"):
                continue  # a ComfyUI op: its weight functions see to it
            for store in (module._parameters, module._buffers):
                for name, tensor in list(store.items()):
                    if tensor is None or not tensor.is_inference():
                        continue
                    copy = tensor.detach().clone()
                    store[name] = torch.nn.Parameter(copy, requires_grad=False) if name in module._parameters else copy
                    swapped.append((store, name, tensor))
    try:
        yield
    finally:
        for store, name, tensor in reversed(swapped):
            store[name] = tensor


def lora_targets(base_model: Any) -> list[tuple[str, torch.nn.Module]]:
    """The layers a LoRA adapts.

    A UNet (SD1.x, SD2.x, SDXL): every ComfyUI op with a 2-D or larger weight (Linear and Conv, as Train LoRA
    chooses; norms and biases stay frozen). A flow model: the Linear layers of its family's transformer blocks
    (``FLOW_FAMILIES[...].lora_blocks``: Flux's double / single blocks, MMDiT's joint blocks, ...), what its
    community LoRAs train, so that the file has the layers LoRA loaders and users expect of the family.
    """
    family = FLOW_FAMILIES.get(type(base_model.model_config).__name__)
    if family is None or isinstance(getattr(base_model, "diffusion_model", None), UNetModel):
        prefixes, linear_only = ("diffusion_model.",), False
    else:
        prefixes, linear_only = tuple(f"diffusion_model.{block}." for block in family.lora_blocks), True
    targets = []
    for name, module in base_model.named_modules():
        if not name.startswith(prefixes) or not hasattr(module, "weight_function"):
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and (weight.ndim == 2 if linear_only else weight.ndim >= 2):
            targets.append((name, module))
    return targets


def read_existing_lora(base_model: Any, lora: dict[str, Tensor]) -> dict[str, LoraDiff]:
    """A saved LoRA (any format ComfyUI loads: kohya, diffusers/PEFT, ComfyUI's own) as training adapters,
    keyed by module name ``diffusion_model.<...>``; conv LoRAs come back flattened to 2-D factors."""
    key_map = comfy.lora.model_lora_keys_unet(base_model, {})
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False)
    adapters: dict[str, LoraDiff] = {}
    for key, patch in patches.items():
        if not isinstance(key, str) or not key.startswith("diffusion_model.") or not key.endswith(".weight"):
            continue
        if not isinstance(patch, LoRAAdapter):
            kind = getattr(patch, "name", type(patch).__name__)
            raise input_error("existing_lora", f"it holds {kind} weights for {key}; only LoRA can be continued")
        up, down, alpha, mid, dora_scale, reshape = patch.weights
        if mid is not None or dora_scale is not None or reshape is not None:
            raise input_error("existing_lora", f"its {key} is a LoCon-mid / DoRA LoRA; only plain LoRA continues")
        rank = down.shape[0]
        factors = (up.flatten(1).float(), down.flatten(1).float(), float(rank if alpha is None else alpha))
        adapters[key[: -len(".weight")]] = LoraDiff((*factors, None, None, None))
    if not adapters:
        raise input_error("existing_lora", "it patches nothing in this model's UNet (another model family?)")
    return adapters


@dataclass
class LoraAdapters:
    """Training adapters attached to one ModelPatcher (a clone), behind one switch."""

    patcher: Any
    adapters: dict[str, Any]  # module name -> training adapter (LoraDiff, or another algorithm's)
    switch: AdapterSwitch = field(default_factory=AdapterSwitch)
    wrappers: dict[str, Any] = field(default_factory=dict)  # parameter key "<module>.weight|bias" -> wrapper

    def parameters(self) -> list[Tensor]:
        """The trainable tensors (lora_up / lora_down, or the algorithm's), in module order."""
        return [p for a in self.adapters.values() for p in a.parameters() if p.requires_grad]

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The LoRA in ComfyUI's saved-LoRA format (Train LoRA's): ``<module>.lora_up.weight``,
        ``<module>.lora_down.weight``, ``<module>.alpha``; detached CPU copies, in ``dtype``."""
        out = {}
        for name, adapter in self.adapters.items():
            for pname, tensor in adapter.named_parameters():
                value = tensor.detach().to("cpu", dtype if dtype is not None else tensor.dtype)
                out[f"{name}.{pname}"] = value.clone().contiguous()
        return out


def new_adapter(algorithm: str, weight: Tensor, rank: int) -> Any:
    """A fresh training adapter of ``algorithm`` (``comfy.weight_adapter.adapter_maps``) whose change is zero, so
    the student starts as the teacher. LoRA gets alpha = rank (scale 1, as diffusers' LCM-LoRA script); the
    other families Train LoRA's alpha 1."""
    if algorithm == "LoRA":
        return LoRAAdapter.create_train(weight, rank=rank, alpha=float(rank))
    return comfy.weight_adapter.adapter_maps[algorithm].create_train(weight, rank=rank, alpha=1.0)


def attach_lora(
    patcher: Any,
    rank: int,
    dtype: torch.dtype,
    seed: int,
    existing: dict[str, LoraDiff] | None = None,
    algorithm: str = "LoRA",
    bypass: bool = False,
) -> LoraAdapters:
    """Add an adapter to every target layer of ``patcher`` (a clone: the caller's model is untouched), and to the
    other layers ``existing`` holds.

    New adapters are ComfyUI's ``create_train`` of ``algorithm`` (``new_adapter``: for LoRA up random, down
    zero); layers of ``existing`` (LoRA) continue from its weights. Initialisation draws from ``seed``
    without touching the global RNG. ``bypass``: the adapters act through forward hooks (``BypassSwitch``)
    instead of weight wrappers, so the base weights are never rebuilt (quantized / fp8 weights train).
    """
    existing = existing or {}
    adapters: dict[str, Any] = {}
    # ComfyUI runs nodes under torch.inference_mode: parameters made there would never get gradients.
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        targets = lora_targets(patcher.model)
        known = {name for name, _ in targets}
        modules = dict(patcher.model.named_modules())
        # a continued LoRA's layers outside the family's targets (e.g. a community Flux LoRA's txt_in) train on too
        targets += [(name, modules[name]) for name in existing if name not in known and name in modules]
        for name, module in targets:
            old = existing.get(name)
            if old is None:
                adapter = new_adapter(algorithm, module.weight, rank)
            else:  # fresh tensors (the loaded ones may be inference tensors)
                factors = (old.lora_up.weight.detach().clone(), old.lora_down.weight.detach().clone())
                adapter = LoraDiff((*factors, float(old.alpha), None, None, None))
            adapters[name] = adapter.to(device=patcher.load_device, dtype=dtype)
    switch = BypassSwitch(patcher, adapters) if bypass else AdapterSwitch()
    lora = LoraAdapters(patcher, adapters, switch)
    for name, adapter in adapters.items():
        adapter.requires_grad_(True)
        if isinstance(getattr(adapter, "alpha", None), Tensor):
            adapter.alpha.requires_grad_(False)
        # Bypass: the layer's own weight meets autograd (its input's gradient needs it), so it must not be an
        # inference tensor; a manual-cast copy (an fp8 weight computed in fp32) already is a normal one.
        wrapper = FreshWeight() if bypass else SwitchedAdapter(adapter, lora.switch)
        lora.wrappers[f"{name}.weight"] = wrapper
    modules = dict(patcher.model.named_modules())
    for name in frozen_weight_layers(patcher.model, set(adapters)):
        for param in ("weight", "bias"):
            if getattr(modules[name], param, None) is not None:
                lora.wrappers[f"{name}.{param}"] = FreshWeight()
    for key, wrapper in lora.wrappers.items():
        patcher.add_weight_wrapper(key, wrapper)
    return lora


def install_lora(lora: LoraAdapters) -> None:
    """Make sure every adapter is in its layer's weight functions once the patcher is loaded.

    ComfyUI installs weight wrappers when ``ModelPatcher.load`` runs, but a model already fully loaded by
    another clone with the same weight patches (the usual case: the checkpoint just sampled) is not
    loaded again, so the wrappers are put in place here.
    """
    modules = dict(lora.patcher.model.named_modules())
    for key, wrapper in lora.wrappers.items():
        name, param = key.rsplit(".", 1)
        functions = f"{param}_function"  # weight_function / bias_function of a ComfyUI op
        module = modules[name]
        if not any(f is wrapper for f in getattr(module, functions)):
            setattr(module, functions, [*getattr(module, functions), wrapper])
        wrapper.move_to(lora.patcher.load_device)
    lora.switch.inject()


def detach_lora(lora: LoraAdapters) -> None:
    """Remove the adapters from the patcher and from the shared modules' weight functions."""
    patcher = lora.patcher
    lora.switch.eject()
    modules = dict(patcher.model.named_modules())
    for key, wrapper in lora.wrappers.items():
        kept = [f for f in patcher.weight_wrapper_patches.get(key, []) if f is not wrapper]
        if kept:
            patcher.weight_wrapper_patches[key] = kept
        else:
            patcher.weight_wrapper_patches.pop(key, None)
        name, param = key.rsplit(".", 1)
        module, functions = modules.get(name), f"{param}_function"
        if module is not None and hasattr(module, functions):
            setattr(module, functions, [f for f in getattr(module, functions) if f is not wrapper])
    for adapter in lora.adapters.values():
        adapter.requires_grad_(False)
    lora.wrappers.clear()
