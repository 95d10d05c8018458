"""The pack's nodes inside a real ComfyUI (in process): real checkpoint loading, ModelPatcher,
samplers, LoRA and ControlNet nodes, on random-weight SD1.5 models built with ComfyUI's classes: the
full-size test checkpoint where LoRAs and ControlNets must fit its layers, the tiny SD1.5-family one
(devkit.tiny_checkpoint) where the subject is the sampling math."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from diffusers import TCDScheduler

from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import default_models_dir

CKPT = "tcd-test-sd15.safetensors"
TCD_LORA = "tcd-test-lora-sd15.safetensors"
STYLE_LORA = "tcd-test-style-lora-sd15.safetensors"
SDXL_LORA = "tcd-test-lora-sdxl.safetensors"
CONTROLNET = "tcd-test-controlnet-sd15.safetensors"
SEED = 1234
REFERENCE_TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def comfy(test_models: dict) -> Comfy:
    return load_comfy(default_models_dir())


@pytest.fixture(scope="session")
def sd15(comfy: Comfy) -> SimpleNamespace:
    model, clip, vae = run_node(comfy.node("CheckpointLoaderSimple"), ckpt_name=CKPT)
    positive = run_node(comfy.node("CLIPTextEncode"), text="a paper cut fox", clip=clip)[0]
    negative = run_node(comfy.node("CLIPTextEncode"), text="", clip=clip)[0]
    latent = run_node(comfy.node("EmptyLatentImage"), width=64, height=64, batch_size=1)[0]
    return SimpleNamespace(model=model, clip=clip, vae=vae, positive=positive, negative=negative, latent=latent)


@pytest.fixture(scope="session")
def tiny(comfy: Comfy, tiny_checkpoint: str) -> SimpleNamespace:
    """The same, from the tiny SD1.5-family checkpoint (real CLIP-L and VAE, one-level UNet): for the tests of
    sampling math, whose subject is the sampler on ComfyUI's SD1.5 model class, not the UNet's size."""
    model, clip, vae = run_node(comfy.node("CheckpointLoaderSimple"), ckpt_name=tiny_checkpoint)
    positive = run_node(comfy.node("CLIPTextEncode"), text="a paper cut fox", clip=clip)[0]
    negative = run_node(comfy.node("CLIPTextEncode"), text="", clip=clip)[0]
    latent = run_node(comfy.node("EmptyLatentImage"), width=64, height=64, batch_size=1)[0]
    return SimpleNamespace(model=model, clip=clip, vae=vae, positive=positive, negative=negative, latent=latent)


def tcd_sampler(comfy: Comfy, gamma: float = 0.3, order: int = 1, schedule: str = "constant", **extra: Any) -> Any:
    inputs = {"gamma": gamma, "gamma_schedule": schedule, "gamma_end": gamma, "gamma_list": "0.3", "order": order}
    return run_node(comfy.node("TrajectoryConsistencySampler"), **{**inputs, **extra})[0]


def tcd_sigmas(comfy: Comfy, model: Any, steps: int = 4, strength: float = 1.0) -> torch.Tensor:
    node = comfy.node("TrajectoryConsistencyScheduler")
    return run_node(node, model=model, steps=steps, original_inference_steps=50, strength=strength)[0]


def sample_custom(
    comfy: Comfy, sd: SimpleNamespace, sampler: Any, sigmas: torch.Tensor, **overrides: Any
) -> torch.Tensor:
    """SamplerCustomAdvanced with RandomNoise and a CFG-1 guider, as a TCD graph wires it."""
    inputs = {"model": sd.model, "positive": sd.positive, "seed": SEED, **overrides}
    noise = run_node(comfy.node("RandomNoise"), noise_seed=inputs["seed"])[0]
    guider = run_node(comfy.node("BasicGuider"), model=inputs["model"], conditioning=inputs["positive"])[0]
    out = run_node(
        comfy.node("SamplerCustomAdvanced"), noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
        latent_image=sd.latent,
    )  # fmt: skip
    return out[0]["samples"]


def ksampler_object(_: Comfy, function: Any) -> Any:
    """A SAMPLER from a k-diffusion-style function (ComfyUI's KSAMPLER wrapper)."""
    from comfy.samplers import KSAMPLER

    return KSAMPLER(function)


def diffusers_tcd(gamma: float, prediction: str = "epsilon") -> Any:
    """A SAMPLER function running diffusers' TCDScheduler on ComfyUI's model (the independent reference).

    diffusers draws its step noise with `randn_tensor`; here that draws from ComfyUI's seeded noise
    sampler instead, so both sides see the same noise whatever ComfyUI's seeding rule (it changed in 0.8).
    """
    from comfy.k_diffusion.sampling import default_noise_sampler
    from diffusers.schedulers import scheduling_tcd

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
        scheduler = TCDScheduler(beta_schedule="scaled_linear", prediction_type=prediction)
        scheduler.set_timesteps(len(sigmas) - 1)
        noise = default_noise_sampler(x, seed=extra_args["seed"])
        s_in = x.new_ones([x.shape[0]])
        x_vp = x / (1 + sigmas[0] ** 2).sqrt()
        with mock.patch.object(scheduling_tcd, "randn_tensor", lambda shape, **kwargs: noise(None, None)):
            for t in scheduler.timesteps:
                sigma = model_sampling.sigma(t)
                scale = (1 + sigma**2).sqrt()  # 1 / sqrt(alpha_bar)
                x_ve = x_vp * scale
                denoised = model(x_ve, sigma * s_in, **extra_args)
                eps = (x_ve - denoised) / sigma
                out = eps if prediction == "epsilon" else (eps - sigma * denoised) / scale  # v = sqrt(a) eps - ...
                x_vp = scheduler.step(out, t, x_vp, eta=gamma).prev_sample
        return x_vp

    return sample


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max().clamp(min=1)).item()


