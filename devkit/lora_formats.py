"""Synthetic LoRA files in every format that circulates, keyed and shaped for a real ComfyUI model.

    targets = lora_targets(model, clip)               # ModelPatcher + CLIP (loaded or devkit.sdxl_test_model)
    tensors = build_format("lycoris-loha", targets)   # {key: tensor}, seeded, ready for save_file

Key names come from ComfyUI's own tables (comfy.utils.unet_to_diffusers for the diffusers <-> LDM
block names, comfy.lora.LORA_CLIP_MAP for the text encoders) applied to the model's state dict, and
every factor has the shape the format's trainer would give it for that module (kohya sd-scripts,
LyCORIS, diffusers / PEFT, ComfyUI's TrainLoraNode). Values are small and random (seeded), so a file
changes every weight it names. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import prod
from typing import Any

RANK = 4
FACTOR_STD = 0.1
SEED = 9100

# Module families by their diffusers name (as trainers select them).
ATTENTION = (
    ".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0",
    ".attn2.to_q", ".attn2.to_k", ".attn2.to_v", ".attn2.to_out.0",
)  # fmt: skip
TRANSFORMER = (*ATTENTION, ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")  # kohya LoRA / LyCORIS default
CONVOLUTION = (".conv1", ".conv2", ".conv_shortcut", ".time_emb_proj", "samplers.0.conv")  # LoCon's extra modules
LCM_DISTILL = (*TRANSFORMER, *CONVOLUTION)  # diffusers' train_lcm_distill_lora_* target_modules


@dataclass(frozen=True)
class Target:
    """One weight a LoRA may patch, with every name the formats use for its module."""

    part: str  # "unet", or the text encoder's kohya tag: "te" (SD1.x), "te1" / "te2" (SDXL)
    module: str  # state-dict key without ".weight": "diffusion_model.input_blocks.1.1.proj_in"
    diffusers: str  # diffusers module name: "down_blocks.0.attentions.0.proj_in", "text_model.encoder..."
    shape: tuple[int, ...]
    has_bias: bool

    @property
    def is_unet(self) -> bool:
        return self.part == "unet"

    @property
    def ldm(self) -> str:
        return self.module.removeprefix("diffusion_model.")

    def kohya(self, blocks: str = "diffusers") -> str:
        name = self.diffusers if blocks == "diffusers" or not self.is_unet else self.ldm
        return f"lora_{self.part}_{name.replace('.', '_')}"

    def diffusers_name(self) -> str:
        if self.is_unet:
            return f"unet.{self.diffusers}"
        return f"{'text_encoder_2' if self.part == 'te2' else 'text_encoder'}.{self.diffusers}"


def lora_targets(model: Any, clip: Any | None) -> list[Target]:
    """Every UNet weight with a diffusers name, and every CLIP projection kohya's LoRA names."""
    import comfy.lora
    import comfy.utils

    unet_sd = model.model.state_dict()
    to_diffusers = {
        f"diffusion_model.{ldm_key}": diffusers_key
        for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items()
    }
    targets = []
    for key, value in unet_sd.items():
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            module = key[: -len(".weight")]
            diffusers = to_diffusers.get(key, "")[: -len(".weight")]  # "" where diffusers has no name for it
            targets.append(Target("unet", module, diffusers, tuple(value.shape), f"{module}.bias" in unet_sd))
    if clip is not None:
        clip_sd = clip.cond_stage_model.state_dict()
        layers = "{}.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
        encoders = [encoder for encoder in ("clip_l", "clip_g") if layers.format(encoder) in clip_sd]
        for encoder in encoders:
            part = "te" if len(encoders) == 1 else ("te1" if encoder == "clip_l" else "te2")
            for layer in range(64):
                for diffusers_suffix in comfy.lora.LORA_CLIP_MAP:
                    module = f"{encoder}.transformer.text_model.encoder.layers.{layer}.{diffusers_suffix}"
                    if f"{module}.weight" in clip_sd:
                        shape = tuple(clip_sd[f"{module}.weight"].shape)
                        diffusers = f"text_model.encoder.layers.{layer}.{diffusers_suffix}"
                        targets.append(Target(part, module, diffusers, shape, f"{module}.bias" in clip_sd))
    return targets


