"""Every LoRA format that ComfyUI's LoraLoader applies, through the TCD LoRA Loader, in a real ComfyUI.

Each file is built by devkit.lora_formats from ComfyUI's own key tables and the model's state-dict
shapes (SD1.5 test checkpoint; SDXL as a weightless meta-device model built with ComfyUI's classes).
The reference is ComfyUI's own LoraLoader node at the same strengths: the same weights patched, with
the same patch lists, except where the pack maps diffusers attention names that ComfyUI drops, which
are checked against W + strength * up @ down computed by hand. Files made for another family are
refused whole, before any weight is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from devkit import lora_formats
from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import default_models_dir
from devkit.sdxl_test_model import sdxl_meta_model

CKPT = "tcd-test-sd15.safetensors"
LOADER = "TrajectoryConsistencyLoraLoader"
STRENGTH = 0.8
SAMPLED_WEIGHTS = 8  # patched weights computed per format
CONVERTED_STRIDE = 5  # every 5th converted weight checked by hand (coprime to the 8 projections of a block)
CONVERTING = {"diffusers-saved", "peft"}  # formats whose UNet attention ComfyUI's key map misses
TABLE: dict[str, tuple[int, int, int, int, int]] = {}


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    """ComfyUI with the pack (loaded once per process)."""
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def loras(comfy: Comfy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extra folder of ComfyUI's `loras`, for the files built here."""
    import folder_paths

    folder = tmp_path_factory.mktemp("lora-formats")
    folder_paths.add_model_folder_path("loras", str(folder))
    return folder


@pytest.fixture(scope="module")
def sd15(comfy: Comfy) -> SimpleNamespace:
    model, clip, _ = run_node(comfy.node("CheckpointLoaderSimple"), ckpt_name=CKPT)
    return SimpleNamespace(model=model, clip=clip, targets=lora_formats.lora_targets(model, clip))


@pytest.fixture(scope="module")
def sdxl(comfy: Comfy) -> SimpleNamespace:
    model, clip = sdxl_meta_model()
    return SimpleNamespace(model=model, clip=clip, targets=lora_formats.lora_targets(model, clip))


@pytest.fixture(scope="module", autouse=True)
def patch_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints format -> model / CLIP patch keys, ours against ComfyUI's LoraLoader, after the module."""
    yield
    if not TABLE:
        return
    lines = [
        "",
        "| format | ours: model / CLIP keys | LoraLoader: model / CLIP keys | converted |",
        "|---|---|---|---|",
    ]
    for format_id, (om, oc, tm, tc, converted) in TABLE.items():
        lines.append(f"| {format_id} | {om} / {oc} | {tm} / {tc} | {converted} |")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            for line in lines:
                reporter.write_line(line)


def save_lora(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> str:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(folder / name))
    return name


def tcd_loader(comfy: Comfy, model: Any, clip: Any, *slots: tuple[str, float]) -> tuple[Any, Any]:
    """The TCD LoRA Loader node with (name, strength) in the TCD slot, then the style slots."""
    inputs: dict[str, Any] = {"model": model, "clip": clip, "tcd_lora": slots[0][0], "tcd_lora_strength": slots[0][1]}
    for i in range(1, 4):
        name, strength = slots[i] if i < len(slots) else ("None", 1.0)
        inputs |= {f"style_lora_{i}": name, f"style_lora_{i}_strength": strength}
    return run_node(comfy.node(LOADER), **inputs)


def comfy_lora_loader(comfy: Comfy, model: Any, clip: Any, name: str, strength: float) -> tuple[Any, Any]:
    node = comfy.node("LoraLoader")
    return run_node(node, model=model, clip=clip, lora_name=name, strength_model=strength, strength_clip=strength)