# --- the sampler and scheduler against the reference and against ComfyUI's own samplers -------------


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_tcd_nodes_match_diffusers_on_the_real_model(comfy: Comfy, tiny: SimpleNamespace, gamma: float) -> None:
    sigmas = tcd_sigmas(comfy, tiny.model)
    ours = sample_custom(comfy, tiny, tcd_sampler(comfy, gamma), sigmas)
    reference = sample_custom(comfy, tiny, ksampler_object(comfy, diffusers_tcd(gamma)), sigmas)
    assert relative_error(ours, reference) <= REFERENCE_TOLERANCE


def test_scheduler_gives_the_reference_timesteps(comfy: Comfy, tiny: SimpleNamespace) -> None:
    model_sampling = tiny.model.get_model_object("model_sampling")
    sigmas = tcd_sigmas(comfy, tiny.model)
    assert model_sampling.timestep(sigmas[:-1]).tolist() == [999, 759, 499, 259]
    assert sigmas[-1] == 0
    img2img = tcd_sigmas(comfy, tiny.model, strength=0.5)
    assert model_sampling.timestep(img2img[:-1]).tolist() == [499, 379, 259, 139]


def test_ksampler_tcd_equals_sampler_custom(comfy: Comfy, tiny: SimpleNamespace) -> None:
    ksampler = run_node(
        comfy.node("KSampler"), model=tiny.model, seed=SEED, steps=4, cfg=1.0, sampler_name="tcd", scheduler="tcd",
        positive=tiny.positive, negative=tiny.negative, latent_image=tiny.latent, denoise=1.0,
    )[0]["samples"]  # fmt: skip
    custom = run_node(
        comfy.node("SamplerCustom"), model=tiny.model, add_noise=True, noise_seed=SEED, cfg=1.0,
        positive=tiny.positive, negative=tiny.negative, sampler=tcd_sampler(comfy, 0.3),
        sigmas=tcd_sigmas(comfy, tiny.model), latent_image=tiny.latent,
    )[0]["samples"]  # fmt: skip
    assert torch.equal(ksampler, custom)


def test_ksampler_denoise_below_one_with_tcd_scheduler(comfy: Comfy, tiny: SimpleNamespace) -> None:
    start = sample_custom(comfy, tiny, tcd_sampler(comfy), tcd_sigmas(comfy, tiny.model))
    image = {"samples": start}
    for denoise in (0.5, 0.05):  # 8 and 80 schedule steps: the second grows past the 50-point grid
        out = run_node(
            comfy.node("KSampler"), model=tiny.model, seed=SEED, steps=4, cfg=1.0, sampler_name="tcd",
            scheduler="tcd", positive=tiny.positive, negative=tiny.negative, latent_image=image, denoise=denoise,
        )[0]["samples"]  # fmt: skip
        assert torch.isfinite(out).all()
        assert not torch.equal(out, start)


