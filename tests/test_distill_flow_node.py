"""TCD Distill LoRA on flow-matching models (issue 20, section 2), in process and through a real ComfyUI server.

Each family is a tiny random-weight model built with ComfyUI's own classes (tests/fixture_packs/tiny_flow_models,
a test-only node pack ComfyUI loads beside the pack: SD3.5's MMDiT-X, Flux.1-dev, Flux.1-schnell, Qwen-Image,
Z-Image, Wan 2.2 TI2V 5B; few blocks, small widths, the family's real module names) in a real ModelPatcher, built
under ``torch.inference_mode`` as a server's loader builds it. The node trains it a few steps as ComfyUI runs it
(under inference mode), the LoRA is loaded with ComfyUI's own loader (no key dropped) and changes the prediction,
and the base weights are untouched. The server tests build the same models in a ComfyUI server through the same
pack's node ``TCDTestTinyFlowModel``, with CLIP-L's conditioning from the tiny SD1.5 checkpoint (the tiny models'
text input is 768 wide) and latents from LoadLatent.

Torch runs on one thread here: these are many tiny forwards, which threads only slow down on a shared CPU.
"""

from __future__ import annotations

import math
import shutil
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from comfyui_tcd_sampling.tcd_core import tcd_timesteps
from comfyui_tcd_sampling.tcd_core.distill import ddim_grid

from devkit.host import ComfyServer
from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import default_models_dir

NODE_ID = "TrajectoryConsistencyDistillLoRA"
FAMILIES = [
    "SD3",
    "Flux",
    "FluxSchnell",
    "QwenImage",
    "ZImage",
    "WAN22_T2V",
]  # the tiny models' FLOW_FAMILIES, checked below
TEXT_DIM = 768


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def node(comfy: Comfy) -> Any:
    return comfy.node(NODE_ID)


@pytest.fixture(scope="module")
def pack(comfy: Comfy) -> SimpleNamespace:
    """The pack's distillation modules as ComfyUI loaded them, as one namespace."""
    return comfy.pack_names(
        "tcd_comfy.distill_model",
        "tcd_comfy.lora_adapters",
        "tcd_comfy.lora_student",
        "tcd_comfy.host_training",
    )


def flow_model(family: str, seed: int = 0, **dtypes: Any) -> Any:
    """The tiny ``family`` model as a server's loader node makes it: under inference mode."""
    builder = load_comfy(default_models_dir()).tiny_flow_models
    with torch.inference_mode():
        return builder.tiny_flow_model(family, seed, **dtypes)


def test_every_family_the_node_distils_has_a_tiny_model(comfy: Comfy, pack: SimpleNamespace) -> None:
    assert FAMILIES == list(comfy.tiny_flow_models.FLOW_FAMILIES) == list(pack.FLOW_FAMILIES)


def latent_shape(family: str, count: int = 2, size: int = 8) -> tuple[int, ...]:
    """Qwen-Image: one frame of 16 channels; Wan 2.2: two frames of 48 channels; the others 16-channel images."""
    return {"QwenImage": (count, 16, 1, size, size), "WAN22_T2V": (count, 48, 2, size, size)}.get(
        family, (count, 16, size, size)
    )


