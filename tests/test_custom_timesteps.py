"""Custom timestep lists (TCD Scheduler `timesteps`) and the unit-variance start (TCD Sampler `unit_start_noise`),
against diffusers' TCDScheduler.set_timesteps(timesteps=...) and its pipelines' start from unit noise, inside a real
ComfyUI (in process): ComfyUI's SD1.5 model class with a tiny random UNet, and the same model with every call
answered by a Gaussian mixture's exact posterior mean."""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, TCDScheduler

from devkit.gaussian_mixture import GaussianMixture, flow_alpha, ve_alpha
from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import TINY_SD15_UNET_CONFIG, default_models_dir, tiny_sd15_patcher

SEED = 1234
SIGMA_TOLERANCE = 1e-6
REFERENCE_TOLERANCE = 1e-4
LISTS = ["800", "399", "961, 721, 481, 241"]  # Hyper-SD 1-step UNet, DMD2 1-step, an off-grid 4-step list
SCHEDULER, SAMPLER = "TrajectoryConsistencyScheduler", "TrajectoryConsistencySampler"


def parse(text: str) -> list[int]:
    return [int(entry) for entry in text.replace(",", " ").split()]


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    """ComfyUI with the pack (loaded once per process)."""
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def sd15(comfy: Comfy) -> SimpleNamespace:
    """ComfyUI's SD1.5 model class (its scaled-linear eps schedule) with a tiny random UNet, in a real ModelPatcher."""
    generator = torch.Generator().manual_seed(20261202)
    patcher = tiny_sd15_patcher(generator)
    positive = [[torch.randn(1, 77, TINY_SD15_UNET_CONFIG["context_dim"], generator=generator), {}]]
    latent = run_node(comfy.node("EmptyLatentImage"), width=64, height=64, batch_size=1)[0]
    return SimpleNamespace(model=patcher, positive=positive, latent=latent)


def scheduler_sigmas(comfy: Comfy, model: Any, timesteps: str, strength: float = 1.0, steps: int = 4) -> torch.Tensor:
    node = comfy.node(SCHEDULER)
    inputs = {"model": model, "steps": steps, "original_inference_steps": 50, "strength": strength}
    return run_node(node, **inputs, timesteps=timesteps)[0]


def tcd_sampler(comfy: Comfy, gamma: float, unit_start_noise: bool) -> Any:
    inputs = {"gamma": gamma, "gamma_schedule": "constant", "gamma_end": gamma, "gamma_list": "0.3", "order": 1}
    return run_node(comfy.node(SAMPLER), **inputs, unit_start_noise=unit_start_noise)[0]


def sample_custom(comfy: Comfy, sd: SimpleNamespace, sampler: Any, sigmas: torch.Tensor, model: Any = None,
                  latent: dict | None = None) -> torch.Tensor:  # fmt: skip
    """SamplerCustomAdvanced with RandomNoise and a CFG-1 guider, as a TCD graph wires it."""
    noise = run_node(comfy.node("RandomNoise"), noise_seed=SEED)[0]
    guider = run_node(comfy.node("BasicGuider"), model=model or sd.model, conditioning=sd.positive)[0]
    out = run_node(comfy.node("SamplerCustomAdvanced"), noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                   latent_image=latent or sd.latent)  # fmt: skip
    return out[0]["samples"]


def diffusers_sigmas(timesteps: list[int], strength: float = 1.0) -> torch.Tensor:
    """sqrt((1 - alpha_bar) / alpha_bar) at the timesteps diffusers' TCDScheduler keeps, with the final 0."""
    scheduler = TCDScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(timesteps=timesteps, strength=strength)
    alpha_bar = scheduler.alphas_cumprod[scheduler.timesteps].double()
    return torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1, dtype=torch.float64)])


