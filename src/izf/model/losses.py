"""The four loss terms of IZF (docs/method.md, "The losses"). Pure functions on tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.profiler import record_function


def likelihood_loss(z_nonsemantic: Tensor, log_det: Tensor, dim: int) -> Tensor:
    """L_ML = mean_i ½‖ẑ_i‖²/D − mean_i log|det J_f(x_i)|/D (per-dimension negative log-likelihood
    of the non-semantic factor under N(0, I), constants dropped)."""
    return (0.5 * z_nonsemantic.pow(2).sum(dim=1).mean() - log_det.mean()) / dim


def semantic_loss(c_hat: Tensor, c_true: Tensor) -> Tensor:
    """L_sem = mean_{i,k} (ĉ_ik − c_{y_i,k})²."""
    return (c_hat - c_true).pow(2).mean()


def mmd2(x: Tensor, y: Tensor, scales: Sequence[float], unbiased: bool = False,
         bandwidth: str = "fixed") -> Tensor:
    """Squared MMD between samples x (n×D) and y (m×D) with the multi-scale inverse multiquadric
    kernel k(a, b) = Σ_s s / (s + ‖a − b‖²).

    bandwidth="fixed" uses the scales as given (the paper's, for the 4-d toy and [0, 1] features).
    bandwidth="median" measures distances in units of the median pairwise squared distance of
    the pooled batch (detached) and averages the kernels over the scales: squared distances
    grow with D (≈ 100 at D = 2048 for [0, 1] features), so fixed scales of 0.1–10 leave every
    kernel value near 0 and the term without signal; relative to the median, MMD² lies in
    [0, 2] at any D.

    One pairwise squared-distance matrix over [x; y] serves all three kernel blocks.
    """
    with record_function("izf.mmd"):  # a mark for profilers (python -m izf.bench)
        return _mmd2(x, y, scales, unbiased, bandwidth)


def _mmd2(x: Tensor, y: Tensor, scales: Sequence[float], unbiased: bool, bandwidth: str) -> Tensor:
    n = x.shape[0]
    xy = torch.cat([x, y], dim=0)
    sq_norms = xy.pow(2).sum(dim=1)
    d2 = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * xy @ xy.T).clamp_min(0.0)
    s = torch.as_tensor(scales, dtype=xy.dtype, device=xy.device).view(-1, 1, 1)
    if bandwidth == "median":
        off_diagonal = ~torch.eye(len(xy), dtype=torch.bool, device=xy.device)
        d2 = d2 / d2.detach()[off_diagonal].median().clamp_min(1e-12)
        k = (s / (s + d2)).mean(dim=0)
    else:
        k = (s / (s + d2)).sum(dim=0)
    k_xx, k_yy, k_xy = k[:n, :n], k[n:, n:], k[:n, n:]
    if not unbiased:
        return k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()
    m = y.shape[0]
    off_diag = lambda block, size: (block.sum() - block.diagonal().sum()) / (size * (size - 1))  # noqa: E731
    return off_diag(k_xx, n) + off_diag(k_yy, m) - 2.0 * k_xy.mean()


def negative_sample_loss(x_seen: Tensor, x_unseen_generated: Tensor, scales: Sequence[float],
                         unbiased: bool = False, margin: float | None = None, bandwidth: str = "fixed") -> Tensor:
    """L_neg = −MMD²(real seen batch, generated unseen batch): minimising it pushes generated
    unseen samples away from the seen data.

    With a margin, L_neg = −min(MMD², margin): the push stops once the generated unseen samples
    are that far from the seen data. Without one (the paper's form) nothing bounds the push, and
    Adam's normalised steps can carry the generated samples off indefinitely (seen on the toy data).
    """
    mmd = mmd2(x_seen, x_unseen_generated, scales, unbiased, bandwidth)
    return -(mmd if margin is None else mmd.clamp(max=margin))


def centralising_loss(prototypes: Tensor, class_means: Tensor, present: Tensor | None = None,
                      normalised: bool = False) -> Tensor:
    """L_cent = Σ_y ‖f⁻¹([c_y; 0]) − mean(x | y)‖₂ over the classes given (rows aligned), counting
    only the rows marked `present` (classes with samples in the batch) where a mask is given.

    normalised=True averages instead of summing over the classes and divides each distance by √D
    (a root-mean-square error per dimension): the paper's sum grows with the number of classes in
    a batch and with √D (≈ 75 for AWA at D = 2048, against an L_ML of ≈ −2), so one weight cannot
    mean the same on a 4-d toy and on 2048-d benchmarks."""
    distances = (prototypes - class_means).norm(dim=1)
    if present is not None:
        distances = distances * present
    if not normalised:
        return distances.sum()
    count = present.sum() if present is not None else distances.new_tensor(len(distances))
    return distances.sum() / count.clamp_min(1) / prototypes.shape[1] ** 0.5


def class_means(x: Tensor, y: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Mean feature of each of the (sorted) `classes` in the batch, and which of them have samples.

    Fixed-size output and no data-dependent shapes: nothing waits for the device."""
    rows = torch.searchsorted(classes, y)
    sums = x.new_zeros(len(classes), x.shape[1]).index_add_(0, rows, x)
    counts = x.new_zeros(len(classes)).index_add_(0, rows, torch.ones_like(y, dtype=x.dtype))
    return sums / counts.clamp_min(1.0)[:, None], counts > 0
