"""The node's distillation path checked piece by piece against ComfyUI's own sampling, on the same tensors.

The engine's math (tcd_core.distill) is checked against closed forms and diffusers elsewhere; here the
question is whether the ComfyUI side feeds it what it assumes: the model's VP schedule, the UNet called
on diffusers' VP input at integer timesteps, the guided teacher step, the student at initialisation, and
the EMA target. Each reference is ComfyUI's own code path (``BaseModel.apply_model`` with its sigma-space
conversion; ``CFGGuider`` with its ``euler`` sampler), not a re-derivation.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_distill_node import conditioning, inputs, tiny_model

from devkit.inprocess import Comfy, load_comfy
from devkit.model_files import default_models_dir


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def pack(comfy: Comfy) -> SimpleNamespace:
    p = comfy.pack
    return SimpleNamespace(
        distill=p.tcd_core.distill, distiller=p.tcd_core.distiller, model=p.tcd_comfy.distill_model,
        data=p.tcd_comfy.distill_data, run=p.tcd_comfy.distill_run,
    )  # fmt: skip


def open_run(pack: SimpleNamespace, model: Any, **config: Any) -> Any:
    facts = pack.model.model_facts(model)
    args = inputs(model=model)
    dataset = pack.data.build_dataset(model, args["latents"], args["positive"], args["negative"], facts)
    settings = pack.distiller.TrainSettings(rank=4, batch_size=2, learning_rate=1e-2, training_dtype="fp32")
    cfg = pack.distill.DistillConfig(prediction_type=facts.prediction_type, **config)
    return pack.run.DistillRun(model, dataset, facts, cfg, settings)


def test_the_schedule_is_sds_scaled_linear_one(pack: SimpleNamespace) -> None:
    facts = pack.model.model_facts(tiny_model())
    expected = pack.distill.scaled_linear_alphas_cumprod()
    torch.testing.assert_close(facts.alphas_cumprod, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("t", [19, 259, 499, 759, 999])
def test_the_unet_call_is_comfyuis_at_the_same_point(pack: SimpleNamespace, t: int) -> None:
    """unet_fn(x_t, t) on diffusers' VP input = what ComfyUI's apply_model computes at sigma = sigma_t / alpha_t
    on x_t / alpha_t (its sigma-space input), and ComfyUI's sigma -> timestep gives t exactly."""
    model = tiny_model()
    facts = pack.model.model_facts(model)
    sampling = model.get_model_object("model_sampling")
    alpha_bar = facts.alphas_cumprod[t]
    alpha, sigma_vp = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    sigma = (sigma_vp / alpha).float().reshape(1)
    assert float(sampling.timestep(sigma)) == t
    gen = torch.Generator().manual_seed(t)
    x_t = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 77, 64, generator=gen)
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    with torch.no_grad():
        eps = pack.model.unet_fn(model, torch.float32)(x_t, torch.tensor([t]), {"c_crossattn": context})
        x_comfy = x_t / alpha.float()
        denoised = model.model.apply_model(x_comfy, sigma, c_crossattn=context)
    eps_comfy = (x_comfy - denoised) / sigma
    torch.testing.assert_close(eps, eps_comfy, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("w", [0.0, 2.0, 7.0])
def test_the_guided_teacher_step_is_comfyuis_cfg_euler_step(comfy: Comfy, pack: SimpleNamespace, w: float) -> None:
    """The teacher's guided DDIM step t_{n+k} -> t_n (Eq. 28 in LCM's form, w = CFG - 1) through the node's
    teacher (adapters off) = one step of ComfyUI's euler sampler with CFG w + 1 between the same sigmas
    (deterministic DDIM is Euler in sigma space), with the node's conds from the same CONDITIONING."""
    import comfy.sample
    import comfy.samplers

    model = tiny_model()
    pos, neg = conditioning(11), conditioning(12)
    run = open_run(pack, model, guidance_min=w, guidance_max=w)
    facts = run.model.facts
    t_start, t_prev = 499, 479
    gen = torch.Generator().manual_seed(5)
    x_start = torch.randn(1, 4, 8, 8, generator=gen)  # VP, in the model's latent space
    base = model.model
    conds = [pack.data.encode_conds(base, entry, x_start, model.load_device, kind)
             for entry, kind in ((pos[0], "positive"), (neg[0], "negative"))]  # fmt: skip
    cond, uncond = (pack.data.batch_conds([c]) for c in conds)
    points = pack.distill.TrainingPoints(
        torch.tensor([24]), torch.tensor([t_start]), torch.tensor([t_prev]), torch.tensor([0]), torch.tensor([w])
    )
    with run:
        x_prev = pack.distill.teacher_ddim_step(run.distiller.config, run.model.alphas_cumprod, x_start, points,
                                                run.model.teacher, cond, uncond)  # fmt: skip
    alphas = facts.alphas_cumprod
    a_start, a_prev = alphas[t_start].sqrt(), alphas[t_prev].sqrt()
    sigmas = torch.stack([(1 - alphas[t]).sqrt() / alphas[t].sqrt() for t in (t_start, t_prev)]).float()
    sampler = comfy.samplers.sampler_object("euler")
    noise = (x_start / a_start.float()) / sigmas[0]  # ComfyUI starts at noise * sigma_0 (+ the empty latent)
    empty = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        out = comfy.sample.sample_custom(model, noise, w + 1.0, sampler, sigmas, pos, neg, empty, disable_pbar=True,
                                         seed=0)  # fmt: skip
    x_prev_comfy = base.process_latent_in(out) * a_prev.float()
    torch.testing.assert_close(x_prev, x_prev_comfy, rtol=1e-4, atol=1e-4)


def test_the_student_starts_as_the_teacher_and_the_ema_target_trails_it(pack: SimpleNamespace) -> None:
    """ComfyUI's training LoRA starts with a zero down factor: student = teacher bit for bit before training.
    After steps the EMA target (decay 0.95) lies between the start and the student."""
    model = tiny_model()
    run = open_run(pack, model, ema_decay=0.95)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([599])
    cond = {"c_crossattn": torch.randn(1, 77, 64, generator=gen)}
    with run, torch.no_grad():
        student, teacher = run.model.student(x, t, cond), run.model.teacher(x, t, cond)
        torch.testing.assert_close(student, teacher, rtol=0, atol=0)
        start = [p.detach().clone() for p in run.model.params]
        with torch.enable_grad():
            for _ in range(3):
                run.step()
        online = run.model.params
        shadow = run.distiller.ema.shadow
        moved = sum(float((p - s).norm()) for p, s in zip(online, start, strict=True))
        ema_gap = sum(float((e - p).norm()) for e, p in zip(shadow, online, strict=True))
        assert moved > 0 and 0 < ema_gap < moved
        target = run.distiller.target(x, t, cond)
        assert not torch.equal(target, run.model.student(x, t, cond)), "the target is not the EMA weights"