def diffusers_pipeline(timesteps: list[int], gamma: float, prediction: str = "epsilon", unit_start: bool = True) -> Any:
    """A SAMPLER function running diffusers' TCDScheduler with ``timesteps`` on ComfyUI's model.

    ``unit_start``: the pipelines' text-to-image start, x_T = the unit-variance noise itself (read from ComfyUI's
    unscaled seeded noise, plus the latent as ComfyUI adds it); otherwise ComfyUI's own start latent in VP form.
    Step noise comes from ComfyUI's seeded noise sampler, so both sides see the same noise.
    """
    from comfy.k_diffusion.sampling import default_noise_sampler
    from diffusers.schedulers import scheduling_tcd

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
        scheduler = TCDScheduler(beta_schedule="scaled_linear", prediction_type=prediction)
        scheduler.set_timesteps(timesteps=timesteps)
        noise = default_noise_sampler(x, seed=extra_args["seed"])
        s_in = x.new_ones([x.shape[0]])
        start_scale = (1 + model_sampling.sigma(scheduler.timesteps[:1]) ** 2).sqrt()
        x_vp = model.noise + model.latent_image / start_scale if unit_start else x / start_scale
        with mock.patch.object(scheduling_tcd, "randn_tensor", lambda shape, **kwargs: noise(None, None)):
            for t in scheduler.timesteps:
                sigma = model_sampling.sigma(t)
                scale = (1 + sigma**2).sqrt()  # 1 / sqrt(alpha_bar)
                x_ve = x_vp * scale
                denoised = model(x_ve, sigma * s_in, **extra_args)
                eps = (x_ve - denoised) / sigma
                out = eps if prediction == "epsilon" else (eps - sigma * denoised) / scale
                x_vp = scheduler.step(out, t, x_vp, eta=gamma).prev_sample
        return x_vp

    return sample


def reference(comfy: Comfy, sd: SimpleNamespace, sigmas: torch.Tensor, function: Any, **kwargs: Any) -> torch.Tensor:
    from comfy.samplers import KSAMPLER

    return sample_custom(comfy, sd, KSAMPLER(function), sigmas, **kwargs)


def sigma_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max(1, theirs), elementwise (float32 sigmas near 14.6 carry ~1e-6 of rounding)."""
    theirs = theirs.double()
    return ((ours.double() - theirs).abs() / theirs.clamp(min=1)).max().item()


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max(1, max |theirs|): a random UNet's latents can be large."""
    return ((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1)).item()


# --- parsing: the accepted form, and each kind of bad list named ------------------------------------------


def test_lists_parse_with_commas_or_spaces(comfy: Comfy) -> None:
    tcd_core = sys.modules[comfy.pack_nodes.__name__.rsplit(".", 1)[0]].tcd_core
    assert tcd_core.parse_timesteps("800") == [800]
    assert tcd_core.parse_timesteps(" 999, 749,499 ,  249 ") == [999, 749, 499, 249]
    assert tcd_core.parse_timesteps("961 721\t481\n241") == [961, 721, 481, 241]
    assert tcd_core.parse_timesteps("999, 0") == [999, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("999, abc, 499", r"entry 2 \('abc'\) is not a whole number"),
        ("800.0", r"entry 1 \('800.0'\) is not a whole number"),
        ("1e3", r"entry 1 \('1e3'\) is not a whole number"),
        ("999,,499", "entry 2 is empty"),
        ("999, 499,", "entry 3 is empty"),
        ("499, 749", r"entry 2 \(749\) is not below the entry before it \(499\)"),
        ("999, 999", r"entry 2 \(999\) is not below"),
        ("1000, 499", r"entry 1 \(1000\) is outside the training timesteps 0..999"),
        ("999, -1", r"entry 2 \(-1\) is outside the training timesteps 0..999"),
    ],
)
def test_bad_lists_are_refused_at_validation_naming_the_input_and_entry(comfy: Comfy, text: str, message: str) -> None:
    verdict = comfy.node(SCHEDULER).validate_inputs(timesteps=text)
    assert isinstance(verdict, str)
    assert verdict.startswith("TCD Scheduler timesteps entry")
    assert re.search(message, verdict), verdict
    assert "strictly descending, separated by commas or spaces" in verdict  # the allowed form