def assert_same_value(ours: Any, theirs: Any, where: str) -> None:
    """Two patch values (adapters, ('diff', (tensor,)) tuples, tensors) hold the same data."""
    if isinstance(ours, torch.Tensor):
        assert isinstance(theirs, torch.Tensor) and torch.equal(ours, theirs), where
    elif hasattr(ours, "weights"):  # a comfy.weight_adapter adapter
        assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} != {type(theirs).__name__}"
        assert_same_value(tuple(ours.weights), tuple(theirs.weights), where)
    elif isinstance(ours, (tuple, list)):
        assert isinstance(theirs, (tuple, list)) and len(ours) == len(theirs), where
        for a, b in zip(ours, theirs, strict=True):
            assert_same_value(a, b, where)
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def assert_same_patches(ours: dict, theirs: dict, keys: set[str]) -> None:
    """Per weight: the same list of (strength, patch, strength_model, offset, function), in order."""
    for key in sorted(keys):
        assert len(ours[key]) == len(theirs[key]), key
        for a, b in zip(ours[key], theirs[key], strict=True):
            assert a[0] == b[0] and a[2:] == b[2:], f"{key}: strengths/offset {a[0], a[2:]} != {b[0], b[2:]}"
            assert_same_value(a[1], b[1], key)


def base_weight(patcher: Any, key: str) -> torch.Tensor:
    module_name, _, param = key.rpartition(".")
    tensor = getattr(patcher.model.get_submodule(module_name), param)  # state_dict() per key would be slow
    return tensor.detach().to(torch.float32).clone()


def computed_weight(patcher: Any, key: str, caplog: pytest.LogCaptureFixture) -> torch.Tensor:
    """The patched weight as ComfyUI computes it (comfy.lora.calculate_weight), refusing any logged error."""
    import comfy.lora

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        weight = comfy.lora.calculate_weight(patcher.patches[key], base_weight(patcher, key), key)
    assert not caplog.records, f"{key}: ComfyUI logged {[r.getMessage() for r in caplog.records]}"
    return weight


