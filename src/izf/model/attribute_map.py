"""A smooth map from class attributes to class-mean features, fitted on the seen classes: kernel
ridge regression whose smoothing is chosen by class-wise cross-validation.

Why IZF needs it: the flow's class prototypes f⁻¹([c_y; 0]) are an attribute-to-feature map too, but
one with no smoothness control: the centralising term pulls them onto the seen classes' means, which
a flow of millions of parameters fits almost exactly, and nothing says how it should interpolate
between them. The seen classes can say how well a map carries to classes it was not fitted on, by
holding some of them out; this map is the one that does best under that test, and its held-out
error says how far to trust it. docs/accuracy.md has the measurements behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
WIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # × the median distance between the seen classes' attribute vectors
FOLDS = 5


def _gaussian_kernel(a: Tensor, b: Tensor, width: float) -> Tensor:
    return torch.exp(-torch.cdist(a, b).pow(2) / (2 * width * width))


@dataclass
class AttributeMap:
    """means(attributes) = mean of the training targets + k(attributes, A) α (computed in float64)."""
    attributes: Tensor  # the training classes' attributes (n × d_c)
    weights: Tensor     # α (n × D)
    offset: Tensor      # the mean target (D)
    ridge: float
    width: float        # of the Gaussian kernel, in attribute units
    held_out: Tensor    # each training class's mean as predicted with its fold held out (n × D)

    def __call__(self, attributes: Tensor) -> Tensor:
        kernel = _gaussian_kernel(attributes.double(), self.attributes, self.width)
        return (kernel @ self.weights + self.offset).to(attributes.dtype)


def _fit(attributes: Tensor, targets: Tensor, ridge: float, width: float) -> tuple[Tensor, Tensor]:
    offset = targets.mean(dim=0)
    kernel = _gaussian_kernel(attributes, attributes, width)
    eye = torch.eye(len(kernel), dtype=kernel.dtype, device=kernel.device)
    return torch.linalg.solve(kernel + ridge * eye, targets - offset), offset


def _held_out(attributes: Tensor, targets: Tensor, folds: list[Tensor], ridge: float, width: float) -> Tensor:
    """Each class's prediction by the map fitted on the other folds."""
    predicted = torch.empty_like(targets)
    for held_out in folds:
        kept = torch.ones(len(attributes), dtype=torch.bool, device=attributes.device)
        kept[held_out] = False
        weights, offset = _fit(attributes[kept], targets[kept], ridge, width)
        predicted[held_out] = _gaussian_kernel(attributes[held_out], attributes[kept], width) @ weights + offset
    return predicted


def fit_attribute_map(attributes: Tensor, targets: Tensor, seed: int = 0) -> AttributeMap:
    """Kernel ridge regression from the training classes' attributes (n × d_c, n ≥ 2) to their mean
    features (n × D). The ridge and the Gaussian kernel's width (relative to the median distance
    between attribute vectors) are the pair with the least squared error on held-out classes over
    FOLDS folds of the classes (leave-one-class-out when there are fewer classes than folds)."""
    a, t = attributes.double(), targets.double()
    if len(a) < 2:
        raise ValueError(f"an attribute map needs at least 2 training classes, got {len(a)}")
    distances = torch.cdist(a, a)
    median = distances[distances > 0].median().item() if bool((distances > 0).any()) else 1.0
    order = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed)).to(a.device)
    folds = [order[k::FOLDS] for k in range(min(FOLDS, len(a)))]
    errors = {(ridge, width): float((_held_out(a, t, folds, ridge, width * median) - t).pow(2).sum())
              for ridge in RIDGES for width in WIDTHS}
    ridge, width = min(errors, key=errors.get)
    weights, offset = _fit(a, t, ridge, width * median)
    return AttributeMap(a, weights, offset, ridge, width * median, _held_out(a, t, folds, ridge, width * median))