def test_ksampler_registration_is_idempotent_and_in_place(comfy: Comfy) -> None:
    from comfy import samplers

    lists = [samplers.KSAMPLER_NAMES, samplers.SAMPLER_NAMES, samplers.SCHEDULER_NAMES]
    before = [id(names) for names in lists]
    comfy.pack_nodes.register_tcd_in_ksampler()
    comfy.pack_nodes.register_tcd_in_ksampler()
    assert [id(names) for names in lists] == before  # appended in place: other modules hold these lists
    assert all(names.count("tcd") == 1 for names in lists)
    assert samplers.KSampler.SAMPLERS is samplers.SAMPLER_NAMES


def test_another_packs_tcd_registration_is_kept(comfy: Comfy, caplog: pytest.LogCaptureFixture) -> None:
    """A `tcd` another pack registered first stays active (and is named in the log); nothing is duplicated."""
    from comfy import samplers
    from comfy.k_diffusion import sampling as k_diffusion_sampling

    ours_sampler = k_diffusion_sampling.sample_tcd
    ours_scheduler = samplers.SCHEDULER_HANDLERS["tcd"]

    def other_sample_tcd(model, x, sigmas, **kwargs):  # stands in for another pack's function
        return x

    try:
        k_diffusion_sampling.sample_tcd = other_sample_tcd
        samplers.SCHEDULER_HANDLERS["tcd"] = samplers.SchedulerHandler(lambda ms, steps: None)
        with caplog.at_level("WARNING", logger="comfyui-tcd-sampling"):
            comfy.pack_nodes.register_tcd_in_ksampler()
        assert k_diffusion_sampling.sample_tcd is other_sample_tcd
        assert samplers.SAMPLER_NAMES.count("tcd") == 1
        assert "KSampler sampler 'tcd' comes from" in caplog.text
        assert "KSampler scheduler 'tcd' comes from" in caplog.text
    finally:
        k_diffusion_sampling.sample_tcd = ours_sampler
        samplers.SCHEDULER_HANDLERS["tcd"] = ours_scheduler


