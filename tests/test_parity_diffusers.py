"""tcd_core against diffusers' TCDScheduler, the reference implementation of the paper's sampler."""

from __future__ import annotations

import itertools

import pytest
import torch
from comfyui_tcd_sampling import tcd_core
from diffusers import TCDScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.diffusers_reference import (
    ORIGINAL_STEPS,
    SAMPLING_GRID,
    STEPS,
    STRENGTHS,
    TOLERANCE,
    diffusers_refuses,
    diffusers_timesteps,
    reference_run,
    relative_error,
    tcd_core_run,
)

GRID = list(itertools.product(STEPS, ORIGINAL_STEPS, STRENGTHS))


@pytest.mark.parametrize(("steps", "original_steps", "strength"), GRID)
def test_schedule_matches_reference(steps: int, original_steps: int, strength: float) -> None:
    if diffusers_refuses(steps, original_steps, strength):
        with pytest.raises(ValueError):
            tcd_core.tcd_timesteps(steps, original_steps, strength)
    else:
        assert tcd_core.tcd_timesteps(steps, original_steps, strength) == diffusers_timesteps(
            steps, original_steps, strength
        )


@settings(max_examples=300, deadline=None)
@given(
    steps=st.integers(-2, 120),
    original_steps=st.integers(1, 1000),
    strength=st.floats(0.01, 1.0),
)
def test_schedule_matches_reference_everywhere(steps: int, original_steps: int, strength: float) -> None:
    if steps < 1 or diffusers_refuses(steps, original_steps, strength):
        with pytest.raises(ValueError):
            tcd_core.tcd_timesteps(steps, original_steps, strength)
    else:
        assert tcd_core.tcd_timesteps(steps, original_steps, strength) == diffusers_timesteps(
            steps, original_steps, strength
        )


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, float("nan")])
def test_schedule_refuses_strength_outside_unit_interval(strength: float) -> None:
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        tcd_core.tcd_timesteps(4, strength=strength)


@pytest.mark.parametrize(("steps", "gamma", "prediction", "strength", "original_steps"), SAMPLING_GRID)
def test_sampling_matches_reference(
    steps: int, gamma: float, prediction: str, strength: float, original_steps: int
) -> None:
    """Every intermediate latent and the final one agree with diffusers to 1e-5 (fp32)."""
    timesteps = tcd_core.tcd_timesteps(steps, original_steps, strength)
    seed = steps * 1000 + int(gamma * 10)
    reference = reference_run(timesteps, prediction, gamma, original_steps, strength, seed)
    ours = tcd_core_run(timesteps, prediction, gamma, seed)
    assert len(ours.latents) == len(reference.latents) == steps
    for i, (mine, theirs) in enumerate(zip(ours.latents, reference.latents, strict=True)):
        assert relative_error(mine, theirs) <= TOLERANCE, f"step {i}"
    assert relative_error(ours.final, reference.final) <= TOLERANCE


def test_parity_check_detects_a_wrong_last_step() -> None:
    """Returning the denoised estimate itself on the last step (a common port bug) is caught."""
    timesteps = tcd_core.tcd_timesteps(4)
    gamma, grid = tcd_core.DEFAULT_GAMMA, tcd_core.DEFAULT_ORIGINAL_INFERENCE_STEPS
    reference = reference_run(timesteps, "epsilon", gamma, grid, 1.0, seed=7)
    ours = tcd_core_run(timesteps, "epsilon", gamma, seed=7)
    sigma_min = tcd_core.scaled_linear_sigmas()[0].item()
    unscaled = ours.final * (1 + sigma_min**2) ** 0.5
    assert relative_error(unscaled, reference.final) > 10 * TOLERANCE


def test_custom_timesteps_follow_reference_rules() -> None:
    assert tcd_core.tcd_custom_timesteps([999, 759, 499, 259]) == [999, 759, 499, 259]
    assert tcd_core.tcd_custom_timesteps([999, 759, 499, 259], strength=0.5) == [499, 259]
    for bad, message in [
        ([999, 999, 10], "strictly descending"),
        ([10, 500], "strictly descending"),
        ([1000, 10], r"each timestep must be in 0\.\.999"),
        ([], "at least one"),
        ([999, 2.5], "whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            tcd_core.tcd_custom_timesteps(bad)
    with pytest.raises(ValueError, match="keeps none"):
        tcd_core.tcd_custom_timesteps([999, 500], strength=0.1)


def test_reference_refuses_what_we_refuse_for_custom_lists() -> None:
    scheduler = TCDScheduler()
    with pytest.raises(ValueError):
        scheduler.set_timesteps(timesteps=[999, 999, 10])
    with pytest.raises(ValueError):
        scheduler.set_timesteps(timesteps=[1000, 10])


def test_sigma_table_matches_reference_alphas() -> None:
    alphas_cumprod = TCDScheduler(beta_schedule="scaled_linear").alphas_cumprod.double()
    expected = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    # diffusers accumulates alpha_bar's cumprod in float32 (1.3e-5 relative drift by t = 999);
    # tcd_core works in float64.
    assert torch.allclose(tcd_core.scaled_linear_sigmas(), expected, rtol=3e-5)
