"""Property tests of tcd_core.sample_tcd over random schedules, gammas, orders and dtypes."""

from __future__ import annotations

import pytest
import torch
from comfyui_tcd_sampling import tcd_core
from comfyui_tcd_sampling.tcd_core import GammaSchedule, LatentForm, NoiseSpace
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

SPACES = {"ve": tcd_core.SD_SPACE, "flow": tcd_core.flow_space()}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


class CountingDenoiser:
    """The exact denoiser of N(0, 1) data in the space's form, counting its calls."""

    def __init__(self, form: LatentForm) -> None:
        self.form = form
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor, **extra: object) -> Tensor:
        self.calls += 1
        assert sigma.shape == (x.shape[0],)
        s = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        alpha = torch.ones_like(s) if self.form is LatentForm.VE else 1 - s
        return (x.float() * alpha / (alpha**2 + s**2)).to(x.dtype)


@st.composite
def schedules(draw: st.DrawFn, space: str) -> list[float]:
    top = 200.0 if space == "ve" else 1.0
    values = draw(st.lists(st.floats(1e-3, top), min_size=1, max_size=12))
    sigmas = torch.tensor(values, dtype=torch.float32).unique().flip(0).tolist()  # distinct in float32
    if draw(st.booleans()) or len(sigmas) == 1:
        sigmas.append(0.0)  # a full run; without it, a first half of split sigmas
    return sigmas


@st.composite
def gamma_schedules(draw: st.DrawFn, steps: int) -> GammaSchedule:
    unit = st.floats(0.0, 1.0)
    kind = draw(st.sampled_from(["constant", "linear", "explicit"]))
    if kind == "constant":
        return GammaSchedule.constant(draw(unit))
    if kind == "linear":
        return GammaSchedule.linear(draw(unit), draw(unit))
    return GammaSchedule.explicit(draw(st.lists(unit, min_size=steps, max_size=steps)))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), space_name=st.sampled_from(sorted(SPACES)), order=st.sampled_from([1, 2]))
def test_any_descending_schedule_is_finite_and_keeps_shape(data: st.DataObject, space_name: str, order: int) -> None:
    space: NoiseSpace = SPACES[space_name]
    sigma_list = data.draw(schedules(space_name), label="sigmas")
    steps = len(sigma_list) - 1
    gamma = data.draw(gamma_schedules(steps), label="gamma")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    sigmas = torch.tensor(sigma_list, dtype=torch.float32)
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31), label="seed"))
    x = (torch.randn(2, 4, 6, 6, generator=generator) * (1 + sigmas[0] ** 2).sqrt()).to(dtype)
    model = CountingDenoiser(space.form)

    out = tcd_core.sample_tcd(
        model,
        x,
        sigmas,
        noise_sampler=lambda s, sn: torch.randn(x.shape, generator=generator).to(dtype),
        gamma=gamma,
        order=order,
        space=space,
        disable=True,
    )

    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    plan = tcd_core.plan_steps(sigmas, gamma, space, order)
    for step in plan:
        assert 0.0 <= step.sigma_s <= (step.sigma_next if step.sigma_next > 0 else step.sigma)
    if order == 1:
        assert model.calls == steps
    else:
        assert model.calls == steps + sum(step.sigma_s > 0 for step in plan)
        if space.form is LatentForm.VE:
            assert model.calls == 2 * steps
        elif all(g < 1 for g in gamma.per_step(steps)):
            assert 2 * steps - 1 <= model.calls <= 2 * steps


def test_off_grid_karras_schedule_never_goes_negative_under_the_root() -> None:
    """sigma(s) can round above sigma_next off the TCD grid; the plan clamps it (public ports gave NaN)."""
    rho, sigma_min, sigma_max, n = 7.0, 0.0292, 14.6146, 6
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    karras = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    sigmas = torch.cat([karras, karras.new_zeros(1)]).float()
    for gamma in [0.0, 0.01, 0.3, 0.99, 1.0]:
        for step in tcd_core.plan_steps(sigmas, GammaSchedule.constant(gamma), tcd_core.SD_SPACE):
            if step.sigma_next > 0:
                assert step.sigma_s <= step.sigma_next
                assert step.noise_scale is None or step.noise_scale >= 0


