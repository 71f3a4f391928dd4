"""The evaluation protocol of a trained zero-shot model (IZF or a baseline), as one function that
returns its results.

With the model's weights fixed: fit its classifiers on the real seen training features (for a
generative method: held-out softmax classifiers on real seen + generated unseen features), score
both test splits with every classifier, and compute ZSL T1 and GZSL U, S, H per classifier. On the
validation task it also reports the calibrated-stacking shift γ that would have been best: that
is where γ is chosen, never on test data. The model is a izf.training.base.ZSLModule.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from izf.errors import require_finite_weights
from izf.evaluation.calibration import stacking_curve
from izf.evaluation.metrics import calibrated_stacking, gzsl_metrics, zsl_metrics
from izf.model.classifiers import SoftmaxClassifier
from izf.outputs import NO_STACKING

TEST_SPLITS = ("test_seen", "test_unseen")
# progress(description, total) -> a context manager yielding the function that advances it by one
Progress = Callable[[str, int], AbstractContextManager[Callable[[], None]]]


def _no_progress(description: str, total: int) -> AbstractContextManager[Callable[[], None]]:
    return nullcontext(lambda: None)


@dataclass
class Evaluation:
    """metrics: ZSL T1 and GZSL U/S/H of each classifier ("nb/...", "softmax/...") and, unprefixed,
    those of the reported one; scores[split]["<classifier>/<task>"] (N×C) and labels[split] of
    each test split; predictions[split]: (predicted, true) labels of the reported classifier in
    GZSL after calibrated stacking, for per-class tables."""
    metrics: dict[str, float]
    scores: dict[str, dict[str, Tensor]]
    labels: dict[str, Tensor]
    predictions: dict[str, tuple[Tensor, Tensor]]


def gamma_of(calibration_gamma: float | dict[str, float], classifier: str) -> float:
    """The calibrated-stacking γ of one classifier (each has its own score scale)."""
    if isinstance(calibration_gamma, dict):
        return float(calibration_gamma.get(classifier, 0.0))
    return float(calibration_gamma)


def generate_unseen(model) -> tuple[Tensor, Tensor]:
    """softmax.n_gen generated features of every unseen class at softmax.temperature, and their
    labels. `model` is a generative ZSLModule: its `generate(classes, temperature)`."""
    cfg = model.hparams.softmax
    y_gen = model.unseen_classes.clone().repeat_interleave(cfg["n_gen"])
    with torch.no_grad():
        x_gen = torch.cat([model.generate(rows, cfg.get("temperature", 1.0))
                           for rows in y_gen.split(cfg["generation_batch"])])
    return x_gen, y_gen


def fit_softmax_classifiers(model, x_seen: Tensor, y_seen: Tensor, progress: Progress = _no_progress,
                            generated: tuple[Tensor, Tensor] | None = None) -> dict[str, SoftmaxClassifier]:
    """Train the held-out classifiers on generated unseen features (`generated`, else
    generate_unseen(model)): GZSL on [real seen; generated unseen] over all classes, ZSL on generated
    unseen only over the unseen classes. Settings: the model's `softmax` (epochs, lr, batch_size,
    weight_decay, balanced, init_std)."""
    cfg, hp = model.hparams.softmax, model.hparams
    unseen = model.unseen_classes
    fit = {k: cfg[k] for k in ("epochs", "lr", "batch_size", "weight_decay")} | {"balanced": cfg.get("balanced", False)}
    all_classes = torch.arange(hp.num_classes, device=model.device)
    init_std = cfg.get("init_std")
    # Callers may be inside Lightning's inference mode; this is a small training run of its own.
    with torch.inference_mode(False), torch.enable_grad(), \
            progress("softmax classifiers", 2 * cfg["epochs"]) as advance:
        x_gen, y_gen = (t.clone() for t in (generated or generate_unseen(model)))
        x_seen, y_seen = x_seen.clone(), y_seen.clone()  # ordinary tensors, not inference-mode ones
        return {
            "gzsl": SoftmaxClassifier(hp.feature_dim, all_classes.clone(), hp.num_classes, init_std).to(model.device)
            .fit(torch.cat([x_seen, x_gen]), torch.cat([y_seen, y_gen]), **fit, on_epoch=advance),
            "zsl": SoftmaxClassifier(hp.feature_dim, unseen.clone(), hp.num_classes, init_std).to(model.device)
            .fit(x_gen, y_gen, **fit, on_epoch=advance),
        }


def classifier_names(scores: dict[str, dict[str, Tensor]]) -> list[str]:
    """The classifiers in a scores dict {split: {"<classifier>/<task>": …}}."""
    return sorted({key.split("/")[0] for key in next(iter(scores.values()))})


def protocol_metrics(scores: dict[str, dict[str, Tensor]], labels: dict[str, Tensor], seen: Tensor, unseen: Tensor,
                     calibration_gamma: float | dict[str, float], reported: str) -> dict[str, float]:
    """ZSL T1 and GZSL U, S, H of every classifier (and GZSL at γ = 0 too, under NO_STACKING), and
    unprefixed those of `reported`."""
    metrics = {}
    for name in classifier_names(scores):
        metrics |= {f"{name}/{k}": v for k, v in zsl_metrics(
            scores["test_unseen"][f"{name}/zsl"], labels["test_unseen"], unseen).items()}
        for prefix, gamma in ((f"{name}/", gamma_of(calibration_gamma, name)), (f"{name}/{NO_STACKING}/", 0.0)):
            metrics |= {prefix + k: v for k, v in gzsl_metrics(
                scores["test_seen"][f"{name}/gzsl"], labels["test_seen"], scores["test_unseen"][f"{name}/gzsl"],
                labels["test_unseen"], seen, unseen, gamma).items()}
    return metrics | {k[len(reported) + 1:]: v for k, v in metrics.items() if k.startswith(reported + "/")}


def stacking_curves(scores: dict[str, dict[str, Tensor]], labels: dict[str, Tensor], seen: Tensor, unseen: Tensor,
                    gammas: list[float] | None = None) -> dict[str, list[dict[str, float]]]:
    """Per classifier, GZSL U, S, H at each γ (default: a grid over its own score scale)."""
    return {name: stacking_curve(scores["test_seen"][f"{name}/gzsl"], labels["test_seen"],
                                 scores["test_unseen"][f"{name}/gzsl"], labels["test_unseen"], seen, unseen, gammas)
            for name in classifier_names(scores)}


def best_gammas(scores: dict[str, dict[str, Tensor]], labels: dict[str, Tensor], seen: Tensor,
                unseen: Tensor) -> dict[str, float]:
    """Per classifier, the γ of highest GZSL H on these splits, and that H."""
    found = {}
    for name, curve in stacking_curves(scores, labels, seen, unseen).items():
        best = max(curve, key=lambda point: point["gzsl/H"])
        found |= {f"{name}/best_gamma": best["gamma"], f"{name}/best_gamma/gzsl/H": best["gzsl/H"]}
    return found


def score_splits(model, fitted, tests: dict[str, tuple[Tensor, Tensor]],
                 batch_size: int) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """(scores[split]["<classifier>/<task>"], labels[split]) of each test split, in rows of batch_size;
    `fitted` is what model.fit_classifiers returned."""
    scores, labels = {}, {}
    for split in TEST_SPLITS:
        x, y = tests[split]
        parts = [model.classifier_scores(fitted, rows.to(model.device)) for rows in x.split(batch_size)]
        scores[split] = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        labels[split] = y.to(model.device)
    return scores, labels


def evaluate(model, train: tuple[Tensor, Tensor], tests: dict[str, tuple[Tensor, Tensor]], *,
             batch_size: int = 8192, choose_gamma: bool = False, progress: Progress = _no_progress) -> Evaluation:
    """The whole protocol for `model` (a ZSLModule): `train` = the real seen training features
    and labels, `tests` = {"test_seen": (x, y), "test_unseen": (x, y)}. choose_gamma=True (the
    validation task only) adds each classifier's best γ to the metrics.

    The classifiers are fitted on their own seeded random stream (model.classifier_seed), so the reported
    numbers are a function of the weights and the data alone: the same after training, in a
    resumed run and in eval.py, whatever drew random numbers before."""
    require_finite_weights(model, "evaluate")
    device, hp = model.device, model.hparams
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(model.classifier_seed)
            fitted = model.fit_classifiers(*(t.to(device) for t in train), progress=progress)
        scores, labels = score_splits(model, fitted, tests, batch_size)
    finally:
        model.train(was_training)
    seen, unseen = model.seen_classes, model.unseen_classes
    metrics = protocol_metrics(scores, labels, seen, unseen, hp.calibration_gamma, hp.classifier)
    if choose_gamma:
        metrics |= best_gammas(scores, labels, seen, unseen)
    key, gamma = f"{hp.classifier}/gzsl", gamma_of(hp.calibration_gamma, hp.classifier)
    predictions = {split: (calibrated_stacking(scores[split][key], model.seen_mask, gamma).argmax(1), labels[split])
                   for split in TEST_SPLITS}
    return Evaluation(metrics, scores, labels, predictions)