def test_seed_reproduces_and_another_seed_differs(comfy: Comfy, tiny: SimpleNamespace) -> None:
    sigmas = tcd_sigmas(comfy, tiny.model)
    first = sample_custom(comfy, tiny, tcd_sampler(comfy), sigmas)
    again = sample_custom(comfy, tiny, tcd_sampler(comfy), sigmas)
    other = sample_custom(comfy, tiny, tcd_sampler(comfy), sigmas, seed=SEED + 1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_gamma_zero_equals_comfy_euler_before_the_last_step(comfy: Comfy, tiny: SimpleNamespace) -> None:
    """gamma = 0 is DDIM, which in ComfyUI's VE form is exactly its Euler step (the last step differs by design)."""
    sigmas = tcd_sigmas(comfy, tiny.model)[:-1]
    ours = sample_custom(comfy, tiny, tcd_sampler(comfy, 0.0), sigmas)
    euler = sample_custom(comfy, tiny, run_node(comfy.node("KSamplerSelect"), sampler_name="euler")[0], sigmas)
    assert relative_error(ours, euler) <= 1e-5


# --- other model families -----------------------------------------------------------------------------


def test_v_prediction_model_matches_diffusers(comfy: Comfy, tiny: SimpleNamespace) -> None:
    v_model = run_node(comfy.node("ModelSamplingDiscrete"), model=tiny.model, sampling="v_prediction", zsnr=False)[0]
    sigmas = tcd_sigmas(comfy, v_model)
    ours = sample_custom(comfy, tiny, tcd_sampler(comfy, 0.3), sigmas, model=v_model)
    reference = sample_custom(comfy, tiny, ksampler_object(comfy, diffusers_tcd(0.3, "v_prediction")), sigmas,
                              model=v_model)  # fmt: skip
    assert relative_error(ours, reference) <= REFERENCE_TOLERANCE
    assert not torch.allclose(ours, sample_custom(comfy, tiny, tcd_sampler(comfy, 0.3), sigmas))


def test_zero_terminal_snr_model_samples(comfy: Comfy, tiny: SimpleNamespace) -> None:
    zsnr = run_node(comfy.node("ModelSamplingDiscrete"), model=tiny.model, sampling="v_prediction", zsnr=True)[0]
    sigmas = tcd_sigmas(comfy, zsnr)
    assert sigmas[0] > 1000  # the terminal sigma of a zero-terminal-SNR schedule
    out = sample_custom(comfy, tiny, tcd_sampler(comfy, 0.3), sigmas, model=zsnr)
    assert torch.isfinite(out).all()


@pytest.fixture(scope="module")
def flow_model(comfy: Comfy, tiny: SimpleNamespace) -> Any:
    """The SD1.5 UNet under an SD3-kind flow ModelSampling patch (CONST, shift 3)."""
    return run_node(comfy.node("ModelSamplingSD3"), model=tiny.model, shift=3.0)[0]


def test_flow_model_gamma_zero_equals_comfy_euler(comfy: Comfy, tiny: SimpleNamespace, flow_model: Any) -> None:
    """In flow form, TCD with gamma = 0 is the flow DDIM step, i.e. ComfyUI's Euler, last step included."""
    sigmas = tcd_sigmas(comfy, flow_model)
    assert sigmas[0] == 1.0
    ours = sample_custom(comfy, tiny, tcd_sampler(comfy, 0.0), sigmas, model=flow_model)
    euler = sample_custom(comfy, tiny, run_node(comfy.node("KSamplerSelect"), sampler_name="euler")[0], sigmas,
                          model=flow_model)  # fmt: skip
    assert relative_error(ours, euler) <= 1e-5


def test_flow_model_gamma_one_equals_comfy_lcm(comfy: Comfy, tiny: SimpleNamespace, flow_model: Any) -> None:
    """gamma = 1 denoises to s = 0 and renoises: ComfyUI's lcm sampler, with the same seeded noise."""
    sigmas = tcd_sigmas(comfy, flow_model)
    ours = sample_custom(comfy, tiny, tcd_sampler(comfy, 1.0), sigmas, model=flow_model)
    lcm = sample_custom(comfy, tiny, run_node(comfy.node("KSamplerSelect"), sampler_name="lcm")[0], sigmas,
                        model=flow_model)  # fmt: skip
    assert relative_error(ours, lcm) <= 1e-5


def tcd_core_reference(space: Any) -> Any:
    """tcd_core.sample_tcd in a given noise space with ComfyUI's seeded noise, bypassing the pack's adapter."""
    from comfy.k_diffusion.sampling import default_noise_sampler
    from comfyui_tcd_sampling import tcd_core

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        noise = default_noise_sampler(x, seed=extra_args["seed"])
        return tcd_core.sample_tcd(model, x, sigmas, extra_args, noise_sampler=noise, gamma=0.3, space=space)

    return sample


def test_flow_model_matches_tcd_core_flow_reference(comfy: Comfy, tiny: SimpleNamespace, flow_model: Any) -> None:
    from comfyui_tcd_sampling import tcd_core

    sigmas = tcd_sigmas(comfy, flow_model)
    ours = sample_custom(comfy, tiny, tcd_sampler(comfy, 0.3), sigmas, model=flow_model)
    flow = sample_custom(comfy, tiny, ksampler_object(comfy, tcd_core_reference(tcd_core.flow_space())), sigmas,
                         model=flow_model)  # fmt: skip
    assert relative_error(ours, flow) <= 1e-6
    wrong = sample_custom(comfy, tiny, ksampler_object(comfy, tcd_core_reference(tcd_core.SD_SPACE)), sigmas,
                          model=flow_model)  # fmt: skip
    assert relative_error(ours, wrong) > 1e-3


# --- model patches act during sampling ----------------------------------------------------------------


def lora_loader(comfy: Comfy, sd: SimpleNamespace, tcd: str = TCD_LORA, strength: float = 1.0, **styles: Any) -> Any:
    inputs = {"model": sd.model, "clip": sd.clip, "tcd_lora": tcd, "tcd_lora_strength": strength}
    for i in (1, 2, 3):
        inputs[f"style_lora_{i}"] = styles.get(f"style_lora_{i}", "None")
        inputs[f"style_lora_{i}_strength"] = styles.get(f"style_lora_{i}_strength", 1.0)
    return run_node(comfy.node("TrajectoryConsistencyLoraLoader"), **inputs)


def test_lora_changes_the_output(comfy: Comfy, sd15: SimpleNamespace) -> None:
    sigmas = tcd_sigmas(comfy, sd15.model)
    plain = sample_custom(comfy, sd15, tcd_sampler(comfy), sigmas)
    patched_model, _ = lora_loader(comfy, sd15)
    with_lora = sample_custom(comfy, sd15, tcd_sampler(comfy), sigmas, model=patched_model)
    assert relative_error(with_lora, plain) > 1e-3


def test_controlnet_changes_the_output(comfy: Comfy, sd15: SimpleNamespace) -> None:
    control_net = run_node(comfy.node("ControlNetLoader"), control_net_name=CONTROLNET)[0]
    hint = torch.linspace(0, 1, 64).reshape(1, 64, 1, 1).expand(1, 64, 64, 3).contiguous()
    positive, negative = run_node(
        comfy.node("ControlNetApplyAdvanced"), positive=sd15.positive, negative=sd15.negative,
        control_net=control_net, image=hint, strength=0.5, start_percent=0.0, end_percent=1.0, vae=sd15.vae,
    )  # fmt: skip
    sigmas = tcd_sigmas(comfy, sd15.model)
    plain = sample_custom(comfy, sd15, tcd_sampler(comfy), sigmas)
    controlled = sample_custom(comfy, sd15, tcd_sampler(comfy), sigmas, positive=positive)
    assert relative_error(controlled, plain) > 1e-3


@pytest.mark.parametrize("order", [1, 2])
def test_ip_adapter_style_attention_patch_runs_in_every_model_call(
    comfy: Comfy, tiny: SimpleNamespace, order: int
) -> None:
    """IP-Adapter replaces cross-attention (attn2) per block; the patch must act at every model call."""
    from comfy.ldm.modules.attention import optimized_attention

    seen_sigmas: list[float] = []

    def attn2_replace(q, k, v, extra_options):
        seen_sigmas.append(float(extra_options["sigmas"][0]))
        return optimized_attention(q, k, v, extra_options["n_heads"]) * 1.5  # visibly changes the output

    patched = tiny.model.clone()
    patched.set_model_attn2_replace(attn2_replace, "middle", 0)
    calls: list[float] = []

    def count_calls(apply_model, args):
        calls.append(float(args["timestep"][0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched.set_model_unet_function_wrapper(count_calls)
    sigmas = tcd_sigmas(comfy, tiny.model)
    out = sample_custom(comfy, tiny, tcd_sampler(comfy, order=order), sigmas, model=patched)
    assert len(calls) == 4 * order
    assert len(seen_sigmas) == len(calls)  # the middle block has one transformer: one patch call per model call
    assert relative_error(out, sample_custom(comfy, tiny, tcd_sampler(comfy, order=order), sigmas)) > 1e-3


# --- the LoRA loader ----------------------------------------------------------------------------------


def test_matching_lora_patches_all_its_modules(comfy: Comfy, sd15: SimpleNamespace) -> None:
    model, _, fit = comfy.pack.tcd_comfy.lora_stack.apply_lora(sd15.model, sd15.clip, TCD_LORA, 1.0)
    assert fit.modules > 0 and fit.patched == fit.modules and not fit.is_partial
    assert len(model.patches) == fit.patched


def test_partly_fitting_lora_is_applied_with_a_warning(
    comfy: Comfy, sd15: SimpleNamespace, test_models: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """SD1.5 modules plus SDXL-only modules in one file: the SD1.5 part applies, the rest is reported."""
    from safetensors.torch import load_file, save_file

    partial = test_models["lora_sd15"].with_name("tcd-test-partial-lora.safetensors")
    if not partial.exists():
        save_file({**load_file(test_models["lora_sdxl"]), **load_file(test_models["lora_sd15"])}, partial)
    with caplog.at_level("WARNING", logger="comfyui-tcd-sampling"):
        _, _, fit = comfy.pack.tcd_comfy.lora_stack.apply_lora(sd15.model, sd15.clip, partial.name, 1.0)
    _, _, full = comfy.pack.tcd_comfy.lora_stack.apply_lora(sd15.model, sd15.clip, TCD_LORA, 1.0)
    assert fit.is_partial and fit.patched == full.patched < fit.modules
    assert f"{fit.patched} of its {fit.modules} modules" in caplog.text


def test_a_full_weight_lora_with_a_bias_for_a_bias_less_layer_loads_with_a_warning(
    comfy: Comfy, sd15: SimpleNamespace, test_models: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """A LyCORIS full-weight file whose attn2.to_k module carries a diff_b (SD1.5's to_k has no bias): the
    diff applies, the bias is left out with a warning naming it (it used to raise a raw KeyError)."""
    import torch
    from safetensors.torch import save_file

    module = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"  # kohya's name of the LDM layer
    weight = sd15.model.model.state_dict()["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
    path = test_models["lora_sd15"].with_name("tcd-test-diff-b-without-bias.safetensors")
    delta = {f"{module}.diff": torch.full(tuple(weight.shape), 1e-3), f"{module}.diff_b": torch.ones(weight.shape[0])}
    save_file(delta, path)
    try:
        with caplog.at_level("WARNING", logger="comfyui-tcd-sampling"):
            model, _, fit = comfy.pack.tcd_comfy.lora_stack.apply_lora(sd15.model, sd15.clip, path.name, 1.0)
    finally:
        path.unlink()
    assert fit.patched == 1 and fit.absent == ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.bias",)
    assert "weights this model does not have" in caplog.text and "attn2.to_k.bias" in caplog.text
    assert set(model.patches) == {"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"}


def test_lora_for_another_family_is_refused(comfy: Comfy, sd15: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="patches nothing in this model.*another model family"):
        lora_loader(comfy, sd15, tcd=SDXL_LORA)


def test_stack_applies_every_lora_with_its_strength(comfy: Comfy, sd15: SimpleNamespace) -> None:
    model, _ = lora_loader(comfy, sd15, strength=0.8, style_lora_1=STYLE_LORA, style_lora_1_strength=0.6)
    strengths = {round(patch[0], 6) for patches in model.patches.values() for patch in patches}
    assert strengths == {0.8, 0.6}
    assert all(len(patches) == 2 for patches in model.patches.values())
    assert not sd15.model.patches  # the loader patched clones, never the input model


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../checkpoints/" + CKPT, "not in ComfyUI's loras folders"),
        ("/etc/passwd", "not in ComfyUI's loras folders"),
        ("not-a-lora.safetensors", "is not a LoRA"),
        ("corrupt.safetensors", "could not be read"),
    ],
)
def test_bad_lora_names_and_files_are_refused(comfy: Comfy, sd15: SimpleNamespace, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lora_loader(comfy, sd15, tcd=name)


def test_lora_names_outside_the_loras_folders_are_refused_before_the_graph_runs(comfy: Comfy) -> None:
    """validate_inputs answers ComfyUI's prompt validation (HTTP 400) for every slot; links (None) wait."""
    validate = comfy.node("TrajectoryConsistencyLoraLoader").validate_inputs
    assert validate(tcd_lora=TCD_LORA, style_lora_1="None", style_lora_2="None", style_lora_3="None") is True
    assert validate(tcd_lora=None, style_lora_1=None) is True  # linked inputs are checked when they arrive
    outside = "../checkpoints/tcd-test-sd15.safetensors"
    for slot in ("tcd_lora", "style_lora_2"):
        message = validate(**{"tcd_lora": TCD_LORA, slot: outside})
        assert message == (
            f"TCD LoRA Loader {slot}: LoRA {outside!r} is not in ComfyUI's loras folders; pick one from the list"
        )
    assert "tcd_lora: LoRA 'None' is not in" in validate(tcd_lora="None")  # the TCD LoRA itself is required
