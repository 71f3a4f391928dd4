"""Calibrated stacking swept over γ: the seen/unseen trade-off curve of a GZSL classifier."""

from __future__ import annotations

import torch
from torch import Tensor

from izf.evaluation.metrics import gzsl_metrics


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
    return [{"gamma": g, **gzsl_metrics(scores_seen, y_seen, scores_unseen, y_unseen, seen, unseen, g)}
            for g in gammas]