def test_empty_or_linked_timesteps_pass_validation(comfy: Comfy) -> None:
    validate = comfy.node(SCHEDULER).validate_inputs
    assert validate(timesteps="") is True
    assert validate(timesteps="   ") is True
    assert validate(timesteps=None) is True  # a link: checked when its value arrives
    assert validate(timesteps="999, 749, 499, 249") is True
    assert validate(timesteps=800) == "TCD Scheduler timesteps must be text, got int"  # an API prompt's number


# --- sigmas: equal to diffusers' for eps, v and flow models ----------------------------------------------


@pytest.mark.parametrize("text", [*LISTS, "999, 749, 499, 249", "999, 0"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
def test_sigmas_equal_diffusers_custom_timesteps(
    comfy: Comfy, sd15: SimpleNamespace, text: str, strength: float, prediction: str
) -> None:
    model = sd15.model
    if prediction != "eps":  # the noise schedule is the same; the model's sampling object is another
        model = run_node(comfy.node("ModelSamplingDiscrete"), model=model, sampling=prediction, zsnr=False)[0]
    if int(len(parse(text)) * strength) == 0:
        with pytest.raises(ValueError, match="TCD Scheduler: strength=0.5 keeps none of the 1 timesteps"):
            scheduler_sigmas(comfy, model, text, strength)
        return
    ours = scheduler_sigmas(comfy, model, text, strength)
    theirs = diffusers_sigmas(parse(text), strength)
    assert ours.shape == theirs.shape
    assert sigma_error(ours, theirs) <= SIGMA_TOLERANCE
    model_sampling = model.get_model_object("model_sampling")
    kept = parse(text)[len(parse(text)) - int(len(parse(text)) * strength) :]  # diffusers' strength rule
    assert model_sampling.timestep(ours[:-1]).tolist() == kept


@pytest.mark.parametrize("text", [*LISTS, "999, 749, 499, 249", "999, 0"])
def test_flow_sigmas_equal_diffusers_flow_match_training_table(comfy: Comfy, sd15: SimpleNamespace, text: str) -> None:
    """Flow models: timestep t is the (t + 1)-th entry of the 1000-step training table through the model's shift, the
    sigma TCD Distill LoRA trains at: diffusers' FlowMatchEulerDiscreteScheduler(shift, num_train_timesteps=1000)
    table, read at its sigmas (t + 1) / 1000 (999 is pure noise, 0 the lowest training sigma)."""
    flow = run_node(comfy.node("ModelSamplingSD3"), model=sd15.model, shift=3.0)[0]
    ours = scheduler_sigmas(comfy, flow, text)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, num_train_timesteps=1000)
    table = scheduler.sigmas.flip(0)  # its training sigmas, rising: shift(i / 1000) for i = 1..1000
    assert sigma_error(ours[:-1], table[parse(text)]) <= SIGMA_TOLERANCE
    scheduler.set_timesteps(sigmas=[(t + 1) / 1000 for t in parse(text)])  # the sigmas before shifting
    assert sigma_error(ours, scheduler.sigmas) <= SIGMA_TOLERANCE
    assert ours[-1] == 0


def test_a_list_equal_to_the_steps_schedule_gives_the_same_sigmas(comfy: Comfy, sd15: SimpleNamespace) -> None:
    flow = run_node(comfy.node("ModelSamplingSD3"), model=sd15.model, shift=3.0)[0]
    for model in (sd15.model, flow):
        assert torch.equal(scheduler_sigmas(comfy, model, "999, 759, 499, 259"), scheduler_sigmas(comfy, model, ""))


def test_empty_timesteps_is_the_old_schedule(comfy: Comfy, sd15: SimpleNamespace) -> None:
    node = comfy.node(SCHEDULER)
    old = run_node(node, model=sd15.model, steps=3, original_inference_steps=40, strength=0.7)[0]  # no input at all
    new = run_node(node, model=sd15.model, steps=3, original_inference_steps=40, strength=0.7, timesteps="")[0]
    assert torch.equal(new, old)


def test_the_models_own_range_is_checked_at_execution(comfy: Comfy, sd15: SimpleNamespace) -> None:
    from comfy import model_sampling

    class ShortSchedule(model_sampling.ModelSamplingDiscrete, model_sampling.EPS):
        pass

    short = sd15.model.clone()
    config = SimpleNamespace(sampling_settings={"beta_schedule": "linear", "timesteps": 500})
    short.add_object_patch("model_sampling", ShortSchedule(config))
    with pytest.raises(ValueError, match=r"TCD Scheduler: timesteps entry 1 \(800\) is outside the training "
                                         r"timesteps 0..499; give whole training timesteps in 0..499"):  # fmt: skip
        scheduler_sigmas(comfy, short, "800, 400")
    assert scheduler_sigmas(comfy, short, "499, 250").shape == (3,)
    flow = run_node(comfy.node("ModelSamplingSD3"), model=sd15.model, shift=3.0)[0]
    assert scheduler_sigmas(comfy, flow, "999, 0").shape == (3,)  # a flow model's grid is 0..999 too


# --- the start noise: full gamma-0 runs against diffusers' pipelines -------------------------------------


def test_unit_start_noise_run_equals_diffusers_through_the_real_unet(comfy: Comfy, sd15: SimpleNamespace) -> None:
    """DMD2's 1-step `399` through a real (tiny, random) UNet (the exact-posterior test below covers every list)."""
    text = "399"
    sigmas = scheduler_sigmas(comfy, sd15.model, text)
    theirs = reference(comfy, sd15, sigmas, diffusers_pipeline(parse(text), 0.0))
    on = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, True), sigmas)
    off = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, False), sigmas)
    assert relative_error(on, theirs) <= REFERENCE_TOLERANCE
    assert relative_error(off, theirs) > 10 * REFERENCE_TOLERANCE  # the switch is what makes them agree
    # Off is ComfyUI's own start: diffusers fed ComfyUI's start latent agrees with it.
    comfy_start = reference(comfy, sd15, sigmas, diffusers_pipeline(parse(text), 0.0, unit_start=False))
    assert relative_error(off, comfy_start) <= REFERENCE_TOLERANCE


