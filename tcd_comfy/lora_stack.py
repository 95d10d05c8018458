"""Applying LoRAs through ComfyUI's own LoRA patching, after checking that every patch fits the model.

What counts as a LoRA, and what it patches, is what ComfyUI's own loader makes of the file
(``comfy.lora.load_lora`` with the adapters of ``comfy.weight_adapter``: LoRA/LoCon, DoRA, LoHa, LoKr,
OFT, BOFT, GLoRA, and ``diff`` / ``diff_b`` / ``w_norm`` / ``b_norm`` / ``set_weight`` tensors), never a
list of key suffixes kept here. On top of ComfyUI's key map, diffusers-style UNet attention names
(``unet.….to_q.lora.down.weight``, PEFT ``….to_q.lora_A.weight``) are mapped, which ComfyUI only knows in
the ``….processor.to_q`` form. Before a weight is touched, every patch's delta shape is checked against
the weight it targets (ComfyUI itself only logs a shape error per key and applies what happens to
fit), so a LoRA for another model family is refused whole.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import comfy.lora
import comfy.lora_convert
import comfy.utils
import comfy.weight_adapter as weight_adapter
import folder_paths

log = logging.getLogger("comfyui-tcd-sampling")

NONE = "None"
_SHOWN = 12  # module names quoted in one log line or error message
# Cross-attention context widths of the UNet families this pack targets (attn2.to_k / to_v inputs).
_CONTEXT_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


@dataclass(frozen=True)
class LoraFit:
    """What one LoRA file does to one model: counted from ComfyUI's own loader."""

    name: str
    modules: int  # adapter modules ComfyUI's loader reads in the file
    patched: int  # model and CLIP weights patched
    skipped: tuple[str, ...] = ()  # modules naming no weight of this model (or of its CLIP)
    converted: tuple[str, ...] = ()  # diffusers attention modules mapped beyond ComfyUI's key map
    ignored: tuple[str, ...] = ()  # tensors of the file that belong to no adapter
    absent: tuple[str, ...] = ()  # weights a module patches that this model lacks (a diff_b on a bias-less layer)

    @property
    def is_partial(self) -> bool:
        return bool(self.skipped)


class _ReadRecorder(dict):
    """A state dict that remembers which tensors ComfyUI's loader read (the keys it consumed)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        super().__init__(tensors)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        self.read.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            self.read.add(key)
        return super().get(key, default)


def _load_patches(lora: Mapping[str, Any], to_load: dict[str, Any]) -> dict[Any, Any]:
    try:
        return comfy.lora.load_lora(lora, to_load, log_missing=False)
    except Exception as error:  # e.g. a lora_up without its lora_down: ComfyUI's loader raises KeyError
        raise ValueError(f"ComfyUI's LoRA loader failed on it ({type(error).__name__}: {error})") from None


def adapter_modules(lora: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(module names ComfyUI's loader reads as adapters, tensors it does not read), whatever the model.

    Every prefix of every key, cut at a ``.`` or ``_``, is offered to ``comfy.lora.load_lora`` as a
    module name mapped to itself; the names it returns patches for are the file's adapter modules.
    """
    candidates: dict[str, str] = {}
    for key in lora:
        for cut, char in enumerate(key):
            if char in "._" and cut > 0:
                candidates.setdefault(key[:cut], key[:cut] + ".weight")
    recorder = _ReadRecorder(lora)
    patches = _load_patches(recorder, candidates)
    modules = sorted({target.rsplit(".", 1)[0] for target in patches})
    return modules, sorted(key for key in lora if key not in recorder.read)


