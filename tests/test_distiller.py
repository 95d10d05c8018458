"""The distillation engine (tcd_core.distiller.Distiller) alone, on a tiny pure-torch model: one step equals the
loss of Eq. 29 weighted and summed by hand, the EMA target follows, and a non-finite loss or gradient stops
training before the optimizer steps, leaving the weights of the last finite step."""

from __future__ import annotations

import pytest
import torch
from comfyui_tcd_sampling.tcd_core.distill import (
    DistillConfig,
    distill_loss,
    draw_training_points,
    scaled_linear_alphas_cumprod,
)
from comfyui_tcd_sampling.tcd_core.distiller import DistillBatch, Distiller, StepHooks, TrainingDiverged
from torch import Tensor, nn

AC = scaled_linear_alphas_cumprod()


class Net(nn.Module):
    """eps(x, t, c) = (W0 + D) x + c: W0 frozen (the teacher), D trainable (the student's adapter)."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.base = nn.Parameter(torch.randn(dim, dim, generator=gen) * 0.1, requires_grad=False)
        self.delta = nn.Parameter(torch.randn(dim, dim, generator=gen) * 0.01)
        self.on = True
        self.poison_at: int | None = None
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.calls += 1
        weight = self.base + self.delta if self.on else self.base
        out = x @ weight.T + c
        if self.poison_at is not None and self.calls >= self.poison_at:
            out = out * float("nan")
        return out

    def teacher(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.on = False
        try:
            return self(x, t, c)
        finally:
            self.on = True


def batch(seed: int, n: int = 4, share: float = 1.0, config: DistillConfig | None = None) -> DistillBatch:
    gen = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(n, 6, generator=gen), torch.randn(n, 6, generator=gen)
    points = draw_training_points(config or DistillConfig(), n, gen)
    return DistillBatch(x0, torch.full((n, 6), 0.3), torch.zeros(n, 6), noise=noise, points=points, share=share)


def engine(net: Net, config: DistillConfig, accumulation: int = 1, lr: float = 0.1, **hooks) -> Distiller:
    optimizer = torch.optim.SGD([net.delta], lr=lr)
    return Distiller(config, AC, net, net.teacher, [net.delta], optimizer, accumulation=accumulation,
                     generator=torch.Generator().manual_seed(1), hooks=StepHooks(**hooks))  # fmt: skip


def test_a_step_is_the_weighted_mean_of_the_groups_losses_over_the_micro_batches() -> None:
    config = DistillConfig(ema_decay=0.0)
    micro = [[batch(1, 3, 0.75), batch(2, 1, 0.25)], [batch(3, 4)]]
    net = Net()
    start = net.delta.detach().clone()
    loss = engine(net, config, accumulation=2).step(iter(micro))

    twin = Net()
    total = 0.0
    for groups in micro:
        for b in groups:
            part = distill_loss(config, AC, b.x0, b.noise, b.points, twin, twin.teacher, twin, b.cond, b.uncond)
            (part * b.share / 2).backward()
            total += part.item() * b.share / 2
    assert loss == pytest.approx(total, rel=1e-12)
    torch.testing.assert_close(net.delta.detach(), start - 0.1 * twin.delta.grad, rtol=1e-6, atol=1e-9)
    assert net.delta.grad is None


def test_draws_what_a_batch_does_not_bring_noise_then_points_from_its_generator() -> None:
    config = DistillConfig()
    given = batch(4)
    net = Net()
    distiller = engine(net, config)
    bare = DistillBatch(given.x0, given.cond, given.uncond)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(given.x0.shape, generator=gen)
    points = draw_training_points(config, given.x0.shape[0], gen)
    expected = distill_loss(config, AC, given.x0, noise, points, net, net.teacher, distiller.target, given.cond,
                            given.uncond)  # fmt: skip
    assert distiller.loss(bare).item() == expected.item()


def test_the_ema_target_follows_the_trained_weights() -> None:
    net = Net()
    distiller = engine(net, DistillConfig(ema_decay=0.9))
    start = net.delta.detach().clone()
    distiller.step([[batch(5)]])
    torch.testing.assert_close(distiller.ema.shadow[0], 0.9 * start + 0.1 * net.delta.detach())
    assert distiller.steps_taken == 1


def test_a_non_finite_loss_stops_before_the_step_and_keeps_the_last_finite_weights() -> None:
    net = Net()
    distiller = engine(net, DistillConfig(ema_decay=0.9))
    distiller.step([[batch(6)]])
    after_one = net.delta.detach().clone()
    shadow = distiller.ema.shadow[0].clone()
    net.poison_at = net.calls + 1
    with pytest.raises(TrainingDiverged, match="diverged at step 2: the loss is not finite") as error:
        distiller.step([[batch(7)]])
    assert error.value.step == 2 and error.value.lr == 0.1
    assert torch.equal(net.delta.detach(), after_one) and torch.equal(distiller.ema.shadow[0], shadow)
    assert net.delta.grad is None and distiller.steps_taken == 1


def test_a_non_finite_gradient_stops_too_unless_a_loss_scaler_handles_it() -> None:
    net = Net()
    net.delta.register_hook(lambda grad: grad * float("inf"))
    start = net.delta.detach().clone()
    with pytest.raises(TrainingDiverged, match="at step 1: a gradient is not finite"):
        engine(net, DistillConfig()).step([[batch(8)]])
    assert torch.equal(net.delta.detach(), start) and net.delta.grad is None
    scaled = engine(net, DistillConfig(), scaled_gradients=True)  # fp16: the scaler skips such steps itself
    scaled.step([[batch(8)]])
    assert scaled.steps_taken == 1
