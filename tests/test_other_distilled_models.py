"""The README's "Other distilled models" rows: the TCD Scheduler settings of each row give exactly the sigmas of
that family's own recommended diffusers scheduler (same timesteps, same noise levels), inside a real ComfyUI."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, TCDScheduler

from devkit.host import REPO_ROOT
from devkit.inprocess import Comfy, load_comfy, run_node
from devkit.model_files import TINY_SD15_UNET_CONFIG, default_models_dir

SCHEDULER = "TrajectoryConsistencyScheduler"
TOLERANCE = 1e-6
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}  # SD1.5 / SDXL


@dataclass(frozen=True)
class Row:
    family: str
    steps: int  # TCD Scheduler steps (ignored when timesteps is given)
    timesteps: str  # TCD Scheduler timesteps
    reference: str  # the family's recommended diffusers scheduler (its model card / demo)
    reference_steps: int | None = None  # set_timesteps(num_inference_steps)
    reference_timesteps: tuple[int, ...] | None = None  # set_timesteps(timesteps=...)


TRAILING = {2: "999, 499", 4: "999, 749, 499, 249", 8: "999, 874, 749, 624, 499, 374, 249, 124"}
"""diffusers' "trailing" spacing (DDIM, Euler): round(arange(1000, 0, -1000 / n)) - 1. Not TCD's 50-point grid."""

ROWS = [
    Row("Hyper-SD 1-step unified LoRA", 1, "", "TCDScheduler", reference_steps=1),
    Row("Hyper-SDXL 1-step UNet", 1, "800", "LCMScheduler", reference_timesteps=(800,)),
    *[Row(f"Hyper-SD {n}-step LoRA", n, TRAILING[n], "DDIMScheduler trailing", reference_steps=n) for n in (2, 4, 8)],
    *[Row(f"PCM {n}-phase LoRA", n, "", "TCDScheduler trailing", reference_steps=n) for n in (2, 4, 8, 16)],
    Row("DMD2 1-step", 1, "399", "LCMScheduler", reference_timesteps=(399,)),
    Row("DMD2 4-step", 4, "999, 749, 499, 249", "LCMScheduler", reference_timesteps=(999, 749, 499, 249)),
    *[
        Row(f"SDXL-Lightning {n}-step", n, TRAILING[n], "EulerDiscreteScheduler trailing", reference_steps=n)
        for n in (2, 4, 8)
    ],
    Row("LCM-LoRA 4-step", 4, "", "LCMScheduler", reference_steps=4),
    Row("AnimateDiff + TCD SD1.5 LoRA", 5, "", "TCDScheduler", reference_steps=5),
]


def reference_sigmas(row: Row) -> tuple[list[int], torch.Tensor]:
    """The family's own scheduler: its timesteps and their sigmas sqrt((1 - alpha_bar) / alpha_bar), final 0."""
    kwargs: dict[str, Any] = {}
    if row.reference_timesteps is not None:
        kwargs["timesteps"] = list(row.reference_timesteps)
    else:
        kwargs["num_inference_steps"] = row.reference_steps
    if row.reference == "TCDScheduler":
        scheduler = TCDScheduler(**SD_BETAS)
    elif row.reference == "TCDScheduler trailing":  # PCM's demo sets it; TCDScheduler's grid ignores it
        scheduler = TCDScheduler(**SD_BETAS, timestep_spacing="trailing")
    elif row.reference == "LCMScheduler":
        scheduler = LCMScheduler(**SD_BETAS)
    elif row.reference == "DDIMScheduler trailing":
        scheduler = DDIMScheduler(**SD_BETAS, timestep_spacing="trailing", set_alpha_to_one=False, steps_offset=1)
    else:
        assert row.reference == "EulerDiscreteScheduler trailing"
        scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing", steps_offset=1)
    scheduler.set_timesteps(**kwargs)
    timesteps = [int(t) for t in scheduler.timesteps.tolist()]
    if isinstance(scheduler, EulerDiscreteScheduler):
        return timesteps, scheduler.sigmas.double()  # Euler works in sigmas itself (with its final 0)
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    return timesteps, torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1, dtype=torch.float64)])


@pytest.fixture(scope="module")
def comfy(test_models: dict) -> Comfy:
    """ComfyUI with the pack (loaded once per process)."""
    return load_comfy(default_models_dir())


@pytest.fixture(scope="module")
def sd15(comfy: Comfy) -> SimpleNamespace:
    """ComfyUI's SD1.5 model class (the scaled-linear schedule of SD1.5 and SDXL) with a tiny UNet, in a real
    ModelPatcher: the TCD Scheduler reads only its model_sampling."""
    from comfy import model_patcher, supported_models  # (`import comfy.x` would rebind the fixture's name)

    cpu = torch.device("cpu")
    model = supported_models.SD15(dict(TINY_SD15_UNET_CONFIG, dtype=torch.float32)).get_model({}, device=cpu)
    return SimpleNamespace(model=model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu))


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.family)
def test_row_gives_the_familys_own_sigmas(comfy: Comfy, sd15: SimpleNamespace, row: Row) -> None:
    node = comfy.node(SCHEDULER)
    assert node.validate_inputs(timesteps=row.timesteps) is True
    ours = run_node(node, model=sd15.model, steps=row.steps, original_inference_steps=50, strength=1.0,
                    timesteps=row.timesteps)[0]  # fmt: skip
    timesteps, theirs = reference_sigmas(row)
    model_sampling = sd15.model.get_model_object("model_sampling")
    assert model_sampling.timestep(ours[:-1]).tolist() == timesteps
    assert ours.shape == theirs.shape
    assert ((ours.double() - theirs).abs() / theirs.clamp(min=1)).max() <= TOLERANCE


def test_readme_rows_state_these_settings() -> None:
    """Each family and its timesteps text appear in the README section the rows back."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Other distilled models", 1)[1].split("\n## ", 1)[0]
    for family in ("Hyper-SD", "PCM", "DMD2", "SDXL-Lightning", "LCM-LoRA", "AnimateDiff"):
        assert family in section
    for row in ROWS:
        if row.timesteps:
            assert f"`{row.timesteps}`" in section, row.family