def diffusers_attention_keys(model: Any, key_map: Mapping[str, Any]) -> dict[str, str]:
    """Diffusers / PEFT names of the UNet's attention projections that ComfyUI's key map lacks.

    ComfyUI maps ``unet.….attn1.processor.to_q`` (the old attention-processor form) but not
    ``unet.….attn1.to_q`` nor ``….attn1.to_out.0``, the names that diffusers' ``save_lora_weights`` and
    PEFT write; both point at the same UNet weight, through ComfyUI's own diffusers -> LDM table.
    """
    extra = {}
    diffusers_keys = comfy.utils.unet_to_diffusers(model.model_config.unet_config)
    for diffusers_key, unet_key in diffusers_keys.items():
        if not diffusers_key.endswith(".weight") or ".to_" not in diffusers_key:
            continue
        for prefix in ("", "unet."):
            name = prefix + diffusers_key[: -len(".weight")]
            if name not in key_map:
                extra[name] = f"diffusion_model.{unet_key}"
    return extra


# --- shapes ------------------------------------------------------------------------------------------


def _flat(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], prod(shape[1:])


def _kron_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if len(b) == 4 and len(a) == 2:  # ComfyUI unsqueezes w1 to 4-D for a conv w2
        a = (*a, 1, 1)
    a, b = (1,) * (len(b) - len(a)) + a, (1,) * (len(a) - len(b)) + b
    return tuple(x * y for x, y in zip(a, b, strict=True))


def _lora_delta(weights: tuple) -> tuple[int, int] | str:
    up, down, _alpha, mid, _dora, _reshape = weights
    if prod(up.shape[1:]) != down.shape[0]:
        return f"lora_up rank {prod(up.shape[1:])} != lora_down rank {down.shape[0]}"
    if mid is not None:  # LoCon with a Tucker mid: down (r, in), mid (r, r, kh, kw)
        return up.shape[0], down.shape[1] * prod(mid.shape[2:])
    return up.shape[0], prod(down.shape[1:])


def _loha_delta(weights: tuple) -> tuple[int, int] | str:
    w1a, w1b, _alpha, w2a, w2b, t1, t2, _dora = weights
    if t1 is not None:  # CP decomposition: w?a (r, out), w?b (r, in), t? (r, r, kh, kw)
        m1 = (w1a.shape[1], w1b.shape[1], *t1.shape[2:])
        m2 = (w2a.shape[1], w2b.shape[1], *t2.shape[2:])
    else:
        m1, m2 = (w1a.shape[0], w1b.shape[1]), (w2a.shape[0], w2b.shape[1])
    if m1 != m2:
        return f"hada_w1 {m1} and hada_w2 {m2} differ"
    return _flat(m1)


def _lokr_delta(weights: tuple) -> tuple[int, int]:
    w1, w2, _alpha, w1_a, w1_b, w2_a, w2_b, t2, _dora = weights
    s1 = tuple(w1.shape) if w1 is not None else (w1_a.shape[0], w1_b.shape[1])
    if w2 is not None:
        s2 = tuple(w2.shape)
    elif t2 is None:
        s2 = (w2_a.shape[0], w2_b.shape[1])
    else:
        s2 = (w2_a.shape[1], w2_b.shape[1], *t2.shape[2:])
    return _flat(_kron_shape(s1, s2))


def _glora_misfit(weights: tuple, shape: tuple[int, ...]) -> str | None:
    """GLoRA: W + W a1 a2 + b1 b2 (LyCORIS now) or W + W a2 a1 + b2 b1 (old LyCORIS), as ComfyUI picks."""
    a1, a2, b1, b2 = (tuple(w.shape) for w in weights[:4])
    old = b2[1] == b1[0] == a1[0] == a2[1]
    if b2[0] == b1[1] == a1[1] == a2[0] and not (old and a2[0] == shape[0] and shape[0] == shape[1]):
        old = False
    rows, cols = _flat(shape)
    if old:
        fits = b2[0] == rows and prod(b1[1:]) == cols and a2[0] == cols and prod(a1[1:]) == cols
    else:
        fits = b1[0] == rows and prod(b2[1:]) == cols and a1[0] == shape[1] and prod(a2[1:]) == shape[1]
    return None if fits else f"GLoRA factors a1 {a1}, a2 {a2}, b1 {b1}, b2 {b2}"