def test_gamma_is_read_from_the_sigmas_given() -> None:
    """Splitting a schedule gives each half the gammas of its own steps, not of a schedule made elsewhere."""
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])
    ramp = GammaSchedule.linear(0.8, 0.2)
    whole = [step.gamma for step in tcd_core.plan_steps(sigmas, ramp, tcd_core.SD_SPACE)]
    first_half = [step.gamma for step in tcd_core.plan_steps(sigmas[:3], ramp, tcd_core.SD_SPACE)]
    assert whole == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert first_half == pytest.approx([0.8, 0.2])


def test_split_sigmas_continue_like_one_run() -> None:
    """gamma = 0 is deterministic, so sampling two halves back to back equals one run."""
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 14.6
    model = CountingDenoiser(LatentForm.VE)
    whole = tcd_core.sample_tcd(model, x, sigmas, gamma=0.0, disable=True)
    half = tcd_core.sample_tcd(model, x, sigmas[:3], gamma=0.0, disable=True)
    rest = tcd_core.sample_tcd(model, half, sigmas[2:], gamma=0.0, disable=True)
    torch.testing.assert_close(rest, whole, rtol=1e-5, atol=1e-5)


def test_callback_reports_each_step() -> None:
    sigmas = torch.tensor([14.6, 3.0, 1.0, 0.0])
    x = torch.randn(1, 4, 8, 8) * 14.6
    seen: list[dict] = []
    tcd_core.sample_tcd(CountingDenoiser(LatentForm.VE), x, sigmas, callback=seen.append, disable=True)
    assert [info["i"] for info in seen] == [0, 1, 2]
    assert [float(info["sigma"]) for info in seen] == pytest.approx([14.6, 3.0, 1.0])
    assert all({"x", "denoised", "sigma_hat"} <= info.keys() for info in seen)
    assert seen[0]["x"] is x


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        (torch.tensor([]), "at least 2"),
        (torch.tensor([1.0]), "at least 2"),
        (torch.tensor([1.0, 2.0, 0.0]), "strictly descending"),
        (torch.tensor([1.0, 1.0, 0.0]), "strictly descending"),
        (torch.tensor([1.0, float("nan"), 0.0]), "finite"),
        (torch.tensor([[1.0, 0.0]]), "1-D"),
    ],
)
def test_bad_sigmas_are_refused_before_any_model_call(sigmas: Tensor, message: str) -> None:
    model = CountingDenoiser(LatentForm.VE)
    with pytest.raises(ValueError, match=message):
        tcd_core.sample_tcd(model, torch.zeros(1, 4, 8, 8), sigmas, disable=True)
    assert model.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"gamma": -0.1}, r"gamma must be in \[0, 1\]"),
        ({"gamma": GammaSchedule.explicit([0.3, 0.3])}, "has 2 values but the sigmas give 3 steps"),
        ({"order": 3}, "order must be 1 or 2"),
    ],
)
def test_bad_options_are_refused_before_any_model_call(kwargs: dict, message: str) -> None:
    model = CountingDenoiser(LatentForm.VE)
    with pytest.raises(ValueError, match=message):
        tcd_core.sample_tcd(model, torch.zeros(1, 4, 8, 8), torch.tensor([14.6, 3.0, 1.0, 0.0]), **kwargs)
    assert model.calls == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_latent_with_nan_or_inf_is_refused_before_any_model_call(bad: float) -> None:
    model = CountingDenoiser(LatentForm.VE)
    x = torch.zeros(1, 4, 8, 8)
    x[0, 1, 2, 3] = bad
    with pytest.raises(tcd_core.TCDInputError, match="NaN or infinite"):
        tcd_core.sample_tcd(model, x, torch.tensor([14.6, 3.0, 1.0, 0.0]), disable=True)
    assert model.calls == 0


def test_huge_but_finite_latent_is_not_mistaken_for_nan() -> None:
    model = CountingDenoiser(LatentForm.VE)
    x = torch.full((1, 4, 8, 8), 3e38)
    tcd_core.sample_tcd(model, x, torch.tensor([14.6, 0.0]), disable=True)
    assert model.calls == 1


def test_gamma_list_parsing() -> None:
    assert tcd_core.parse_gamma_list("0.5, 0.4;0.3 0.2") == (0.5, 0.4, 0.3, 0.2)
    for bad, message in [("", "empty"), ("0.3, x", "entry 2 is 'x'"), ("0.3, 1.2", r"entry 2 must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            tcd_core.parse_gamma_list(bad)