def conditioning(seed: int, count: int = 1, tokens: int = 7, **extra: Any) -> list:
    """CLIP-L-shaped CONDITIONING entries (768-wide features and pooled output)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(1, tokens, TEXT_DIM, generator=gen), {"pooled_output": torch.randn(1, TEXT_DIM, generator=gen),
                                                           **extra}]
        for _ in range(count)
    ]  # fmt: skip


# A tiny run (2 steps, rank 4, fp32, as the server runs it: the inference-mode case), true CFG 1..3.
WIDGETS = {
    "batch_size": 2, "grad_accumulation_steps": 1, "steps": 2, "learning_rate": 0.01, "rank": 4, "optimizer": "AdamW",
    "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32", "gradient_checkpointing": True,
    "existing_lora": "None", "guidance_min": 1.0, "guidance_max": 3.0, "num_ddim_timesteps": 50, "ema_decay": 0.0,
    "loss": "l2", "huber_c": 0.001, "s_rule": "uniform", "s_zero_share": 0.2, "method": "tcd",
}  # fmt: skip
# Flux.1 is sampled at CFG 1: its teacher takes no true CFG (Flux.1-dev: its embedded guidance).
FAMILY_WIDGETS = {"Flux": {"guidance_min": 0.0, "guidance_max": 0.0}, "FluxSchnell": {"guidance_min": 0.0,
                  "guidance_max": 0.0}}  # fmt: skip


def run(node: Any, family: str, model: Any = None, **overrides: Any) -> tuple:
    """Execute the node as ComfyUI does (inputs as lists, under inference mode); returns its outputs."""
    values = {
        "model": model if model is not None else flow_model(family),
        "latents": [{"samples": torch.randn(latent_shape(family), generator=torch.Generator().manual_seed(7))}],
        "positive": [conditioning(1)],
        "negative": [conditioning(2)],
        **WIDGETS,
        **FAMILY_WIDGETS.get(family, {}),
    }
    values.update(overrides)
    lists = ("latents", "positive", "negative")
    args = {name: value if name in lists else [value] for name, value in values.items()}
    with torch.inference_mode():
        return tuple(node.execute(**args).args)


def model_input(model: Any, family: str, seed: int = 3) -> tuple[torch.Tensor, dict[str, Any]]:
    """A fixed latent and the conds ComfyUI's sampling builds for it from one CONDITIONING entry."""
    import comfy.sampler_helpers
    import comfy.samplers

    x = torch.randn(latent_shape(family, 1), generator=torch.Generator().manual_seed(seed))
    (cond,) = comfy.sampler_helpers.convert_cond(conditioning(seed))
    (cond,) = comfy.samplers.encode_model_conds(model.model.extra_conds, [cond], x, "cpu", "positive", latent_image=x)
    return x, {name: value.process_cond(batch_size=1, area=None).cond for name, value in cond["model_conds"].items()}


def prediction(model: Any, family: str, sigma: float = 0.6, seed: int = 3) -> torch.Tensor:
    """The model's x0 prediction on fixed input, through ComfyUI's own path (loaded and patched, apply_model)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    x, conds = model_input(model, family, seed)
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([sigma]), **conds).clone()


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


# --- the model's facts: schedule, timestep form, latents, guidance input ---------------------------------------


def _flux_shift(u: torch.Tensor) -> torch.Tensor:
    return math.exp(1.15) / (math.exp(1.15) + (1 / u - 1))  # ComfyUI's flux_time_shift(1.15, 1, u)


def _sd3_shift(u: torch.Tensor) -> torch.Tensor:
    return 3.0 * u / (1 + 2.0 * u)


# family: (table length, sigma(u = (t + 1) / T), ComfyUI's timestep per sigma, embedded guidance, latent dims)
EXPECTED_FACTS = {
    "SD3": (1000, _sd3_shift, 1000.0, False, 2),
    "Flux": (10000, _flux_shift, 1.0, True, 2),
    "FluxSchnell": (1000, lambda u: u, 1.0, False, 2),
    "QwenImage": (10000, _flux_shift, 1.0, False, 3),
    "ZImage": (1000, _sd3_shift, 1.0, False, 2),
    "WAN22_T2V": (1000, lambda u: 8.0 * u / (1 + 7.0 * u), 1000.0, False, 3),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_distils_on_its_own_sigmas_through_its_own_apply_model(pack: SimpleNamespace, family: str) -> None:
    """The schedule is the model's own sigma table with the family's shift (SD3 / Z-Image 3, Flux.1-dev / Qwen-Image
    1.15 on 10000 steps, schnell 1), the timestep form stays ComfyUI's (SD3 sigma x 1000, the others sigma), and the
    teacher is exactly ComfyUI's ``apply_model`` (x0) with the adapters off."""
    length, shift, multiplier, guidance_input, dims = EXPECTED_FACTS[family]
    model = flow_model(family)
    facts = pack.model_facts(model)
    assert (facts.prediction_type, facts.flow, facts.family) == ("x0", True, family)
    channels = 48 if family == "WAN22_T2V" else 16
    assert (facts.embedded_guidance, facts.latent_dims, facts.latent_channels) == (guidance_input, dims, channels)
    u = torch.arange(1, length + 1, dtype=torch.float64) / length
    torch.testing.assert_close(facts.sigmas, shift(u), rtol=1e-6, atol=1e-7)
    sampling = model.get_model_object("model_sampling")
    torch.testing.assert_close(sampling.timestep(torch.tensor([0.25])), torch.tensor([0.25 * multiplier]))
    assert facts.config_fields()["num_train_timesteps"] == length

    student = pack.LoraStudent(model, facts, rank=4, seed=0, compute_dtype=torch.float32, lora_dtype=torch.float32,
                               checkpointing=False)  # fmt: skip
    reference = prediction(model, family)
    x, conds = model_input(model, family)
    with student, torch.no_grad():
        teacher = student.teacher(x, torch.tensor([0.6]), conds)
        torch.testing.assert_close(teacher, reference, rtol=0, atol=0)
        if guidance_input:  # g reaches the network: another g, another prediction
            other = student.teacher(x, torch.tensor([0.6]), conds, guidance=torch.tensor([5.0]))
            assert not torch.equal(other, teacher)
            same = student.teacher(x, torch.tensor([0.6]), conds, guidance=torch.tensor([3.5]))
            torch.testing.assert_close(same, teacher, rtol=0, atol=0)  # the conditioning's default, 3.5


