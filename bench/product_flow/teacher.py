"""Flow teachers: ComfyUI's SD3 model class (``comfy.supported_models.SD3``: MMDiT, CONST / flow prediction on
``ModelSamplingDiscreteFlow`` with shift 3), scaled down, in a real ModelPatcher, trained here by flow matching.

ComfyUI's detection cannot see a model this small, so it is built as the flow-node tests build theirs:
``supported_models.SD3(unet_config).get_model({})`` with the inference dtype set. MMDiT's width is 64 x depth with
heads = depth and the last block's context half reduced; depth 2 gives width 128, 2 heads. ComfyUI leaves
parameters and buffers uninitialised (weights come from files): Linear / Conv2d / LayerNorm take PyTorch's default init,
the qk RMSNorm scales 1, ``pos_embed`` (a buffer, never trained) SD3's fixed 2-D sin-cos table, and the adaLN
modulations and the final projection start at zero (DiT's initialisation: every block starts as the identity).

Training (bench/product's loop, ``bench.product.teacher.train``): t uniform on the model's own sigma table
(``model_sampling.sigmas``, 1000 entries with SD3's shift), x_sigma = (1 - sigma) x0 + sigma eps, the velocity
u = (x_sigma - apply_model(x_sigma, sigma)) / sigma from ComfyUI's ``apply_model`` (which maps sigma to the
family's timestep, sigma x 1000) against eps - x0; the class context and pooled vector replaced by the empty
ones with probability ``cfg_dropout`` (true CFG at sampling, SD3-style). Cached as flow-teacher-<name>-<hash>.pt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from bench.product.data import LatentCodec
from bench.product.env import digest
from bench.product.sampling import Samplers

from .data import FLOW_CHANNELS, FLOW_CODEC, PooledPrompts, make_pooled_prompts
from .sampling import FLOW_SAMPLERS


@dataclass(frozen=True)
class FlowTeacherSpec:
    name: str
    depth: int = 2  # MMDiT: width 64 x depth, heads = depth
    context_dim: int = 32  # the class tokens' width (context_embedder's input)
    pooled_dim: int = 32  # the pooled vector's width (adm_in_channels)
    qk_norm: str | None = "rms"  # SD3.5's
    iterations: int = 2000
    batch: int = 64
    lr: float = 1e-3
    cfg_dropout: float = 0.15
    ema: float = 0.995
    seed: int = 0

    codec: ClassVar[LatentCodec] = FLOW_CODEC
    samplers: ClassVar[Samplers] = FLOW_SAMPLERS
    file_prefix: ClassVar[str] = "flow-"

    def key(self) -> str:
        return digest(asdict(self))

    def unet_config(self) -> dict:
        """SD3's MMDiT config at this size: 16-channel latents, patch 2, a 4x4 patch grid (8x8 latents)."""
        return {
            "in_channels": FLOW_CHANNELS,
            "out_channels": FLOW_CHANNELS,
            "patch_size": 2,
            "depth": self.depth,
            "input_size": None,
            "adm_in_channels": self.pooled_dim,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": self.context_dim, "out_features": 64 * self.depth},
            },
            "pos_embed_max_size": 4,
            "num_patches": 16,
            "qk_norm": self.qk_norm,
            "pos_embed_scaling_factor": None,
        }

    def describe(self) -> str:
        return (
            f"SD3 MMDiT depth {self.depth} (width {64 * self.depth}, {self.depth} heads), qk_norm {self.qk_norm}, "
            f"context {self.context_dim}, pooled {self.pooled_dim}; {self.iterations} it x batch {self.batch}, AdamW "
            f"lr {self.lr:g} cosine, EMA {self.ema}, CFG dropout {self.cfg_dropout:.0%}, seed {self.seed}"
        )

    def build_patcher(self) -> Any:
        return build_patcher(self)

    def make_prompts(self) -> PooledPrompts:
        return make_pooled_prompts(self.context_dim, self.pooled_dim)

    def loss(self, patcher: Any, x0: torch.Tensor, labels: torch.Tensor, prompts: PooledPrompts, gen: Any) -> Any:
        """Flow matching through ComfyUI's apply_model: ||u_theta(x_sigma, sigma) - (eps - x0)||^2, CFG dropout."""
        table = patcher.model.model_sampling.sigmas.detach().float()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(table), (len(x0),), generator=gen)
        sigma = table[t]
        drop = (torch.rand(len(x0), generator=gen) < self.cfg_dropout).view(-1, 1)
        context = torch.where(drop.view(-1, 1, 1), prompts.empty, prompts.context(labels))
        pooled = torch.where(drop, prompts.empty_pooled, prompts.pooled_of(labels))
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        denoised = patcher.model.apply_model(x_t, sigma, c_crossattn=context, y=pooled)
        return ((x_t - denoised) / s - (noise - x0)).pow(2).mean()


def init_mmdit(net: torch.nn.Module, seed: int) -> None:
    """Fill what ComfyUI leaves uninitialised (module docstring)."""
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, module in net.named_modules():
            for kind in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm):
                if isinstance(module, kind):
                    kind.reset_parameters(module)  # ComfyUI's ops override it with a no-op
                    break
            if type(module).__name__ == "RMSNorm" and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if name.endswith("adaLN_modulation") or name == "final_layer.linear":
                for p in module.parameters():
                    p.zero_()
        grid = int(net.pos_embed.shape[1] ** 0.5)
        table = get_2d_sincos_pos_embed(net.pos_embed.shape[2], grid)
        net.pos_embed.copy_(torch.from_numpy(table).float().unsqueeze(0))


def build_patcher(spec: FlowTeacherSpec) -> Any:
    """The model (ComfyUI's SD3 config class, fp32) in a ModelPatcher on ComfyUI's device."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD3(dict(spec.unet_config(), dtype=torch.float32))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    init_mmdit(base.diffusion_model, spec.seed)
    base.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)
