"""Scores of a sample set: Frechet distance in a digit classifier's features (FID analogue), class accuracy.

The classifier (an MLP, as bench/distill's) is trained on the training split's 8x8 digits with mild input
noise, cached; its penultimate layer (64 features) is the Frechet feature space.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from .data import Digits
from .env import cache_dir, digest


class Classifier(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 256, features: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_classifier(digits: Digits, iterations: int = 3000, seed: int = 0) -> Classifier:
    """The digit classifier on the training split (cached)."""
    x, y = digits.train, digits.train_labels
    path = cache_dir() / f"classifier-{digest([float(x.sum()), len(x), iterations, seed])}.pt"
    model = Classifier()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        with torch.inference_mode(False):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
            for _ in range(iterations):
                idx = torch.randint(0, len(x), (128,), generator=gen)
                xb = x[idx] + 0.05 * torch.randn(128, x.shape[1], generator=gen)
                loss = nn.functional.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        torch.save(model.state_dict(), path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def frechet_distance(fa: Tensor, fb: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the two feature sets."""
    a, b = fa.double().numpy(), fb.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root.real))


class Scorer:
    """FD to the teacher's 50-step reference and to held-out data, and class accuracy, of decoded digits."""

    def __init__(self, digits: Digits, classifier: Classifier, reference: Tensor) -> None:
        self.classifier = classifier
        with torch.no_grad():
            self.ref_features = classifier.features(reference)
            self.test_features = classifier.features(digits.test)

    def __call__(self, x: Tensor, labels: Tensor) -> dict[str, float]:
        with torch.no_grad():
            features = self.classifier.features(x)
            predicted = self.classifier.head(features).argmax(1)
        return {
            "fd_ref": frechet_distance(features, self.ref_features),
            "fd_test": frechet_distance(features, self.test_features),
            "acc": float((predicted == labels).float().mean()),
            "mean": float(x.mean()),
        }