def _oft_misfit(blocks_shape: tuple[int, ...], shape: tuple[int, ...]) -> str | None:
    if len(blocks_shape) == 3:  # OFT: (blocks, size, size) rotate the output rows block-wise
        blocks, size = blocks_shape[:2]
        return None if blocks * size == shape[0] else f"OFT blocks {blocks}x{size} for {shape[0]} rows"
    steps, blocks, size = blocks_shape[:3]  # BOFT: butterfly of `steps` stages of (blocks, size, size)
    if blocks * size == shape[0] and size % 2 == 0 and shape[0] % (2 ** (steps - 1) * size) == 0:
        return None
    return f"BOFT {steps} stages of {blocks}x{size} blocks for {shape[0]} rows"


def _dora_misfit(dora: Any, shape: tuple[int, ...]) -> str | None:
    if dora is None:
        return None
    axis = 0 if dora.shape[0] == shape[0] else 1  # ComfyUI's weight_decompose picks the axis this way
    return None if dora.numel() == shape[axis] else f"dora_scale {tuple(dora.shape)}"


def patch_misfit(patch: Any, shape: tuple[int, ...]) -> str | None:
    """Why ComfyUI's ``calculate_weight`` cannot apply ``patch`` to a weight of ``shape``; None if it can.

    The delta's rows must be the weight's rows and its flattened columns the weight's (ComfyUI
    reshapes a LoRA delta to the weight: a (out, in*k*k) delta takes a (out, in, k, k) conv), which
    rules out a transposed delta that would reshape without error. ``diff`` and ``set`` need the shape.
    """
    shape = tuple(shape)
    if isinstance(patch, weight_adapter.WeightAdapterBase):
        weights = patch.weights
        if isinstance(patch, weight_adapter.GLoRAAdapter):
            return _glora_misfit(weights, shape) or _dora_misfit(weights[5], shape)
        if isinstance(patch, (weight_adapter.OFTAdapter, weight_adapter.BOFTAdapter)):
            return _oft_misfit(tuple(weights[0].shape), shape) or _dora_misfit(weights[3], shape)
        if isinstance(patch, weight_adapter.LoRAAdapter):
            reshape = weights[5]
            if reshape is not None:  # ComfyUI pads the weight to this shape first
                if len(reshape) != len(shape) or any(r < s for r, s in zip(reshape, shape, strict=True)):
                    return f"reshape_weight {tuple(reshape)}"
                shape = tuple(reshape)
            delta, dora = _lora_delta(weights), weights[4]
        elif isinstance(patch, weight_adapter.LoHaAdapter):
            delta, dora = _loha_delta(weights), weights[7]
        elif isinstance(patch, weight_adapter.LoKrAdapter):
            delta, dora = _lokr_delta(weights), weights[8]
        else:
            return None  # an adapter this pack does not know: ComfyUI decides
        if isinstance(delta, str):
            return delta
        if delta != _flat(shape):
            return f"delta {delta[0]}x{delta[1]}"
        return _dora_misfit(dora, shape)
    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] in ("diff", "set"):
        tensor = patch[1][0]
        return None if tuple(tensor.shape) == shape else f"{patch[0]} {tuple(tensor.shape)}"
    return None


def _target_shapes(model: Any, clip: Any) -> dict[str, tuple[int, ...]]:
    shapes = {key: tuple(value.shape) for key, value in model.model.state_dict().items()}
    if clip is not None:
        shapes.update((key, tuple(value.shape)) for key, value in clip.cond_stage_model.state_dict().items())
    return shapes