def select(targets: Iterable[Target], suffixes: tuple[str, ...] = TRANSFORMER, text: bool = True) -> list[Target]:
    """UNet targets whose diffusers name ends with one of ``suffixes`` (matrices only), plus the CLIP ones."""
    chosen = []
    for target in targets:
        if target.is_unet:
            if len(target.shape) >= 2 and target.diffusers and target.diffusers.endswith(suffixes):
                chosen.append(target)
        elif text:
            chosen.append(target)
    return chosen


def norms(targets: Iterable[Target]) -> list[Target]:
    """The UNet's GroupNorm / LayerNorm weights (LyCORIS trains them with ``w_norm`` / ``b_norm``)."""
    return [t for t in targets if t.is_unet and len(t.shape) == 1 and t.diffusers.rsplit(".", 1)[-1].startswith("norm")]


# --- factors ----------------------------------------------------------------------------------------


class _Random:
    def __init__(self, seed: int) -> None:
        import torch

        self.torch = torch
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, std: float = FACTOR_STD) -> Any:
        return self.torch.randn(*shape, generator=self.generator) * std

    def positive(self, *shape: int) -> Any:
        return 0.5 + self.torch.rand(*shape, generator=self.generator)

    def scalar(self, value: float) -> Any:
        return self.torch.tensor(float(value))


def _kernel(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[2:])


def lora_factors(t: Target, rnd: _Random, rank: int = RANK) -> tuple[Any, Any]:
    """(up, down) as kohya / PEFT / diffusers hold them: a conv's down has its kernel, its up is 1x1."""
    out_dim, in_dim, kernel = t.shape[0], t.shape[1], _kernel(t.shape)
    down = rnd(rank, in_dim, *kernel)
    up = rnd(out_dim, rank, *([1] * len(kernel)))
    return up, down


def _kohya(t: Target, rnd: _Random, alpha: bool = True, dora: bool = False, blocks: str = "diffusers") -> dict:
    up, down = lora_factors(t, rnd)
    name = t.kohya(blocks)
    out = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}
    if alpha:
        out[f"{name}.alpha"] = rnd.scalar(RANK / 2)
    if dora:  # LyCORIS / kohya DoRA: one magnitude per input column, shaped (1, in, 1, 1) for a conv
        out[f"{name}.dora_scale"] = rnd.positive(1, t.shape[1], *([1] * len(_kernel(t.shape))))
    return out


def _lcm_kohya(t: Target, rnd: _Random) -> dict:
    """diffusers' LCM-distill scripts' kohya export: PEFT factors renamed, alpha = lora_alpha in fp16."""
    up, down = lora_factors(t, rnd)
    name = t.kohya("diffusers")
    alpha = rnd.scalar(RANK).half()
    return {f"{name}.lora_down.weight": down.half(), f"{name}.lora_up.weight": up.half(), f"{name}.alpha": alpha}


def _diffusers_saved(t: Target, rnd: _Random) -> dict:
    """diffusers 0.21-0.24 save_lora_weights: UNet `.lora.up/down`, text encoder `.lora_linear_layer.up/down`."""
    up, down = lora_factors(t, rnd)
    layer = "lora" if t.is_unet else "lora_linear_layer"
    name = t.diffusers_name()
    return {f"{name}.{layer}.up.weight": up, f"{name}.{layer}.down.weight": down}


def _peft(t: Target, rnd: _Random) -> dict:
    """PEFT / diffusers >= 0.25 save_lora_weights: `lora_A` (down) and `lora_B` (up), no alpha."""
    up, down = lora_factors(t, rnd)
    name = t.diffusers_name()
    return {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}


def _attention_processor(t: Target, rnd: _Random) -> dict:
    """diffusers <= 0.16 LoRAAttnProcessor: `….attn1.processor.to_q_lora.down.weight`, UNet attention only."""
    if not t.is_unet or not t.diffusers.endswith(ATTENTION):
        return {}
    up, down = lora_factors(t, rnd)
    name = t.diffusers.replace(".to_out.0", ".to_out").replace(".to_", ".processor.to_")
    return {f"{name}_lora.up.weight": up, f"{name}_lora.down.weight": down}


def _loha(t: Target, rnd: _Random) -> dict:
    out_dim, in_flat = t.shape[0], prod(t.shape[1:])
    name = t.kohya()
    return {
        f"{name}.hada_w1_a": rnd(out_dim, RANK),
        f"{name}.hada_w1_b": rnd(RANK, in_flat),
        f"{name}.hada_w2_a": rnd(out_dim, RANK),
        f"{name}.hada_w2_b": rnd(RANK, in_flat),
        f"{name}.alpha": rnd.scalar(RANK),
    }