MIXTURE = GaussianMixture(weights=(0.3, 0.7), means=(-1.0, 0.8), stds=(0.4, 0.6))


@pytest.fixture(scope="module")
def exact(sd15: SimpleNamespace) -> Any:
    """The SD1.5 ModelPatcher whose every model call returns a Gaussian mixture's exact E[x0 | x] (VE form)."""
    denoiser = MIXTURE.denoiser(ve_alpha)
    model = sd15.model.clone()
    model.set_model_unet_function_wrapper(lambda apply_model, args: denoiser(args["input"], args["timestep"]))
    return model


@pytest.mark.parametrize("text", [*LISTS, "999, 749, 499, 249"])
def test_unit_start_noise_runs_equal_diffusers_on_an_exact_posterior_model(
    comfy: Comfy, sd15: SimpleNamespace, exact: Any, text: str
) -> None:
    """The measurement of the issue: max |ours - diffusers| of full gamma-0 runs, switch on and off."""
    sigmas = scheduler_sigmas(comfy, exact, text)
    theirs = reference(comfy, sd15, sigmas, diffusers_pipeline(parse(text), 0.0), model=exact)
    on = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, True), sigmas, model=exact)
    off = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, False), sigmas, model=exact)
    on_error, off_error = (on - theirs).abs().max().item(), (off - theirs).abs().max().item()
    print(f"\n{text!r}: max |ours - diffusers| with unit_start_noise on {on_error:.3g}, off {off_error:.3g}")
    assert on_error <= REFERENCE_TOLERANCE
    if text.startswith("999"):
        assert torch.equal(on, off)  # the schedule starts at sigma_max: ComfyUI already starts from unit noise
    else:
        assert off_error > 10 * REFERENCE_TOLERANCE


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_unit_start_noise_with_gamma_and_v_prediction(comfy: Comfy, sd15: SimpleNamespace, prediction: str) -> None:
    model = sd15.model
    if prediction != "epsilon":
        model = run_node(comfy.node("ModelSamplingDiscrete"), model=model, sampling="v_prediction", zsnr=False)[0]
    text = "721, 241"
    sigmas = scheduler_sigmas(comfy, model, text)
    ours = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.3, True), sigmas, model=model)
    theirs = reference(comfy, sd15, sigmas, diffusers_pipeline(parse(text), 0.3, prediction), model=model)
    assert relative_error(ours, theirs) <= REFERENCE_TOLERANCE