def _misfits(patches: Mapping[Any, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """{target weight: why its patch does not fit} over ``patches`` (ComfyUI's patch dict)."""
    misfits = {}
    for target, patch in patches.items():
        key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        shape = shapes.get(key)
        if shape is None:
            misfits[key] = "no such weight"
            continue
        if offset is not None:  # (dim, start, length): the patch takes a narrowed view
            shape = (*shape[: offset[0]], offset[2], *shape[offset[0] + 1 :])
        reason = patch_misfit(patch, shape)
        if reason is not None:
            misfits[key] = f"{reason} vs weight {'x'.join(map(str, shape))}"
    return misfits


def _delta_columns(patch: Any) -> int | None:
    """The flattened input width of a low-rank patch's delta (LoRA, LoHa, LoKr), else None."""
    if isinstance(patch, weight_adapter.LoRAAdapter):
        delta = _lora_delta(patch.weights)
    elif isinstance(patch, weight_adapter.LoHaAdapter):
        delta = _loha_delta(patch.weights)
    elif isinstance(patch, weight_adapter.LoKrAdapter):
        delta = _lokr_delta(patch.weights)
    else:
        return None
    return None if isinstance(delta, str) else delta[1]


def _family_hint(misfits: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], patches: Mapping) -> str:
    """'its cross-attention takes 2048-wide text embeddings (SDXL), ...' when an attn2.to_k patch tells it."""
    for target, patch in patches.items():
        if not isinstance(target, str) or target not in misfits or ".attn2.to_k." not in target:
            continue
        if target not in shapes:
            continue
        theirs, ours = _delta_columns(patch), shapes[target][1]
        if theirs in _CONTEXT_FAMILIES and ours in _CONTEXT_FAMILIES:
            return (
                f"its cross-attention takes {theirs}-wide text embeddings ({_CONTEXT_FAMILIES[theirs]}), "
                f"this model's take {ours} ({_CONTEXT_FAMILIES[ours]})"
            )
    return "e.g. an SDXL LoRA on an SD1.5 checkpoint, or an SD1.5 LoRA on SDXL"


def _listing(names: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown} and {len(names) - _SHOWN} more"


# --- files -------------------------------------------------------------------------------------------


def unlisted_lora_message(name: str) -> str | None:
    """Why ``name`` may not be loaded (it is not a file in ComfyUI's loras folders), or None if it may."""
    if name in folder_paths.get_filename_list("loras"):
        return None
    return f"LoRA {name!r} is not in ComfyUI's loras folders; pick one from the list"


def lora_path(name: str) -> str:
    """The file of a LoRA listed in ComfyUI's loras folders; any other name is refused."""
    message = unlisted_lora_message(name)
    if message is not None:
        raise ValueError(message)
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise ValueError(f"LoRA {name!r} is listed but its file is gone; refresh the node")
    return path


def read_lora(name: str) -> dict[str, Any]:
    """The tensors of a LoRA file, after ComfyUI's own format conversions (comfy.lora_convert)."""
    path = lora_path(name)
    try:
        lora = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as error:  # a truncated or corrupt file raises library-specific errors
        raise ValueError(f"LoRA {name!r} could not be read ({type(error).__name__}: {error})") from None
    return comfy.lora_convert.convert_lora(lora)


# --- applying ----------------------------------------------------------------------------------------


def lora_patches(model: Any, clip: Any, name: str, lora: Mapping[str, Any]) -> tuple[dict[Any, Any], LoraFit]:
    """ComfyUI's patch dict of the tensors ``lora`` (file ``name``) for ``model`` (and ``clip``).

    Raises ValueError, naming the file, unless it is a LoRA, names a weight here and every patch fits.
    """
    try:
        modules, ignored = adapter_modules(lora)
    except ValueError as error:
        raise ValueError(f"LoRA {name!r}: {error}") from None
    if not modules:
        raise ValueError(
            f"{name!r} is not a LoRA: none of its {len(lora)} tensors is a weight that ComfyUI's LoRA loader "
            "reads (LoRA/LoCon, DoRA, LoHa, LoKr, OFT, BOFT, GLoRA, diff, norm)"
        )
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    extra = diffusers_attention_keys(model.model, key_map)
    wanted = set(modules)
    to_load = {module: target for module, target in key_map.items() if module in wanted}
    converted = tuple(sorted(module for module in wanted - to_load.keys() if module in extra))
    to_load.update((module, extra[module]) for module in converted)
    skipped = tuple(sorted(wanted - to_load.keys()))
    if not to_load:
        raise ValueError(
            f"LoRA {name!r} patches nothing in this model ({len(modules)} modules, none match): "
            "it was made for another model family (e.g. an SDXL LoRA on an SD1.5 checkpoint)"
        )
    patches = _load_patches(lora, to_load)
    shapes = _target_shapes(model, clip)
    misfits = _misfits(patches, shapes)
    # A module that fits by name may also patch a weight this layer does not have (a LyCORIS diff_b for a
    # layer without a bias): left out with a warning, as ComfyUI's LoraLoader skips it.
    absent = tuple(sorted(key for key, why in misfits.items() if why == "no such weight"))
    if absent:
        patches = {t: v for t, v in patches.items() if (t if isinstance(t, str) else t[0]) not in absent}
        misfits = {key: why for key, why in misfits.items() if key not in absent}
        if not patches:
            raise ValueError(
                f"LoRA {name!r} patches nothing in this model: the {len(absent)} weights it names do not exist here "
                f"({_listing(absent)})"
            )
    if misfits:
        examples = "; ".join(f"{key}: {why}" for key, why in list(misfits.items())[:2])
        unnamed = f", and {len(skipped)} of its {len(modules)} modules name no weight here" if skipped else ""
        raise ValueError(
            f"LoRA {name!r} does not fit this model: {len(misfits)} of its patches do not take the shape of "
            f"the weight they name, {len(patches) - len(misfits)} do{unnamed} ({examples}); it was made for "
            f"another model family ({_family_hint(misfits, shapes, patches)}). Nothing was applied"
        )
    fit = LoraFit(name, len(modules), len(patches), skipped, converted, tuple(ignored), absent)
    return patches, fit


def apply_lora(model: Any, clip: Any, name: str, strength: float) -> tuple[Any, Any, LoraFit]:
    """Patch clones of ``model`` (and ``clip``) with one LoRA; raise, before any patch, unless it fits."""
    patches, fit = lora_patches(model, clip, name, read_lora(name))
    model = model.clone()
    patched = set(model.add_patches(patches, strength))
    if clip is not None:
        clip = clip.clone()
        patched |= set(clip.add_patches(patches, strength))
    if len(patched) != fit.patched:  # every target was checked against these state dicts
        raise RuntimeError(f"LoRA {name!r}: {fit.patched - len(patched)} checked patches did not land")
    if fit.converted:
        log.info(
            "LoRA %r: mapped %d diffusers attention modules that ComfyUI's own loader skips: %s",
            name,
            len(fit.converted),
            _listing(fit.converted),
        )
    if fit.absent:
        log.warning(
            "LoRA %r patches %d weights this model does not have (left out, as ComfyUI's LoraLoader does): %s",
            name,
            len(fit.absent),
            _listing(fit.absent),
        )
    if fit.is_partial:
        log.warning(
            "LoRA %r fits this model partly: %d of its %d modules patch it; skipped %d naming no weight here%s: %s",
            name,
            fit.modules - len(fit.skipped),
            fit.modules,
            len(fit.skipped),
            "" if clip is not None else " (connect CLIP to apply a text-encoder part)",
            _listing(fit.skipped),
        )
        log.debug("LoRA %r skipped modules: %s", name, ", ".join(fit.skipped))
    else:
        log.info(
            "LoRA %r: all %d modules applied (%d weights) at strength %g", name, fit.modules, fit.patched, strength
        )
    if fit.ignored:
        log.warning(
            "LoRA %r: %d tensors belong to no adapter ComfyUI applies, ignored: %s",
            name,
            len(fit.ignored),
            _listing(fit.ignored),
        )
    return model, clip, fit
