"""Calibrated stacking swept over γ: the seen/unseen trade-off curve of a GZSL classifier."""

from __future__ import annotations

import torch
from torch import Tensor

from izf.evaluation.metrics import harmonic_mean, per_class_mean_accuracy


def gamma_grid(scores: Tensor, seen: Tensor, unseen: Tensor, points: int = 21) -> list[float]:
    """γ values from 'every test image goes to a seen class' to 'every one to an unseen class':
    quantiles of (best seen score − best unseen score) over the test images, for this
    classifier's own score scale (log-probabilities, negative distances ...), and 0."""
    gap = scores[:, seen].max(dim=1).values - scores[:, unseen].max(dim=1).values
    gap = gap[torch.isfinite(gap)]
    quantiles = torch.quantile(gap.double(), torch.linspace(0, 1, points, dtype=torch.float64, device=gap.device))
    spread = float(quantiles[-1] - quantiles[0]) or 1.0
    low, high = float(quantiles[0]) - 0.01 * spread, float(quantiles[-1]) + 0.01 * spread
    return sorted({0.0, low, high, *(float(q) for q in quantiles)})


def stacking_curve(scores_seen: Tensor, y_seen: Tensor, scores_unseen: Tensor, y_unseen: Tensor,
                   seen: Tensor, unseen: Tensor, gammas: list[float] | None = None) -> list[dict[str, float]]:
    """GZSL U, S, H at each γ (default: gamma_grid over both test splits)."""
    if gammas is None:
        gammas = gamma_grid(torch.cat([scores_seen, scores_unseen]), seen, unseen)
    # γ only decides between an image's best seen and best unseen class, so each image's two
    # candidates are found once and each γ costs a comparison (gzsl_metrics redoes the full argmax
    # over N × C scores per γ; the curves of the validation choice's candidates add up to that).
    seen_side, unseen_side = _best_of(scores_seen, seen, unseen), _best_of(scores_unseen, seen, unseen)
    curve = []
    for g in gammas:
        u = per_class_mean_accuracy(_stacked_predictions(*unseen_side, g), y_unseen, unseen)
        s = per_class_mean_accuracy(_stacked_predictions(*seen_side, g), y_seen, seen)
        curve.append({"gamma": g, "gzsl/U": u, "gzsl/S": s, "gzsl/H": harmonic_mean(u, s)})
    return curve


def _best_of(scores: Tensor, seen: Tensor, unseen: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each image's best seen score and class, and best unseen score and class."""
    seen, unseen = seen.to(scores.device), unseen.to(scores.device)
    best_seen, seen_at = scores[:, seen].max(dim=1)
    best_unseen, unseen_at = scores[:, unseen].max(dim=1)
    return best_seen, seen[seen_at], best_unseen, unseen[unseen_at]


def _stacked_predictions(best_seen: Tensor, seen_class: Tensor, best_unseen: Tensor, unseen_class: Tensor,
                         gamma: float) -> Tensor:
    """argmax over all classes after subtracting γ from the seen ones; on a tie the lower class index
    wins, as argmax picks the first maximum."""
    shifted = best_seen - gamma
    first = torch.minimum(seen_class, unseen_class)
    return torch.where(shifted > best_unseen, seen_class, torch.where(shifted < best_unseen, unseen_class, first))
