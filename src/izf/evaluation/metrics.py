"""The Xian et al. (G)ZSL protocol: per-class mean top-1 accuracy over the evaluated classes.

Each class's accuracy on its own samples is its recall (torchmetrics, average=None); the mean is
taken here over the evaluated classes only. torchmetrics' macro average would average over ALL
classes of the label space, counting a class without samples as 0: wrong for GZSL, where U
averages over the unseen classes only and S over the seen ones.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_recall


def per_class_accuracy(pred: Tensor, target: Tensor, classes: Tensor) -> Tensor:
    """Top-1 accuracy of each class in `classes` on its own samples (float64, one per class).

    Every class in `classes` must have at least one sample in `target`; predictions into any
    other class are simply wrong.
    """
    classes = torch.as_tensor(classes, device=target.device)
    size = max(2, int(max(target.max(), classes.max(), pred.max())) + 1)  # torchmetrics wants ≥ 2 classes
    counts = torch.bincount(target, minlength=size)[classes]
    if bool((counts == 0).any()):
        raise ValueError(f"classes {classes[counts == 0].tolist()} have no samples to evaluate on")
    return multiclass_recall(pred, target, num_classes=size, average=None)[classes].to(torch.float64)


def per_class_mean_accuracy(pred: Tensor, target: Tensor, classes: Tensor) -> float:
    """Mean over the given classes of each class's top-1 accuracy; classes outside `classes` are
    never averaged in."""
    return float(per_class_accuracy(pred, target, classes).mean())


def harmonic_mean(u: float, s: float) -> float:
    return 0.0 if u + s == 0 else 2.0 * u * s / (u + s)


def calibrated_stacking(scores: Tensor, seen_mask: Tensor, gamma: float) -> Tensor:
    """Chao et al. 2016: subtract γ from the scores of the seen classes (scores: N×C)."""
    return scores - gamma * seen_mask.to(scores.dtype)


def restrict_to(scores: Tensor, classes: Tensor) -> Tensor:
    """Predictions (class indices) when only `classes` are candidates."""
    return classes.to(scores.device)[scores[:, classes].argmax(dim=1)]


def gzsl_metrics(scores_seen: Tensor, y_seen: Tensor, scores_unseen: Tensor, y_unseen: Tensor,
                 seen: Tensor, unseen: Tensor, gamma: float = 0.0) -> dict[str, float]:
    """GZSL U, S, H: all classes are candidates (after calibrated stacking by γ)."""
    num_classes = scores_seen.shape[1]
    seen_mask = torch.zeros(num_classes, dtype=torch.bool, device=scores_seen.device)
    seen_mask[seen] = True
    pred_seen = calibrated_stacking(scores_seen, seen_mask, gamma).argmax(dim=1)
    pred_unseen = calibrated_stacking(scores_unseen, seen_mask, gamma).argmax(dim=1)
    u = per_class_mean_accuracy(pred_unseen, y_unseen, unseen)
    s = per_class_mean_accuracy(pred_seen, y_seen, seen)
    return {"gzsl/U": u, "gzsl/S": s, "gzsl/H": harmonic_mean(u, s)}


def zsl_metrics(scores_unseen: Tensor, y_unseen: Tensor, unseen: Tensor) -> dict[str, float]:
    """ZSL T1: test_unseen samples, unseen classes only as candidates."""
    return {"zsl/T1": per_class_mean_accuracy(restrict_to(scores_unseen, unseen), y_unseen, unseen)}