def spread(keys: set[str], count: int) -> list[str]:
    ordered = sorted(keys)
    return ordered[:: max(1, len(ordered) // count)][:count]


def hand_lora_weight(
    tensors: dict[str, torch.Tensor], module: str, base: torch.Tensor, strength: float
) -> torch.Tensor:
    """W + strength * up @ down * (alpha / rank, or 1 without alpha), for any up/down naming of ``module``."""
    for up_suffix, down_suffix in ((".lora.up.weight", ".lora.down.weight"), (".lora_B.weight", ".lora_A.weight")):
        if module + up_suffix in tensors:
            up, down = tensors[module + up_suffix].double(), tensors[module + down_suffix].double()
            break
    else:
        raise KeyError(module)
    alpha = tensors.get(f"{module}.alpha")
    scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
    delta = (up.flatten(1) @ down.flatten(1)).reshape(base.shape)
    return (base.double() + strength * scale * delta).to(base.dtype)


# --- every format on SD1.5 ---------------------------------------------------------------------------


@pytest.mark.parametrize("format_id", list(lora_formats.FORMATS))
def test_format_patches_what_comfyui_patches(
    comfy: Comfy, sd15: SimpleNamespace, loras: Path, format_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    tensors = lora_formats.build_format(format_id, sd15.targets)
    name = save_lora(loras, f"sd15-{format_id}.safetensors", tensors)
    with caplog.at_level(logging.INFO, logger="comfyui-tcd-sampling"):
        ours_model, ours_clip = tcd_loader(comfy, sd15.model, sd15.clip, (name, STRENGTH))
    theirs_model, theirs_clip = comfy_lora_loader(comfy, sd15.model, sd15.clip, name, STRENGTH)
    ours_keys, theirs_keys = set(ours_model.patches), set(theirs_model.patches)

    converted = ours_keys - theirs_keys
    if format_id in CONVERTING:  # ComfyUI drops exactly the UNet attention projections; the pack maps them
        attention = lora_formats.select(sd15.targets, lora_formats.ATTENTION, text=False)
        assert converted == {f"{t.module}.weight" for t in attention}
        assert f"mapped {len(converted)} diffusers attention modules" in caplog.text
    else:
        assert not converted
    assert theirs_keys <= ours_keys and theirs_keys, "ComfyUI's LoraLoader patched weights the pack did not"
    assert set(ours_clip.patcher.patches) == set(theirs_clip.patcher.patches)
    assert_same_patches(ours_model.patches, theirs_model.patches, theirs_keys)
    assert_same_patches(ours_clip.patcher.patches, theirs_clip.patcher.patches, set(theirs_clip.patcher.patches))
    assert "fits this model partly" not in caplog.text and "belong to no adapter" not in caplog.text
    assert not sd15.model.patches and not sd15.clip.patcher.patches  # clones were patched, not the inputs

    for patcher, keys in ((ours_model, ours_keys - converted), (ours_clip.patcher, set(ours_clip.patcher.patches))):
        for key in spread(keys, SAMPLED_WEIGHTS):
            change = (computed_weight(patcher, key, caplog) - base_weight(patcher, key)).abs().max()
            assert change > 1e-4, f"{format_id}: {key} did not change ({change})"
    by_key = {f"{t.module}.weight": t for t in sd15.targets}
    checked = sorted(converted)[::CONVERTED_STRIDE]
    if format_id in CONVERTING:  # the sample holds each of a block's 8 projections
        assert {by_key[key].diffusers.rsplit(".attn", 1)[1] for key in checked} == {
            suffix.removeprefix(".attn") for suffix in lora_formats.ATTENTION
        }
    for key in checked:  # W + strength * up @ down, by hand, for what ComfyUI's own key map misses
        expected = hand_lora_weight(tensors, by_key[key].diffusers_name(), base_weight(ours_model, key), STRENGTH)
        error = (computed_weight(ours_model, key, caplog) - expected).abs().max()
        assert error < 1e-6, f"{format_id} {key}: patched weight off by {error} from W + strength * up @ down"
    TABLE[format_id] = (
        len(ours_keys),
        len(ours_clip.patcher.patches),
        len(theirs_keys),
        len(theirs_clip.patcher.patches),
        len(converted),
    )


def test_stacked_formats_equal_chained_lora_loaders(comfy: Comfy, sd15: SimpleNamespace, loras: Path) -> None:
    """TCD slot + three style slots of mixed formats == four LoraLoaders in a chain, patch by patch."""
    stack = [("kohya-lora", 1.0), ("lycoris-loha", 0.6), ("lycoris-oft", -0.5), ("comfyui-trained", 1.3)]
    slots = []
    for format_id, strength in stack:
        name = save_lora(loras, f"stack-{format_id}.safetensors", lora_formats.build_format(format_id, sd15.targets))
        slots.append((name, strength))
    ours_model, ours_clip = tcd_loader(comfy, sd15.model, sd15.clip, *slots)
    model, clip = sd15.model, sd15.clip
    for name, strength in slots:
        model, clip = comfy_lora_loader(comfy, model, clip, name, strength)
    assert set(ours_model.patches) == set(model.patches)
    assert set(ours_clip.patcher.patches) == set(clip.patcher.patches)
    assert_same_patches(ours_model.patches, model.patches, set(model.patches))
    assert_same_patches(ours_clip.patcher.patches, clip.patcher.patches, set(clip.patcher.patches))
    assert max(len(patches) for patches in ours_model.patches.values()) == len(stack)


# --- the wrong family: refused by shape ----------------------------------------------------------------


SDXL_ON_SD15 = ["kohya-lora-ldm-names", "kohya-locon", "peft", "diffusers-saved", "lycoris-lokr", "lycoris-oft"]


@pytest.mark.parametrize("format_id", SDXL_ON_SD15)
def test_sdxl_lora_on_sd15_is_refused_before_any_patch(
    comfy: Comfy, sd15: SimpleNamespace, sdxl: SimpleNamespace, loras: Path, format_id: str
) -> None:
    """SDXL files share many names with SD1.5 (input_blocks.4.1..., lora_te1_ = CLIP-L): shapes decide."""
    name = save_lora(loras, f"sdxl-{format_id}.safetensors", lora_formats.build_format(format_id, sdxl.targets))
    tcd = save_lora(loras, "sd15-tcd-slot.safetensors", lora_formats.build_format("kohya-lora", sd15.targets))
    theirs_model, theirs_clip = comfy_lora_loader(comfy, sd15.model, sd15.clip, name, 1.0)
    assert theirs_model.patches, "ComfyUI's LoraLoader applies the SDXL patches whose names match SD1.5"
    with pytest.raises(ValueError) as refused:
        tcd_loader(comfy, sd15.model, sd15.clip, (tcd, 1.0), (name, 1.0))
    message = str(refused.value)
    assert message.startswith(f"TCD LoRA Loader style_lora_1: LoRA {name!r} does not fit this model: ")
    assert " of its patches do not take the shape of the weight they name, " in message
    assert "it was made for another model family" in message and message.endswith("Nothing was applied")
    assert not sd15.model.patches and not sd15.clip.patcher.patches


def test_shape_judgement_agrees_with_comfyui_calculate_weight(
    comfy: Comfy, sd15: SimpleNamespace, sdxl: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """What the pack calls a misfit, ComfyUI's calculate_weight cannot merge (it logs and skips); the rest it merges."""
    import comfy.lora as comfy_lora  # (the fixture `comfy` is the in-process host)

    lora_stack = comfy.pack.tcd_comfy.lora_stack
    unet_sd, clip_sd = sd15.model.model.state_dict(), sd15.clip.cond_stage_model.state_dict()
    shapes = {key: value.shape for key, value in (unet_sd | clip_sd).items()}
    key_map = comfy_lora.model_lora_keys_clip(
        sd15.clip.cond_stage_model, comfy_lora.model_lora_keys_unet(sd15.model.model, {})
    )
    for format_id in ("kohya-locon", "lycoris-loha", "lycoris-lokr", "lycoris-glora", "lycoris-oft", "lycoris-boft",
                      "lycoris-norms", "dora"):  # fmt: skip
        patches = comfy_lora.load_lora(lora_formats.build_format(format_id, sdxl.targets), key_map, log_missing=False)
        misfits = {key for key, patch in patches.items() if lora_stack.patch_misfit(patch, shapes[key])}
        assert misfits and len(misfits) < len(patches), format_id
        for key in spread(misfits, 2) + spread(set(patches) - misfits, 2):
            base = (unet_sd if key in unet_sd else clip_sd)[key].detach().to(torch.float32)
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                weight = comfy_lora.calculate_weight([(1.0, patches[key], 1.0, None, None)], base.clone(), key)
            merged = not caplog.records and not torch.equal(weight, base)
            assert merged == (key not in misfits), f"{format_id} {key}: merged={merged}, logged {caplog.text[-300:]}"


@pytest.mark.parametrize("format_id", ["kohya-lora", "peft", "lycoris-glora", "comfyui-trained", "lycoris-norms"])
def test_sd15_lora_on_sdxl_is_refused(comfy: Comfy, sd15: SimpleNamespace, sdxl: SimpleNamespace, loras: Path,
                                      format_id: str) -> None:  # fmt: skip
    name = save_lora(loras, f"sd15-on-sdxl-{format_id}.safetensors", lora_formats.build_format(format_id, sd15.targets))
    theirs_model, _ = comfy_lora_loader(comfy, sdxl.model, sdxl.clip, name, 1.0)
    assert theirs_model.patches  # ComfyUI would patch SDXL with what fits by name
    with pytest.raises(ValueError, match=r"tcd_lora: LoRA .* does not fit this model: \d+ of its patches do not"):
        tcd_loader(comfy, sdxl.model, sdxl.clip, (name, 1.0))
    assert not sdxl.model.patches


def test_sdxl_formats_apply_on_sdxl(comfy: Comfy, sdxl: SimpleNamespace, loras: Path) -> None:
    """The same SDXL files are accepted by an SDXL model, patching what LoraLoader patches (plus attention)."""
    for format_id in ("kohya-lora-ldm-names", "peft", "lycoris-lokr"):
        name = f"sdxl-ok-{format_id}.safetensors"
        save_lora(loras, name, lora_formats.build_format(format_id, sdxl.targets))
        ours_model, ours_clip = tcd_loader(comfy, sdxl.model, sdxl.clip, (name, 1.0))
        theirs_model, theirs_clip = comfy_lora_loader(comfy, sdxl.model, sdxl.clip, name, 1.0)
        assert set(theirs_model.patches) <= set(ours_model.patches), format_id
        assert set(ours_clip.patcher.patches) == set(theirs_clip.patcher.patches), format_id
        assert any(key.startswith("clip_g.") for key in ours_clip.patcher.patches), (
            format_id
        )  # lora_te2_ / text_encoder_2


# --- partly fitting, not a LoRA ----------------------------------------------------------------------


def test_lora_fitting_partly_by_name_loads_with_a_warning_naming_what_was_skipped(
    comfy: Comfy, sd15: SimpleNamespace, sdxl: SimpleNamespace, loras: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SD1.5 kohya LoRA + SDXL's second text encoder (lora_te2_, no such CLIP here) + a stray tensor."""
    tensors = lora_formats.build_format("kohya-lora", sd15.targets)
    te2 = lora_formats.build_format("kohya-lora", [t for t in sdxl.targets if t.part == "te2"][:6])
    name = save_lora(loras, "partial.safetensors", {**tensors, **te2, "stray_extra_tensor": torch.zeros(3)})
    with caplog.at_level(logging.WARNING, logger="comfyui-tcd-sampling"):
        ours_model, ours_clip = tcd_loader(comfy, sd15.model, sd15.clip, (name, 1.0))
    theirs_model, theirs_clip = comfy_lora_loader(comfy, sd15.model, sd15.clip, name, 1.0)
    assert set(ours_model.patches) == set(theirs_model.patches)
    assert set(ours_clip.patcher.patches) == set(theirs_clip.patcher.patches)
    skipped = sorted({key.split(".")[0] for key in te2})
    assert len(skipped) == 6
    assert f"264 of its 270 modules patch it; skipped 6 naming no weight here: {', '.join(skipped)}" in caplog.text
    assert "1 tensors belong to no adapter ComfyUI applies, ignored: stray_extra_tensor" in caplog.text


def test_file_without_adapter_weights_is_not_a_lora(comfy: Comfy, sd15: SimpleNamespace, loras: Path) -> None:
    name = save_lora(
        loras, "embedding-like.safetensors", {"emb_params": torch.zeros(4, 768), "lora_unet_x.alpha": torch.tensor(4.0)}
    )
    with pytest.raises(
        ValueError, match=r"tcd_lora: 'embedding-like.safetensors' is not a LoRA: none of its 2 tensors"
    ):
        tcd_loader(comfy, sd15.model, sd15.clip, (name, 1.0))


def test_text_encoder_part_without_clip_is_skipped_with_a_warning(
    comfy: Comfy, sd15: SimpleNamespace, loras: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = save_lora(loras, "sd15-te-no-clip.safetensors", lora_formats.build_format("lycoris-boft", sd15.targets))
    with caplog.at_level(logging.WARNING, logger="comfyui-tcd-sampling"):
        model, clip = tcd_loader(comfy, sd15.model, None, (name, 1.0))
    theirs = run_node(comfy.node("LoraLoaderModelOnly"), model=sd15.model, lora_name=name, strength_model=1.0)[0]
    assert clip is None and set(model.patches) == set(theirs.patches)
    assert "skipped 72 naming no weight here (connect CLIP to apply a text-encoder part)" in caplog.text
