"""Checks of the node's training path against ComfyUI's sampling path, on the same tensors.

``python -m bench.product.checks``: needs the full plan's first teacher (trained by ``python -m bench.product``).

1. timestep / sigma: the node's ``unet_fn`` (VP input, integer t) vs ComfyUI's ``apply_model`` (VE input, sigma).
2. the guided teacher step of training (tcd_core.teacher_ddim_step, w) vs one step of ComfyUI's ``ddim`` sampler
   at CFG w + 1 between the same two timesteps.
3. the TCD sampler's step (gamma) vs the consistency function the student is trained on, a_s x0 + s_s eps,
   with s = (1 - gamma) t_next (gamma 0: no noise added).
4. the LoRA initialisation (ComfyUI's LoRAAdapter.create_train: up random, down 0) vs PEFT's (down random,
   up 0, as diffusers' LCM-LoRA script): the weight change of one Adam step at the same learning rate.
"""

from __future__ import annotations

import math

import torch

from .data import SD15_SCALE
from .env import comfy as load_host
from .env import threads
from .specs import FULL
from .teacher import alphas_cumprod, load_teacher


def _vp_to_ve(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * math.sqrt(1.0 + sigma**2)


def check_timesteps(patcher, training, prompts) -> None:
    ms = patcher.get_model_object("model_sampling")
    unet = training.unet_fn(patcher, torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    ctx = prompts.classes[:4].clone()
    print("1. unet_fn (node) vs apply_model (ComfyUI sampling), same x_t and t:")
    for t in (19, 259, 499, 759, 999):
        sigma = float(ms.sigma(torch.tensor(float(t))))
        back = float(ms.timestep(torch.tensor(sigma)))
        with torch.no_grad():
            eps_node = unet(x, torch.full((4,), t), {"c_crossattn": ctx})
            den = patcher.model.apply_model(_vp_to_ve(x, sigma), torch.full((4,), sigma), c_crossattn=ctx)
            eps_comfy = (_vp_to_ve(x, sigma) - den) / sigma
        err = float((eps_node - eps_comfy).abs().max())
        print(f"   t {t:3d}: sigma {sigma:8.4f}, timestep(sigma(t)) = {back:9.4f}, max |eps diff| {err:.2e}")


def check_teacher_step(host, patcher, training, prompts) -> None:
    import comfy.sample
    import comfy.samplers

    distill = host.pack.tcd_core.distill
    ms = patcher.get_model_object("model_sampling")
    abar = alphas_cumprod(patcher)
    unet = training.unet_fn(patcher, torch.float32)
    config = distill.DistillConfig(guidance_min=2.0, guidance_max=2.0)
    gen = torch.Generator().manual_seed(1)
    print("2. training's guided DDIM step (w 2) vs ComfyUI's ddim sampler (CFG 3), one step t_start -> t_prev:")
    for index in (10, 30, 48):
        t_start, t_prev = (index + 1) * 20 - 1, index * 20 - 1
        x = torch.randn(4, 4, 8, 8, generator=gen)
        labels = torch.arange(4)
        points = distill.TrainingPoints(*(torch.full((4,), v) for v in (index, t_start, t_prev, 0)),
                                        torch.full((4,), 2.0))  # fmt: skip
        ctx, neg = prompts.context(labels), prompts.empty.expand(4, -1, -1)
        ours = distill.teacher_ddim_step(config, abar, x, points, unet, {"c_crossattn": ctx}, {"c_crossattn": neg})
        sigmas = ms.sigma(torch.tensor([float(t_start), float(t_prev)]))
        s0, s1 = float(sigmas[0]), float(sigmas[1])
        noise = _vp_to_ve(x, s0) / s0  # ComfyUI starts at noise * sigma_0 on an empty latent
        with torch.inference_mode():
            out = comfy.sample.sample_custom(patcher, noise, 3.0, comfy.samplers.sampler_object("ddim"), sigmas,
                                             [[ctx.clone(), {}]], [[prompts.empty.clone(), {}]],
                                             torch.zeros_like(x), disable_pbar=True, seed=0)  # fmt: skip
        theirs = out.float() * SD15_SCALE / math.sqrt(1.0 + s1**2)
        err = float((ours - theirs).abs().max())
        print(
            f"   {t_start:3d} -> {t_prev:3d}: max |x_prev diff| {err:.2e} (|x_prev| max {float(ours.abs().max()):.2f})"
        )


def check_tcd_step(host, patcher, prompts) -> None:
    import comfy.sample

    from devkit.inprocess import run_node

    ms = patcher.get_model_object("model_sampling")
    abar = alphas_cumprod(patcher).float()
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ctx = prompts.classes[:4].clone()
    print("3. TCD Sampler step (2 steps, first step) vs a_s x0 + s_s eps with s = (1 - gamma) t_next:")
    (sigmas,) = run_node(host.node("TrajectoryConsistencyScheduler"), model=patcher, steps=2,
                         original_inference_steps=50, strength=1.0)  # fmt: skip
    t0, t1 = (round(float(ms.timestep(s))) for s in sigmas[:2])
    for gamma in (0.0, 0.3, 0.5):
        (sampler,) = run_node(host.node("TrajectoryConsistencySampler"), gamma=gamma, gamma_schedule="constant",
                              gamma_end=gamma, gamma_list=str(gamma), order=1)  # fmt: skip
        noise = x  # sigma_0 is sigma_max: ComfyUI starts at noise * sqrt(1 + sigma_0^2), the VP x_T = noise
        with torch.inference_mode():
            out = comfy.sample.sample_custom(patcher, noise, 1.0, sampler, sigmas[:2].clone(), [[ctx, {}]],
                                             [[prompts.empty.clone(), {}]], torch.zeros_like(x),
                                             disable_pbar=True, seed=5)  # fmt: skip
            s_ve = float(sigmas[0])
            den = patcher.model.apply_model(_vp_to_ve(x, s_ve), torch.full((4,), s_ve), c_crossattn=ctx)
        x0 = den
        eps = (x - abar[t0].sqrt() * x0) / (1 - abar[t0]).sqrt()
        s = math.floor((1 - gamma) * t1)
        pred = abar[s].sqrt() * x0 + (1 - abar[s]).sqrt() * eps
        got = out.float() * SD15_SCALE / math.sqrt(1.0 + float(sigmas[1]) ** 2)
        if gamma == 0:
            err = float((got - pred).abs().max())
            print(f"   gamma 0: {t0} -> {t1}: max |diff| {err:.2e}")
        else:  # x_{t1} = sqrt(abar_t1 / abar_s) x_s + sqrt(1 - abar_t1 / abar_s) z: check the mean part's residual
            ratio = abar[t1] / abar[s]
            resid = (got - ratio.sqrt() * pred) / (1 - ratio).sqrt()
            print(f"   gamma {gamma}: {t0} -> s {s} -> {t1}: implied fresh noise std {float(resid.std()):.3f} "
                  f"(1.000 expected), mean {float(resid.mean()):+.3f}")  # fmt: skip


def check_lora_init(host) -> None:
    from comfy.weight_adapter import LoRAAdapter

    print("4. one AdamW step at lr 1e-4, rank 64, alpha 64, same gradient on W: ||dW|| / (lr sqrt(numel W))")
    for label, shape in (("tiny 3x3 conv 32->32", (32, 32, 3, 3)), ("tiny attn 64x64", (64, 64)),
                         ("SD1.5 3x3 conv 320->320", (320, 320, 3, 3)), ("SD1.5 3x3 conv 1280->1280",
                                                                           (1280, 1280, 3, 3)),
                         ("SD1.5 attn k 768->320", (320, 768))):  # fmt: skip
        torch.manual_seed(0)
        weight = torch.randn(shape) * 0.02
        grad = torch.randn(shape[0], int(torch.tensor(shape[1:]).prod()))
        sizes = []
        for init in ("comfy", "peft"):
            adapter = LoRAAdapter.create_train(weight, rank=64, alpha=64.0)
            up, down = adapter.lora_up.weight, adapter.lora_down.weight
            if init == "peft":
                with torch.no_grad():
                    bound = 1 / math.sqrt(down.shape[1])
                    down.uniform_(-bound, bound)
                    up.zero_()
            opt = torch.optim.AdamW([up, down], lr=1e-4)
            before = (up @ down).detach().clone()
            (up @ down * grad).sum().backward()
            opt.step()
            sizes.append(float((up @ down - before).detach().norm()) / (1e-4 * math.sqrt(grad.numel())))
        print(
            f"   {label:26s}: ComfyUI init {sizes[0]:.3f}, PEFT init {sizes[1]:.3f}, ratio {sizes[0] / sizes[1]:.1f}x"
        )


def main() -> None:
    threads()
    host = load_host()
    training = host.pack.tcd_comfy.distill_model  # the node's UNet call (unet_fn)
    patcher, prompts, _ = load_teacher(FULL.teachers[0])
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    check_timesteps(patcher, training, prompts)
    check_teacher_step(host, patcher, training, prompts)
    check_tcd_step(host, patcher, prompts)
    check_lora_init(host)


if __name__ == "__main__":
    main()
