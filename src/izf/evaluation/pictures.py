"""What people look at after a run: per-class GZSL accuracies, real against generated features in
2-D, and the toy experiment's scatter. Saved as files in the run directory (pictures/,
per_class_accuracy.csv) and, where W&B is the logger, sent there too."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch
from torch import Tensor

from izf.evaluation.metrics import per_class_accuracy
from izf.io import save_figure

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PER_CLASS_COLUMNS = ["class", "name", "kind", "test images", "gzsl accuracy"]


def per_class_rows(predictions: dict[str, tuple[Tensor, Tensor]], seen: Tensor, unseen: Tensor,
                   class_names: list[str]) -> list[list]:
    """One row per seen and unseen class: its GZSL accuracy on its own test images."""
    rows = []
    for split, classes, kind in (("test_seen", seen, "seen"), ("test_unseen", unseen, "unseen")):
        pred, target = predictions[split]
        accuracy = per_class_accuracy(pred.cpu(), target.cpu(), classes.cpu())
        counts = torch.bincount(target.cpu(), minlength=int(classes.max()) + 1)
        for y, a in zip(classes.tolist(), accuracy.tolist()):
            name = class_names[y] if y < len(class_names) else f"class_{y + 1}"
            rows.append([y, name, kind, int(counts[y]), round(a, 6)])
    return rows


@torch.no_grad()
def real_vs_generated(model, datamodule, path: Path, per_kind: int = 3, samples: int = 150) -> Path:
    """PCA (fitted on the real test features shown) of real test features and generated ones for
    a few seen and unseen classes: do the generated clouds sit on the real ones?"""
    seen, unseen = datamodule.seen_classes[:per_kind], datamodule.unseen_classes[:per_kind]
    figure, axes = plt.subplots(figsize=(6.5, 5))
    real_parts = []
    for split, classes in (("test_seen", seen), ("test_unseen", unseen)):
        x, y = datamodule.split(split)
        keep = torch.isin(y, classes)
        real_parts.append((x[keep], y[keep]))
    real_x = torch.cat([x for x, _ in real_parts])
    real_y = torch.cat([y for _, y in real_parts])
    classes = torch.cat([seen, unseen])
    generated_y = classes.repeat_interleave(samples)
    generated_x = model.generate(generated_y.to(model.device)).float().cpu()
    mean = real_x.mean(0)
    _, _, basis = torch.pca_lowrank(real_x - mean, q=2, center=False)
    project = lambda x: ((x - mean) @ basis[:, :2]).numpy()  # noqa: E731
    colours = plt.get_cmap("tab10")
    for i, c in enumerate(classes.tolist()):
        kind = "seen" if c in seen.tolist() else "unseen"
        name = datamodule.data.class_names[c] if datamodule.data.class_names else f"class_{c + 1}"
        r, g = project(real_x[real_y == c]), project(generated_x[generated_y == c])
        axes.scatter(r[:, 0], r[:, 1], s=8, color=colours(i), alpha=0.5, label=f"{name} ({kind})")
        axes.scatter(g[:, 0], g[:, 1], s=14, color=colours(i), marker="x", alpha=0.8)
    axes.set(title="Real test features (dots) and generated ones (x), PCA", xlabel="PC 1", ylabel="PC 2")
    axes.legend(fontsize=7, markerscale=1.5)
    return save_figure(figure, path)


@torch.no_grad()
def toy_scatter(model, datamodule, path: Path, samples: int = 400) -> Path:
    """The paper's toy figure: the four classes' real points (first two dimensions) and the
    generated samples of the unseen class [1, 1]."""
    figure, axes = plt.subplots(figsize=(5, 5))
    x, y = datamodule.features, datamodule.labels
    names = datamodule.data.class_names
    for c in range(len(datamodule.semantics)):
        axes.scatter(x[y == c, 0], x[y == c, 1], s=6, alpha=0.4, label=f"real {names[c]}")
    unseen = datamodule.unseen_classes
    generated = model.generate(unseen.repeat_interleave(samples).to(model.device)).float().cpu()
    axes.scatter(generated[:, 0], generated[:, 1], s=10, marker="x", color="black", label="generated unseen")
    axes.set(title="Toy data: real (dots) and generated unseen (x)", xlabel="x₁", ylabel="x₂")
    axes.legend(fontsize=7)
    return save_figure(figure, path)
