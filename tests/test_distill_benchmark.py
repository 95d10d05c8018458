"""Fast checks of the distillation benchmark (bench/distill); the full run is ``python -m bench.distill``.

What runs here: the benchmark's measuring stick (sliced Wasserstein and mode coverage on the
8-Gaussian ring against known answers), its precondition, which must refuse a weak teacher before
any distillation, and the benchmark in small: the ring teacher, one seed, 500 iterations per student,
asserting the orderings that held on every seed tried (seeds 0-3; BENCHMARKS.md has the full run).
"""

from __future__ import annotations

import torch

from bench.distill.__main__ import PRECONDITION, check_teacher
from bench.distill.data import RING_MODES, ring_centres, sample_ring
from bench.distill.metrics import mode_coverage, sliced_wasserstein
from bench.distill.nets import EpsConv, LoRAConv2d, adapters_off, add_lora
from bench.distill.report import Report
from bench.distill.run import Bench, Cell
from bench.distill.setups import iid_class_subsets, ring_setup
from bench.distill.teacher import TeacherSpec, min_snr_weights


def test_sliced_wasserstein_knows_a_shift() -> None:
    """SW1 of a set against itself is 0; against the set shifted by d it is E|u . d| over unit u (2-D: 2|d|/pi)."""
    x = sample_ring(4000, torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, x) == 0.0
    shift = torch.tensor([0.3, 0.0])
    swd = sliced_wasserstein(x, x + shift, directions=2048)
    assert abs(swd - 2 * 0.3 / torch.pi) < 0.01, swd


def test_mode_coverage_sees_a_collapse() -> None:
    gen = torch.Generator().manual_seed(1)
    covered, near = mode_coverage(sample_ring(4000, gen))
    assert covered == 1.0 and near > 0.97
    one_mode = ring_centres()[0] + 0.01 * torch.randn(4000, 2, generator=gen)
    covered, near = mode_coverage(one_mode)
    assert covered == 1.0 / RING_MODES and near == 1.0


def test_weak_teacher_is_refused(tmp_path) -> None:
    """A teacher trained for 150 iterations fails the precondition, and the benchmark says why."""
    spec = TeacherSpec("ring-weak", dim=2, hidden=32, depth=1, iterations=150, batch=256, lr=3e-3)
    bench = Bench(ring_setup(teacher_spec=spec), use_cache=False, log=lambda _: None)
    ratio = bench.precondition()["swd"]
    assert ratio > PRECONDITION
    message = check_teacher(bench, Report(tmp_path, [0], 0))
    assert message is not None and "too weak" in message and f"{ratio:.2f}x" in message
    # over several seeds the verdict takes the mean of the seeds' distances (one draw's distance is noisy)
    both = bench.precondition((0, 1))["swd"]
    assert abs(both - (ratio + bench.precondition((1,))["swd"]) / 2) < 1e-12


def test_fast_benchmark_orders_tcd_lcm_and_the_teacher_as_the_full_one_does() -> None:
    """Ring teacher (trained here once, about a minute, or read from the benchmark's cache), students
    distilled here with stop-grad, L2, s uniform, lr 3e-4, seed 0, 500 iterations each. Stop-grad, not the node's
    EMA 0.95: at 500 iterations the EMA target still lags, and neither method's ordering is settled
    (seeds 0-3: TCD/LCM 0.8-1.3 at 8 steps); the full benchmark runs 2000.

    Seeds 0-3 at this budget gave (SWD): TCD at 8 steps 0.038-0.050 against LCM's 0.049-0.076 and the
    teacher's DDIM 0.093-0.099; TCD at 4 steps 0.035-0.070 against the teacher's 0.20-0.21; LCM at 1 step
    0.066-0.133 against TCD's 0.25-0.29 (TCD with s uniform rarely trains the jump to 0 from large t)."""
    bench = Bench(ring_setup(n_eval=2000), use_cache=False, log=lambda _: None)  # students trained here
    assert bench.precondition()["swd"] <= PRECONDITION
    tcd = Cell(method="tcd", ema_decay=0.0, loss="l2", s_rule="uniform", iterations=500, batch=256, lr=3e-4, seed=0)
    lcm = Cell(method="lcm", ema_decay=0.0, loss="l2", iterations=500, batch=256, lr=3e-4, seed=0)

    def swd(cell: Cell | None, sampler: str, steps: int) -> float:
        return bench.score(cell, sampler, steps, 0)["swd"]

    # distillation works: a few TCD steps beat as many DDIM steps of the teacher
    assert swd(tcd, "sss0.0", 4) < 0.5 * swd(None, "sss0.0", 4)
    assert swd(tcd, "sss0.0", 8) < 0.75 * swd(None, "sss0.0", 8)
    # the paper's claim at 8 steps: the TCD student with SSS below the LCM student with LCM sampling
    assert swd(tcd, "sss0.0", 8) < swd(lcm, "lcm", 8)
    # and where the paper's s rule is weak: at 1 step LCM wins
    assert swd(lcm, "lcm", 1) < swd(tcd, "sss0.0", 1)