def _lokr(t: Target, rnd: _Random, name: str | None = None) -> dict:
    """LyCORIS LoKr: W = kron(w1, w2), w1 full and small, w2 low-rank (linear) or full with the kernel (conv)."""
    from comfy.weight_adapter.base import factorization

    out_small, out_large = factorization(t.shape[0], 8)
    in_small, in_large = factorization(t.shape[1], 8)
    name = name or t.kohya()
    out = {f"{name}.lokr_w1": rnd(out_small, in_small), f"{name}.alpha": rnd.scalar(RANK)}
    kernel = _kernel(t.shape)
    if kernel and kernel != (1, 1):
        out[f"{name}.lokr_w2"] = rnd(out_large, in_large, *kernel)
    else:
        out[f"{name}.lokr_w2_a"] = rnd(out_large, RANK)
        out[f"{name}.lokr_w2_b"] = rnd(RANK, in_large * prod(kernel))  # a 1x1 conv's kernel flattened in
    return out


def _oft(t: Target, rnd: _Random) -> dict:
    """LyCORIS diag-OFT: one skew block per `block_size` output rows; alpha is its norm constraint (0: none)."""
    from comfy.weight_adapter.base import factorization

    block_size, blocks = factorization(t.shape[0], RANK)
    name = t.kohya()
    return {f"{name}.oft_blocks": rnd(blocks, block_size, block_size, std=0.01), f"{name}.alpha": rnd.scalar(0)}


BOFT_STAGES, BOFT_BLOCK = 2, 4


