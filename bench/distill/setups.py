"""The two benchmark cases: the data, the teacher's size and training, how samples are scored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .data import load_digits, sample_ring
from .metrics import frechet_distance, mode_coverage, sliced_wasserstein
from .teacher import TeacherSpec, train_classifier, train_teacher

Metrics = dict[str, float]


@dataclass
class Setup:
    """One case: a teacher, a batch source for training, and ``score(samples) -> metrics``."""

    name: str
    dim: int
    primary: str  # the metric the targets are stated in
    teacher_spec: TeacherSpec
    draw_batch: Callable[[int, torch.Generator], Tensor]
    n_eval: int  # samples per evaluation
    score: Callable[[Tensor], Metrics]
    floor: Metrics  # the data-vs-data distance of the same sample size
    teacher: nn.Module | None = None
    teacher_cached: bool = False
    classifier_accuracy: float | None = None

    def load_teacher(self) -> nn.Module:
        if self.teacher is None:
            self.teacher, self.teacher_cached = train_teacher(self.teacher_spec, self.draw_batch)
        return self.teacher


RING_TEACHER = TeacherSpec("ring", dim=2, hidden=128, depth=3, iterations=8000, batch=512, lr=2e-3)
# Digits (FD of DDIM-50 against the floor): hidden 192 x 2, 4k iterations 4.62x; 256 x 3, 10k 3.19x;
# 512 x 3, 10k 2.08x; 512 x 4, 20k 1.69x (40k at batch 128 1.73x); a conv net, 32 channels x 4 blocks,
# 20k 2.64x; 512 x 4, 20k with min-SNR-5 weighting 1.62x, with min-SNR-1 1.41x (kept): the plain loss
# spends the net on memorising the training digits at low noise (held-out eps loss 8x the training one
# at t = 20), and the samples came out low in contrast.
DIGITS_TEACHER = TeacherSpec("digits", dim=64, hidden=512, depth=4, iterations=20000, batch=256, lr=1e-3, snr_gamma=1.0)


def ring_setup(n_eval: int = 4000, teacher_spec: TeacherSpec = RING_TEACHER, floor_draws: int = 5) -> Setup:
    """8-Gaussian ring: SWD against a fixed reference draw, mode coverage.

    Floor: the mean score of ``floor_draws`` further independent draws of ``n_eval`` data points
    (the expected data-vs-data distance at the evaluation's sample size, not one noisy draw).
    """
    gen = torch.Generator().manual_seed(20261202)
    reference = sample_ring(n_eval, gen)

    def score(x: Tensor) -> Metrics:
        covered, near = mode_coverage(x)
        return {"swd": sliced_wasserstein(x, reference), "modes": covered, "in_3std": near}

    draws = [score(sample_ring(n_eval, gen)) for _ in range(floor_draws)]
    floor = {key: sum(d[key] for d in draws) / floor_draws for key in draws[0]}
    return Setup("ring", 2, "swd", teacher_spec, sample_ring, n_eval, score, floor)


def digits_setup(chunks: int = 3, teacher_spec: TeacherSpec = DIGITS_TEACHER) -> Setup:
    """8x8 digits: FD in classifier features and SWD in pixel space, both against the training split.

    Samples are scored in chunks the size of the held-out split and averaged, so every distance
    has the same sample-size bias as the floor (held-out split against training split).
    """
    digits = load_digits()
    classifier = train_classifier(digits.train, digits.train_labels)
    train_features = classifier.features(digits.train)
    n_chunk = len(digits.test)

    def score_one(x: Tensor) -> Metrics:
        return {
            "fd": frechet_distance(classifier.features(x), train_features),
            "swd": sliced_wasserstein(x, digits.train),
        }

    def score(x: Tensor) -> Metrics:
        parts = [score_one(part) for part in x.split(n_chunk)]
        return {key: sum(p[key] for p in parts) / len(parts) for key in parts[0]}

    def draw(n: int, gen: torch.Generator) -> Tensor:
        return digits.train[torch.randint(0, len(digits.train), (n,), generator=gen)]

    accuracy = float((classifier(digits.test).argmax(1) == digits.test_labels).float().mean())
    floor = score_one(digits.test)
    return Setup("digits", 64, "fd", teacher_spec, draw, n_chunk * chunks, score, floor, classifier_accuracy=accuracy)