# The TCD Scheduler settings a flow TCD LoRA is sampled with (README, "Distil a TCD LoRA for a flow model").
SCHEDULER_STEPS = (1, 2, 4, 8, 50)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tcd_scheduler_samples_each_family_at_the_sigmas_it_was_distilled_at(
    comfy: Comfy, pack: SimpleNamespace, family: str
) -> None:
    """Sigma parity with the teacher's schedule: at 1, 2, 4, 8 and 50 steps the TCD Scheduler gives, bit for bit, the
    entries of the model's own table at the engine's skipping grid (``ddim_grid`` on the table: what the node trained
    the LoRA at), whatever the table's length and shift; at 50 steps that is ComfyUI's ``simple`` schedule, the
    teacher's reference sampler in the benchmark."""
    from comfy.samplers import calculate_sigmas

    model = flow_model(family)
    table = pack.model_facts(model).sigmas.float()
    trained = ddim_grid(50, len(table))  # the node's default num_ddim_timesteps on the model's own table
    positions = {int(t): i for i, t in enumerate(ddim_grid(50, 1000))}  # TCD's grid of 1000 timesteps
    for steps in SCHEDULER_STEPS:
        sigmas = run_node(comfy.node("TrajectoryConsistencyScheduler"), model=model, steps=steps,
                          original_inference_steps=50, strength=1.0)[0]  # fmt: skip
        expected = table[trained[[positions[t] for t in tcd_timesteps(steps, 50)]]]
        assert torch.equal(sigmas[:-1], expected) and sigmas[-1] == 0, (family, steps)
    simple = calculate_sigmas(model.get_model_object("model_sampling"), "simple", 50)
    assert torch.equal(sigmas, simple.float())


# --- training, the saved LoRA, the base model ----------------------------------------------------------------