def _boft(t: Target, rnd: _Random) -> dict:
    """LyCORIS butterfly OFT: `stages` butterfly factors of (out / block) blocks of block x block."""
    name = t.kohya()
    blocks = rnd(BOFT_STAGES, t.shape[0] // BOFT_BLOCK, BOFT_BLOCK, BOFT_BLOCK, std=0.01)
    return {f"{name}.oft_blocks": blocks, f"{name}.rescale": rnd.positive(t.shape[0], *[1] * (len(t.shape) - 1)),
            f"{name}.alpha": rnd.scalar(0)}  # fmt: skip


def _glora(t: Target, rnd: _Random) -> dict:
    """LyCORIS GLoRA (W + W a1 a2 + b1 b2): nn.Linear / 1x1-conv factors, b2 carries a conv's kernel."""
    out_dim, in_dim, kernel = t.shape[0], t.shape[1], _kernel(t.shape)
    ones = [1] * len(kernel)
    name = t.kohya()
    return {
        f"{name}.a1.weight": rnd(in_dim, RANK, *ones, std=0.02),
        f"{name}.a2.weight": rnd(RANK, in_dim, *ones, std=0.02),
        f"{name}.b1.weight": rnd(out_dim, RANK, *ones),
        f"{name}.b2.weight": rnd(RANK, in_dim, *kernel),
        f"{name}.alpha": rnd.scalar(RANK),
    }


def _full(t: Target, rnd: _Random) -> dict:
    """LyCORIS `full`: the whole weight difference, and the bias difference where the module has one."""
    name = t.kohya()
    out = {f"{name}.diff": rnd(*t.shape, std=0.01)}
    if t.has_bias:
        out[f"{name}.diff_b"] = rnd(t.shape[0], std=0.01)
    return out


def _norm(t: Target, rnd: _Random) -> dict:
    name = t.kohya()
    return {f"{name}.w_norm": rnd(*t.shape, std=0.05), f"{name}.b_norm": rnd(*t.shape, std=0.05)}


def _comfy_trained(t: Target, rnd: _Random) -> dict:
    """ComfyUI's TrainLoraNode / SaveLoRA: LoraDiff (linear factors, a conv's flattened) + `diff` / `diff_b`."""
    out = {}
    if len(t.shape) >= 2:
        out[f"{t.module}.lora_up.weight"] = rnd(t.shape[0], 1)
        out[f"{t.module}.lora_down.weight"] = rnd(1, prod(t.shape[1:]))
        out[f"{t.module}.alpha"] = rnd.scalar(1.0)
    else:
        out[f"{t.module}.diff"] = rnd(*t.shape, std=0.01)
    if t.has_bias:
        out[f"{t.module}.diff_b"] = rnd(t.shape[0], std=0.01)
    return out


def _simpletuner_lycoris(t: Target, rnd: _Random) -> dict:
    """SimpleTuner's LyCORIS export (LoKr by default): `lycoris_` + the diffusers name, UNet only."""
    return _lokr(t, rnd, name="lycoris_" + t.diffusers.replace(".", "_")) if t.is_unet else {}


@dataclass(frozen=True)
class LoraFormat:
    description: str
    modules: Callable[[list[Target]], list[Target]]
    tensors: Callable[[Target, _Random], dict]


def _first_blocks(targets: list[Target]) -> list[Target]:
    """A full-size diff of everything would be the size of the model: first attention, resnet and CLIP layer."""
    heads = ("down_blocks.0.attentions.0.", "down_blocks.0.resnets.0.", "text_model.encoder.layers.0.")
    return [t for t in select(targets, (*TRANSFORMER, *CONVOLUTION)) if t.diffusers.startswith(heads)]


FORMATS: dict[str, LoraFormat] = {
    "kohya-lora": LoraFormat("kohya LoRA, diffusers block names, alpha", select, _kohya),
    "kohya-lora-no-alpha": LoraFormat("kohya LoRA without .alpha", select, lambda t, rnd: _kohya(t, rnd, alpha=False)),
    "kohya-lora-ldm-names": LoraFormat(
        "kohya LoRA, LDM/SGM block names", select, lambda t, rnd: _kohya(t, rnd, blocks="ldm")
    ),
    "kohya-locon": LoraFormat(
        "kohya LoCon (convs too), diffusers names", lambda ts: select(ts, (*TRANSFORMER, *CONVOLUTION)), _kohya
    ),
    "kohya-locon-ldm-no-alpha": LoraFormat(
        "kohya LoCon, LDM names, no alpha",
        lambda ts: select(ts, (*TRANSFORMER, *CONVOLUTION)),
        lambda t, rnd: _kohya(t, rnd, alpha=False, blocks="ldm"),
    ),
    "lcm-distill-kohya": LoraFormat(
        "diffusers LCM-distill scripts' kohya export", lambda ts: select(ts, LCM_DISTILL, text=False), _lcm_kohya
    ),
    "diffusers-saved": LoraFormat(
        "diffusers save_lora_weights (.lora.down / .lora_linear_layer)", select, _diffusers_saved
    ),
    "peft": LoraFormat("PEFT lora_A / lora_B", select, _peft),
    "attention-processor": LoraFormat(
        "diffusers attention processors (.processor.to_q_lora)", select, _attention_processor
    ),
    "lycoris-loha": LoraFormat("LyCORIS LoHa", lambda ts: select(ts, (*TRANSFORMER, *CONVOLUTION)), _loha),
    "lycoris-lokr": LoraFormat("LyCORIS LoKr", lambda ts: select(ts, (*TRANSFORMER, *CONVOLUTION)), _lokr),
    "lycoris-oft": LoraFormat("LyCORIS diag-OFT", select, _oft),
    "lycoris-boft": LoraFormat("LyCORIS BOFT", select, _boft),
    "lycoris-glora": LoraFormat("LyCORIS GLoRA", lambda ts: select(ts, (*TRANSFORMER, *CONVOLUTION)), _glora),
    "lycoris-full-diff": LoraFormat("LyCORIS full (diff / diff_b)", _first_blocks, _full),
    "lycoris-norms": LoraFormat("norm layers only (w_norm / b_norm)", norms, _norm),
    "dora": LoraFormat("DoRA (kohya LoRA + dora_scale)", select, lambda t, rnd: _kohya(t, rnd, dora=True)),
    "comfyui-trained": LoraFormat(
        "ComfyUI TrainLoraNode / SaveLoRA", lambda ts: [t for t in ts if t.is_unet], _comfy_trained
    ),
    "simpletuner-lycoris": LoraFormat(
        "SimpleTuner lycoris_ prefix (LoKr)", lambda ts: select(ts, text=False), _simpletuner_lycoris
    ),
}


def build_format(format_id: str, targets: list[Target], seed: int = SEED) -> dict[str, Any]:
    """The tensors of a ``format_id`` LoRA for ``targets`` (see FORMATS), seeded by the format's name."""
    spec = FORMATS[format_id]
    rnd = _Random(seed + sum(map(ord, format_id)))
    tensors: dict[str, Any] = {}
    for target in spec.modules(targets):
        tensors.update(spec.tensors(target, rnd))
    if not tensors:
        raise ValueError(f"format {format_id!r} found nothing to patch among {len(targets)} targets")
    return tensors