def test_unit_start_noise_with_a_non_empty_latent_adds_it_as_comfyui_does_at_full_denoise(
    comfy: Comfy, sd15: SimpleNamespace
) -> None:
    """Defined behaviour: x = noise * sqrt(1 + sigma_0^2) + latent, ComfyUI's own start at sigma_max
    (VP: unit noise + sqrt(alpha_bar_0) * latent). Off keeps ComfyUI's img2img start."""
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))}
    sigmas = scheduler_sigmas(comfy, sd15.model, "399")
    on = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, True), sigmas, latent=latent)
    off = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, False), sigmas, latent=latent)
    assert relative_error(on, reference(comfy, sd15, sigmas, diffusers_pipeline([399], 0.0), latent=latent)) <= 1e-4
    img2img = reference(comfy, sd15, sigmas, diffusers_pipeline([399], 0.0, unit_start=False), latent=latent)
    assert relative_error(off, img2img) <= REFERENCE_TOLERANCE
    assert relative_error(on, off) > 1e-2


def test_unit_start_noise_on_a_flow_model_starts_from_the_noise_itself(comfy: Comfy, sd15: SimpleNamespace) -> None:
    """Flow form: ComfyUI starts at sigma_0 * noise + (1 - sigma_0) * latent; with the switch at
    noise + (1 - sigma_0) * latent (diffusers' flow pipelines start text-to-image from the noise itself).
    At gamma 0 TCD is ComfyUI's Euler, so the reference is Euler from that start (exact-posterior flow model)."""
    from comfy.k_diffusion.sampling import sample_euler

    flow = run_node(comfy.node("ModelSamplingSD3"), model=sd15.model, shift=3.0)[0].clone()
    denoiser = MIXTURE.denoiser(flow_alpha)
    flow.set_model_unet_function_wrapper(lambda apply_model, args: denoiser(args["input"], args["timestep"]))
    sigmas = scheduler_sigmas(comfy, flow, "800, 400")
    assert sigmas[0] < 0.99
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))}

    def euler_from_unit_noise(model, x, sigmas, **kwargs):
        return sample_euler(model, model.noise + (1 - sigmas[0]) * model.latent_image, sigmas, **kwargs)

    euler = run_node(comfy.node("KSamplerSelect"), sampler_name="euler")[0]
    for start in (sd15.latent, latent):
        on = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, True), sigmas, model=flow, latent=start)
        theirs = reference(comfy, sd15, sigmas, euler_from_unit_noise, model=flow, latent=start)
        assert relative_error(on, theirs) <= 1e-5
        off = sample_custom(comfy, sd15, tcd_sampler(comfy, 0.0, False), sigmas, model=flow, latent=start)
        assert relative_error(off, sample_custom(comfy, sd15, euler, sigmas, model=flow, latent=start)) <= 1e-5
        assert relative_error(on, off) > 1e-2
