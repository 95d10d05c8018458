"""Teachers: ComfyUI's SD1.5 model class (comfy.supported_models.SD15, scaled down) in a real ModelPatcher,
trained here with a plain eps-prediction loss on the digits latents, class-conditional with CFG dropout.

Training: t uniform on 0..999 of the model's own SD1.5 schedule (from its model_sampling sigmas),
x_t = a_t x0 + s_t eps, loss ||eps - unet(x_t, t, context)||^2; the context is the class embedding,
replaced by the empty one with probability ``cfg_dropout``; AdamW with cosine decay, EMA of the weights kept.
Cached under $TCD_DEV_DIR/bench-product/ by a hash of the spec.

``train`` and ``load_teacher`` serve every family: a spec builds its model (``build_patcher``), its prompts and its
latents (``codec``) and draws its loss (``loss``); bench/product_flow's spec is the flow family's.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from devkit.build_test_models import SD15_UNET_CONFIG

from .data import SD15_CODEC, LatentCodec, Prompts, load_digits, make_prompts
from .env import cache_dir, digest
from .sampling import EPS_SAMPLERS, Samplers


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    model_channels: int = 32
    context_dim: int = 32
    iterations: int = 2000
    batch: int = 64
    lr: float = 1e-3
    cfg_dropout: float = 0.15
    ema: float = 0.995
    seed: int = 0

    codec: ClassVar[LatentCodec] = SD15_CODEC
    samplers: ClassVar[Samplers] = EPS_SAMPLERS
    file_prefix: ClassVar[str] = ""  # a family's prefix for its cache files

    def key(self) -> str:
        return digest(asdict(self))

    def build_patcher(self) -> Any:
        return build_patcher(self)

    def make_prompts(self) -> Prompts:
        return make_prompts(self.context_dim)

    def loss(self, patcher: Any, x0: torch.Tensor, labels: torch.Tensor, prompts: Prompts, gen: Any) -> torch.Tensor:
        """Eps prediction: t uniform on 0..999, ||eps - unet(a_t x0 + s_t eps, t, context)||^2, CFG dropout."""
        net = patcher.model.diffusion_model
        abar = alphas_cumprod(patcher).float()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(x0),), generator=gen)
        a, s = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
        context = prompts.context(labels)
        drop = torch.rand(len(x0), generator=gen) < self.cfg_dropout
        context = torch.where(drop.view(-1, 1, 1), prompts.empty.expand_as(context), context)
        return (net(a * x0 + s * noise, t.float(), context=context) - noise).pow(2).mean()

    def unet_config(self) -> dict:
        """ComfyUI's SD1.5 UNet layout, shrunk: two levels, one res block and one transformer per level."""
        return {
            **SD15_UNET_CONFIG,
            "model_channels": self.model_channels,
            "num_res_blocks": [1, 1],
            "transformer_depth": [1, 1],
            "channel_mult": [1, 2],
            "context_dim": self.context_dim,
            "transformer_depth_output": [1, 1, 1, 1],
        }

    def describe(self) -> str:
        return (
            f"SD15 UNet model_channels {self.model_channels}, channel_mult [1, 2], context_dim {self.context_dim}; "
            f"{self.iterations} it x batch {self.batch}, AdamW lr {self.lr:g} cosine, EMA {self.ema}, "
            f"CFG dropout {self.cfg_dropout:.0%}, seed {self.seed}"
        )


def build_patcher(spec: TeacherSpec) -> Any:
    """The model (ComfyUI's SD15 config class, fp32) in a ModelPatcher on the CPU, PyTorch's default init."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(spec.unet_config(), dtype=torch.float32))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    torch.manual_seed(spec.seed)
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    for module in base.diffusion_model.modules():
        for kind in kinds:  # ComfyUI's ops skip initialisation (weights come from files)
            if isinstance(module, kind):
                kind.reset_parameters(module)
                break
    base.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def alphas_cumprod(patcher: Any) -> torch.Tensor:
    """alpha_bar of the model's own schedule (SD1.5 scaled_linear), from its model_sampling sigmas."""
    sigmas = patcher.get_model_object("model_sampling").sigmas.detach().double().cpu()
    return 1.0 / (1.0 + sigmas**2)


def train(spec: Any, patcher: Any, prompts: Prompts, log: Any = print) -> list[float]:
    """The training loop (in place on the patcher's network, ``spec.loss`` per batch); the loss per 50 iterations."""
    digits = load_digits()
    x_all = spec.codec.encode(digits.train)
    labels = digits.train_labels
    net = patcher.model.diffusion_model
    gen = torch.Generator().manual_seed(spec.seed)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=0.0)
    shadow = [p.detach().clone() for p in net.parameters()]
    curve, running, start = [], 0.0, time.time()
    for it in range(spec.iterations):
        for group in opt.param_groups:
            group["lr"] = spec.lr * 0.5 * (1 + math.cos(math.pi * it / spec.iterations))
        idx = torch.randint(0, len(x_all), (spec.batch,), generator=gen)
        loss = spec.loss(patcher, x_all[idx], labels[idx], prompts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for sh, p in zip(shadow, net.parameters(), strict=True):
                sh.lerp_(p.detach(), 1 - spec.ema)
        running += loss.item()
        if (it + 1) % 50 == 0:
            curve.append(running / 50)
            running = 0.0
        if (it + 1) % 500 == 0:
            log(
                f"  teacher {spec.name}: it {it + 1}/{spec.iterations} loss {curve[-1]:.4f} "
                f"({time.time() - start:.0f}s)"
            )
    with torch.no_grad():
        for sh, p in zip(shadow, net.parameters(), strict=True):
            p.copy_(sh)
    net.eval()
    return curve


def load_teacher(spec: Any, log: Any = print) -> tuple[Any, Prompts, dict]:
    """(patcher, prompts, info) for ``spec``: trained once, then loaded from the cache.

    ``info``: training seconds (of the run that trained it) and the loss curve.
    """
    prompts = spec.make_prompts()
    patcher = spec.build_patcher()
    path = cache_dir() / f"{spec.file_prefix}teacher-{spec.name}-{spec.key()}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        patcher.model.diffusion_model.load_state_dict(saved["weights"])
        return patcher, prompts, saved["info"]
    log(f"training teacher {spec.name}: {spec.describe()}")
    start = time.time()
    with torch.inference_mode(False):
        curve = train(spec, patcher, prompts, log)
    info = {"seconds": time.time() - start, "loss": curve}
    torch.save({"weights": patcher.model.diffusion_model.state_dict(), "info": info}, path)
    return patcher, prompts, info