# Layers of each family its community LoRAs train (a sample of every kind), and layers they do not.
EXPECTED_TARGETS = {
    "SD3": (
        {"joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.x_block.attn.proj", "joint_blocks.0.x_block.attn2.qkv",
         "joint_blocks.0.x_block.mlp.fc1", "joint_blocks.0.x_block.mlp.fc2",
         "joint_blocks.0.x_block.adaLN_modulation.1", "joint_blocks.0.context_block.attn.qkv",
         "joint_blocks.1.context_block.attn.qkv"},
        {"x_embedder.proj", "context_embedder", "t_embedder.mlp.0", "y_embedder.mlp.0", "final_layer.linear"},
    ),
    "Flux": (
        {"double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
         "double_blocks.0.img_mlp.2", "double_blocks.0.img_mod.lin", "double_blocks.0.txt_attn.qkv",
         "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1", "single_blocks.1.linear2",
         "single_blocks.1.modulation.lin"},
        {"img_in", "txt_in", "time_in.in_layer", "vector_in.in_layer", "guidance_in.in_layer",
         "final_layer.linear"},
    ),
    "FluxSchnell": (
        {"double_blocks.0.img_attn.qkv", "single_blocks.1.linear1"},
        {"img_in", "txt_in", "final_layer.linear"},
    ),
    "QwenImage": (
        {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
         "transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.attn.to_add_out",
         "transformer_blocks.0.img_mlp.net.0.proj", "transformer_blocks.1.txt_mlp.net.2",
         "transformer_blocks.1.img_mod.1"},
        {"img_in", "txt_in", "proj_out", "time_text_embed.timestep_embedder.linear_1"},
    ),
    "ZImage": (
        {"layers.0.attention.qkv", "layers.0.attention.out", "layers.0.feed_forward.w1",
         "layers.1.feed_forward.w2", "layers.1.feed_forward.w3", "layers.0.adaLN_modulation.0",
         "noise_refiner.0.attention.qkv", "context_refiner.0.feed_forward.w1"},
        {"x_embedder", "cap_embedder.1", "t_embedder.mlp.0", "final_layer.linear"},
    ),
    "WAN22_T2V": (
        {"blocks.0.self_attn.q", "blocks.0.self_attn.o", "blocks.0.cross_attn.k", "blocks.1.cross_attn.o",
         "blocks.0.ffn.0", "blocks.1.ffn.2"},
        {"patch_embedding", "text_embedding.0", "time_embedding.0", "time_projection.1", "head.head"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_its_lora_loads_whole_changes_the_prediction_and_leaves_the_base(
    node: Any, pack: SimpleNamespace, family: str, caplog: pytest.LogCaptureFixture
) -> None:
    """fp32 under inference mode (the server's case, where ComfyUI's Train LoRA fails on Flux and SD3): the loss is
    finite; the LoRA holds the family's block Linear layers and nothing else; ComfyUI's LoRA loader turns every
    saved key into a patch; the LoRA changes the prediction; the input model's weights and prediction are the same
    bit for bit."""
    import comfy.lora
    import comfy.sd

    model = flow_model(family)
    before, before_weights = prediction(model, family), weights(model)
    _, lora, loss_map, steps = run(node, family, model=model)
    assert steps == 2 and len(loss_map["loss"]) == 2 and all(np.isfinite(loss_map["loss"]))

    targets = {name for name, _ in pack.lora_targets(model.model)}
    layers = {name.removeprefix("diffusion_model.") for name in targets}
    expected, excluded = EXPECTED_TARGETS[family]
    assert expected <= layers, sorted(expected - layers)
    assert not excluded & layers
    blocks = pack.FLOW_FAMILIES[family].lora_blocks
    assert all(layer.split(".")[0] in blocks for layer in layers)
    assert set(lora) == {f"{name}.{part}" for name in targets for part in ("lora_up.weight", "lora_down.weight",
                                                                             "alpha")}  # fmt: skip
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    with caplog.at_level("WARNING"):
        patches = comfy.lora.load_lora(lora, key_map, log_missing=True)
    assert "not loaded" not in caplog.text, "a saved key was dropped"
    assert set(patches) == {f"{name}.weight" for name in targets}

    after = weights(model)
    assert all(torch.equal(after[k], before_weights[k]) for k in before_weights), "a base weight changed"
    assert all(t.is_inference() for t in model.model.diffusion_model.state_dict().values()), "a base tensor swapped"
    for module in model.model.diffusion_model.modules():
        assert not getattr(module, "weight_function", []) and not module._forward_pre_hooks, "a hook was left"
        assert "forward" not in vars(module), "a checkpointing wrapper was left"
    torch.testing.assert_close(prediction(model, family), before, rtol=0, atol=0)
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert not torch.equal(prediction(patched, family), before), "the LoRA does not change the prediction"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_trains_the_lora_trained_without_it(node: Any, family: str) -> None:
    """Flux's blocks add to their inputs in place: checkpointed blocks run on copies of their inputs, so that the
    backward pass recomputes them from their inputs (bf16: autocast's copies and the in-place adds together)."""
    for dtype in ("fp32", "bf16"):
        plain = run(node, family, gradient_checkpointing=False, training_dtype=dtype)
        checkpointed = run(node, family, gradient_checkpointing=True, training_dtype=dtype)
        assert checkpointed[2]["loss"] == plain[2]["loss"]
        for key, tensor in plain[1].items():
            torch.testing.assert_close(checkpointed[1][key], tensor, rtol=0, atol=0)


def test_continuing_a_flow_lora_starts_from_its_weights_on_every_layer_it_holds(
    node: Any, pack: SimpleNamespace
) -> None:
    """existing_lora on Flux: the trained layers continue from the file, and a layer outside the family's targets
    (a community LoRA's txt_in) gets an adapter too, instead of being dropped."""
    model = flow_model("Flux")
    lora = dict(run(node, "Flux", model=model)[1])
    gen = torch.Generator().manual_seed(8)
    extra = "diffusion_model.txt_in"
    lora |= {
        f"{extra}.lora_up.weight": torch.randn(64, 4, generator=gen),
        f"{extra}.lora_down.weight": torch.randn(4, TEXT_DIM, generator=gen),
        f"{extra}.alpha": torch.tensor(4.0),
    }
    existing = pack.read_existing_lora(model.model, lora)
    assert extra in existing and extra not in {name for name, _ in pack.lora_targets(model.model)}
    continued = pack.attach_lora(model.clone(), rank=8, dtype=torch.float32, seed=0, existing=existing)
    state = continued.state_dict()
    assert set(state) == set(lora)
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, lora[key].float(), rtol=0, atol=0)


def test_flux_dev_takes_the_guidance_of_its_conditioning_or_the_range_given(node: Any) -> None:
    """embedded_guidance 0, 0: the positive conditioning's guidance (FluxGuidance); a range replaces it (the conds'
    own guidance is not used then); another g trains another LoRA."""
    from_conditioning = run(node, "Flux", positive=[conditioning(1, guidance=2.0)])
    given = run(node, "Flux", positive=[conditioning(1, guidance=5.0)], embedded_guidance_min=2.0,
                embedded_guidance_max=2.0)  # fmt: skip
    default = run(node, "Flux")  # no FluxGuidance: ComfyUI's 3.5
    at_default = run(node, "Flux", embedded_guidance_min=3.5, embedded_guidance_max=3.5)
    for a, b in ((from_conditioning, given), (default, at_default)):
        assert a[2]["loss"] == b[2]["loss"] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert from_conditioning[2]["loss"] != default[2]["loss"]
    ranged = run(node, "Flux", embedded_guidance_min=1.0, embedded_guidance_max=5.0)
    assert all(np.isfinite(ranged[2]["loss"])) and ranged[2]["loss"] != default[2]["loss"]


def test_true_cfg_teacher_takes_the_negative_prompt(node: Any) -> None:
    """SD3.5: a guided teacher (w in 1..3) depends on the negative prompt; unguided (0..0) it does not."""
    guided = [run(node, "SD3", negative=[conditioning(seed)])[2]["loss"] for seed in (2, 9)]
    unguided = [run(node, "SD3", negative=[conditioning(seed)], guidance_min=0.0, guidance_max=0.0)[2]["loss"]
                for seed in (2, 9)]  # fmt: skip
    assert guided[0] != guided[1] and unguided[0] == unguided[1]


def test_captions_of_different_lengths_train_in_one_batch(node: Any) -> None:
    """Flow models' text conds are not padded to one length: images whose captions differ in length are trained
    as separate same-shape groups of the batch."""
    positive = [[conditioning(1, tokens=7)[0], conditioning(4, tokens=12)[0]]]
    trained = run(node, "ZImage", positive=positive)
    assert all(np.isfinite(trained[2]["loss"]))


@pytest.mark.parametrize("bypass", [False, True], ids=["weight-wrappers", "bypass"])
def test_fp8_weights_train_with_fp32_adapters_and_stay_untouched(
    node: Any, pack: SimpleNamespace, bypass: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Flux.1-dev with float8_e4m3fn weights computed in fp32 (ComfyUI's manual cast): the adapters train in fp32 on
    the cast weights, or through bypass hooks where the host has them (refused by name where not); the fp8 weights
    stay as they were."""
    import comfy.lora
    import comfy.sd

    model = flow_model("Flux", dtype=torch.float8_e4m3fn, manual_cast=torch.float32)
    if bypass and not pack.host_has("bypass_mode"):
        with pytest.raises(ValueError, match="TCD Distill LoRA bypass_mode: .*ComfyUI 0.30.0 or newer has it"):
            run(node, "Flux", model=model, bypass_mode=True)
        return
    before, before_weights = prediction(model, "Flux"), weights(model)
    assert before_weights["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    _, lora, loss_map, _ = run(node, "Flux", model=model, training_dtype="none", bypass_mode=bypass)
    assert all(np.isfinite(loss_map["loss"])) and {t.dtype for t in lora.values()} == {torch.float32}
    after = weights(model)
    assert all(
        after[k].dtype == t.dtype and torch.equal(after[k].float(), t.float()) for k, t in before_weights.items()
    )
    torch.testing.assert_close(prediction(model, "Flux"), before, rtol=0, atol=0)
    with caplog.at_level("WARNING"):
        patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=True)
    assert "not loaded" not in caplog.text and len(patches) == len(lora) // 3
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert not torch.equal(prediction(patched, "Flux"), before)


# --- bad input, refused before training, naming the input ---------------------------------------------------


def _through(comfy: Comfy, family: str, node_id: str, **inputs: Any) -> Any:
    return run_node(comfy.node(node_id), model=flow_model(family), **inputs)[0]


@pytest.mark.parametrize(
    ("family", "overrides", "fragments"),
    [
        ("Lumina2", {}, ("TCD Distill LoRA model: this model is Lumina2 (ComfyUI's Lumina2 class), a family the node "
                         "does not distil", "Flux.1-dev, Flux.1-schnell, Qwen-Image, Z-Image")),
        ("SD3", {"embedded_guidance_min": 3.5, "embedded_guidance_max": 3.5},
         ("TCD Distill LoRA embedded_guidance_min: this SD3 / SD3.5 model has no embedded guidance input",)),
        ("FluxSchnell", {"embedded_guidance_max": 4.0},
         ("TCD Distill LoRA embedded_guidance_max: this Flux.1-schnell model has no embedded guidance input",)),
        ("Flux", {"embedded_guidance_min": 5.0, "embedded_guidance_max": 2.0},
         ("TCD Distill LoRA embedded_guidance_min: must be <= embedded_guidance_max",)),
        ("Flux", {"latents": [{"samples": torch.zeros(2, 4, 8, 8)}]},
         ("TCD Distill LoRA latents: latent 0 has shape (1, 4, 8, 8), but this Flux.1-dev model takes 16-channel "
          "image latents [B, 16, H, W]",)),
        ("QwenImage", {"latents": [{"samples": torch.zeros(2, 16, 2, 8, 8)}]},
         ("TCD Distill LoRA latents: latent 0 has shape (1, 16, 2, 8, 8), but this Qwen-Image model takes 16-channel "
          "image latents [B, 16, 1, H, W] (or [B, 16, H, W])",)),
        ("SD3", {"latents": [{"samples": torch.zeros(2, 16, 9, 9)}]},
         ("TCD Distill LoRA latents: latent 0 is 9x9; the network needs latent sides that are multiples of 2",)),
        ("Flux", {"embedded_guidance_min": -1.0}, ("TCD Distill LoRA embedded_guidance_min: must be a number in "
                                                   "[0.0, 100.0]",)),
    ],
    ids=["family", "embedded-on-sd3", "embedded-on-schnell", "embedded-order", "channels", "frames", "odd-size",
         "embedded-bounds"],
)  # fmt: skip
def test_bad_flow_inputs_are_refused_before_training(node: Any, family: str, overrides: dict, fragments: tuple) -> None:
    with pytest.raises(ValueError) as error:
        run(node, family, **overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_a_flow_model_sampled_otherwise_is_refused(comfy: Comfy, node: Any) -> None:
    changed = _through(comfy, "SD3", "ModelSamplingDiscrete", sampling="eps", zsnr=False)
    with pytest.raises(ValueError, match="TCD Distill LoRA model: this SD3 / SD3.5 model samples as .*EPS, not as the "
                       "flow model it is"):  # fmt: skip
        run(node, "SD3", model=changed)
    shifted = _through(comfy, "Flux", "ModelSamplingFlux", max_shift=1.15, base_shift=0.5, width=64, height=64)
    assert all(np.isfinite(run(node, "Flux", model=shifted)[2]["loss"]))  # the user's shift: a flow model still


# --- through the real server ----------------------------------------------------------------------------------

Graph = dict[str, dict[str, Any]]
CKPT = "tcd-tiny-sd15.safetensors"  # its CLIP-L gives the 768-wide conditioning the tiny models take


def latent_file(server: ComfyServer, family: str) -> str:
    """Two seeded latents of ``family``'s form as a .latent file (SaveLatent's format) in the input folder."""
    import safetensors.torch

    name = f"tcd-flow-{family}.latent"
    samples = torch.randn(latent_shape(family), generator=torch.Generator().manual_seed(5))
    tensors = {"latent_tensor": samples, "latent_format_version_0": torch.tensor([])}
    safetensors.torch.save_file(tensors, str(server.input_dir / name))
    return name


def sample(graph: Graph, name: str, model: list, seed: int) -> None:
    """A 2-step Euler sample of ``model`` (CFG 1) on the first training latent's shape, saved with SaveLatent."""
    graph[f"{name}_sample"] = {
        "class_type": "KSampler",
        "inputs": {"model": model, "seed": seed, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                   "scheduler": "simple", "positive": ["positive", 0], "negative": ["negative", 0],
                   "latent_image": ["latent", 0], "denoise": 1.0},
    }  # fmt: skip
    graph[name] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_sample", 0], "filename_prefix": name}}


def saved_latent(server: ComfyServer, entry: dict, node: str) -> torch.Tensor:
    import safetensors.torch

    (latent,) = entry["outputs"][node]["latents"]
    path = server.output_dir / latent["subfolder"] / latent["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


def base_graph(server: ComfyServer, family: str, seed: int) -> Graph:
    return {
        "model": {"class_type": "TCDTestTinyFlowModel", "inputs": {"family": family, "seed": 0,
                                                                   "weight_dtype": "fp32"}},
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": f"a paper fox {seed}", "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "LoadLatent", "inputs": {"latent": latent_file(server, family)}},
    }  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_in_the_server_and_the_saved_lora_samples_alike_through_loraloader(
    comfy_server: ComfyServer, tiny_checkpoint: str, family: str
) -> None:
    """Through ComfyUI's HTTP server (fp32, its inference mode): TCD Distill LoRA -> SaveLoRA; the node's model
    output, LoraModelLoader of its LORA and LoraLoaderModelOnly of the saved file sample the same latent, unlike
    the base model; ComfyUI logs no dropped LoRA key."""
    server = comfy_server
    seed = int(uuid.uuid4().int % 100_000)
    prefix = f"loras/tcd-flow-{family}-{uuid.uuid4().hex[:6]}"
    graph = base_graph(server, family, seed)
    widgets = {**WIDGETS, **FAMILY_WIDGETS.get(family, {}), "seed": seed}
    graph["distill"] = {
        "class_type": NODE_ID,
        "inputs": {"model": ["model", 0], "latents": ["latent", 0], "positive": ["positive", 0],
                   "negative": ["negative", 0], **widgets},
    }  # fmt: skip
    graph["save_lora"] = {"class_type": "SaveLoRA", "inputs": {"lora": ["distill", 1], "prefix": prefix,
                                                               "steps": ["distill", 3]}}  # fmt: skip
    graph["lora_model"] = {
        "class_type": "LoraModelLoader",
        "inputs": {"model": ["model", 0], "lora": ["distill", 1], "strength_model": 1.0},
    }
    if "bypass" in server.get_json("/object_info/LoraModelLoader")["LoraModelLoader"]["input"]["required"]:
        graph["lora_model"]["inputs"]["bypass"] = False  # ComfyUI 0.30: a required switch; off is 0.3.75's behaviour
    sample(graph, "trained", ["distill", 0], seed)
    sample(graph, "lora_model_loader", ["lora_model", 0], seed)
    sample(graph, "base", ["model", 0], seed)
    entry = server.run(graph, timeout=600)
    trained = saved_latent(server, entry, "trained")
    torch.testing.assert_close(saved_latent(server, entry, "lora_model_loader"), trained, rtol=0, atol=0)
    assert not torch.equal(saved_latent(server, entry, "base"), trained), "the LoRA does not change sampling"

    (saved,) = (server.output_dir / "loras").glob(prefix.split("/")[1] + "_2_steps_*.safetensors")
    loras_dir = default_models_dir() / "loras"
    name = f"{saved.stem}.safetensors"
    shutil.copyfile(saved, loras_dir / name)
    try:
        reload = base_graph(server, family, seed)
        reload["lora_loader"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["model", 0], "lora_name": name, "strength_model": 1.0},
        }
        sample(reload, "reloaded", ["lora_loader", 0], seed)
        entry = server.run(reload, timeout=600)
    finally:
        (loras_dir / name).unlink()
    torch.testing.assert_close(saved_latent(server, entry, "reloaded"), trained, rtol=0, atol=0)
    log = server.log_text()
    assert "lora key not loaded" not in log and "Inference tensors" not in log
