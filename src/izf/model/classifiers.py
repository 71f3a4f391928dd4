"""The two IZF classifiers. Each returns scores over ALL classes (N×C); classes that are not
candidates score -inf, so argmax over a row is the prediction."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from izf.model.optim import adam


def naive_bayes_scores(c_hat: Tensor, semantics: Tensor) -> Tensor:
    """With a uniform prior, argmax_y p(x|y) = argmin_y ‖ĉ(x) − c_y‖²: score = −‖ĉ − c_y‖²."""
    return -torch.cdist(c_hat, semantics).pow(2)


class SoftmaxClassifier(nn.Module):
    """A linear softmax classifier over a subset of the classes, trained with Adam for a fixed
    number of epochs chosen in advance (no selection on test data)."""

    def __init__(self, feature_dim: int, classes: Tensor, num_classes: int, init_std: float | None = None):
        super().__init__()
        self.linear = nn.Linear(feature_dim, len(classes))
        if init_std is not None:  # weights ~ N(0, init_std²), biases 0 (f-CLSWGAN's code); else torch's default
            nn.init.normal_(self.linear.weight, 0.0, init_std)
            nn.init.zeros_(self.linear.bias)
        self.register_buffer("classes", classes.clone())
        self.num_classes = num_classes

    def fit(self, x: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int, weight_decay: float = 0.0,
            balanced: bool = False, on_epoch: Callable[[], None] = lambda: None) -> "SoftmaxClassifier":
        """balanced=True weights each class's examples by the inverse of its count, so every class
        carries the same total weight: the classifier's implicit prior is uniform, as the
        per-class-mean protocol scores it, whatever the mix of real seen images (≈ 14 a class on
        CUB) and generated unseen ones (n_gen a class)."""
        target = torch.searchsorted(self.classes, y)  # class index -> column of self.linear
        counts = torch.bincount(target, minlength=len(self.classes)).to(x.dtype)
        weight = (counts.sum() / (counts.clamp_min(1) * (counts > 0).sum())) if balanced else None
        optimizer = adam(self.linear.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
        for _ in range(epochs):
            for rows in torch.randperm(len(x), device=x.device).split(batch_size):
                loss = nn.functional.cross_entropy(self.linear(x[rows]), target[rows], weight=weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            on_epoch()
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        scores = x.new_full((len(x), self.num_classes), float("-inf"))
        scores[:, self.classes] = torch.log_softmax(self.linear(x), dim=1)
        return scores


class GaussianClassifier(nn.Module):
    """p(x | y) = N(x; μ_y, v_y I): one mean per class and one variance per side (seen, unseen).
    Scores are log-likelihoods per feature dimension (the constant dropped), so a calibrated-stacking
    γ means the same at any feature dimension: with a uniform prior, argmax is the Bayes rule."""

    def __init__(self, means: Tensor, variances: Tensor):
        super().__init__()
        self.register_buffer("means", means.clone())
        self.register_buffer("variances", variances.clone())

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        squared = torch.cdist(x, self.means).pow(2)
        return -squared / (2 * self.variances * x.shape[1]) - 0.5 * torch.log(self.variances)