def test_teacher_cache_keys_of_mlp_teachers_did_not_move_when_conv_teachers_came() -> None:
    """The MLP teachers' cache keys are those of the benchmark's recorded runs (arch left out of an MLP's key)."""
    ring = TeacherSpec("ring", dim=2, hidden=128, depth=3, iterations=8000, batch=512, lr=2e-3)
    assert ring.key() == "374aa1d18ff9"
    conv = TeacherSpec("digits", dim=64, hidden=32, depth=4, iterations=100, batch=8, lr=1e-3, arch="conv")
    assert conv.key() != TeacherSpec(**{**conv.__dict__, "arch": "mlp"}).key()
    assert isinstance(conv.build(), EpsConv) and "conv" in conv.describe()


def test_conv_lora_starts_as_the_base_and_trains_only_the_adapters() -> None:
    """LoRA on the conv teacher (LoCon form): the wrapped net computes the base exactly until trained,
    gradients reach only the adapters, and adapters_off gives the base (the teacher) after training."""
    torch.manual_seed(0)
    net = EpsConv(64, channels=16, depth=2)
    x, t = torch.randn(4, 64), torch.tensor([0, 250, 600, 999])
    before = net(x, t).detach()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    params = add_lora(net, rank=4, generator_seed=0)
    assert any(isinstance(m, LoRAConv2d) for m in net.modules())
    assert torch.equal(net(x, t), before)
    opt = torch.optim.SGD(params, lr=0.1)
    net(x, t).pow(2).mean().backward()
    opt.step()
    assert not torch.allclose(net(x, t), before)
    with adapters_off(net):
        assert torch.equal(net(x, t), before)
    trained_base = {k.replace(".base.", "."): v for k, v in net.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(trained_base[k], v) for k, v in base.items())


def test_min_snr_weights_leave_the_noisy_steps_and_damp_the_clean_ones() -> None:
    """Weights are 1 where SNR <= gamma (large t) and gamma / SNR below: at t = 0, SNR is 1/0.00085 - 1."""
    t = torch.tensor([0, 100, 400, 700, 999])
    w = min_snr_weights(t, 1.0)
    assert w[-1] == 1.0 and w[-2] == 1.0
    assert torch.isclose(w[0], torch.tensor(0.00085 / (1 - 0.00085)), rtol=1e-4)
    assert bool((w[1:] >= w[:-1]).all())


def test_digits_floor_draws_class_counts_as_an_iid_sample_does() -> None:
    """The digits floor's subsets of a stratified split: no index twice, the asked size, and class counts
    that vary from draw to draw with the multinomial's variance n p (1 - p), not the stratified split's 0."""
    labels = torch.arange(10).repeat_interleave(54)  # a stratified held-out split: 54 of each digit
    shares = torch.full((10,), 0.1, dtype=torch.float64)
    subsets = iid_class_subsets(labels, shares, 400, 300, torch.Generator().manual_seed(0))
    assert all(len(ix) == 400 and len(set(ix.tolist())) == 400 for ix in subsets)
    counts = torch.stack([torch.bincount(labels[ix], minlength=10) for ix in subsets]).double()
    assert bool((counts <= 54).all())
    variance = counts.var(dim=0).mean().item()
    # 400 * 0.1 * 0.9 = 36, a little less since a draw asking a class for more than 54 is redrawn
    assert 0.8 * 36.0 < variance < 1.1 * 36.0, variance
