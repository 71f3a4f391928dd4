"""How far to trust IZF's flow as an attribute map, and why its naive-Bayes rule fails, measured on a
validation run (its pseudo-unseen classes have images, so their true means are known):

    python train.py dataset=... dataset.split=validation schedule=cpu hydra.run.dir=logs/runs/val
    python -m izf.diagnose logs/runs/val

Prints two tables and one JSON line ("DIAGNOSE_JSON "): for the pseudo-unseen classes, how far each
predictor of their mean features lands from the truth (squared error relative to the spread of the
seen classes' means) and the ZSL T1 of a nearest-mean rule on those means; then the semantic factor
ĉ's noise against the separation of the classes' attributes, and naive Bayes against nearest
centres in ĉ placed with hindsight. docs/accuracy.md reads these tables for the proxies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from izf.evaluation.metrics import per_class_mean_accuracy
from izf.evaluation.protocol import generate_unseen
from izf.model.attribute_map import fit_attribute_map
from izf.model.losses import class_means
from izf.training.evaluate import load_model, scoring_data


def _nearest_t1(x: torch.Tensor, y: torch.Tensor, centres: torch.Tensor, classes: torch.Tensor) -> float:
    """ZSL T1 of the nearest-centre rule among `classes` (centres: one row per class of `classes`)."""
    return per_class_mean_accuracy(classes[torch.cdist(x, centres).argmin(dim=1)], y, classes)


@torch.no_grad()
def diagnose(run: Path) -> dict[str, dict[str, float]]:
    config = OmegaConf.load(run / "config.yaml")
    if config.dataset.split != "validation":
        raise SystemExit(f"error: {run} is a {config.dataset.split} run; the diagnosis needs the pseudo-unseen "
                         "classes' images: run it on a dataset.split=validation run")
    model = load_model(run / "checkpoints" / "last.ckpt").eval()
    datamodule = scoring_data(model, OmegaConf.to_container(config.dataset, resolve=True))
    seen, unseen, semantics = model.seen_classes, model.unseen_classes, model.class_semantics
    x_train, y_train = datamodule.split("trainval")
    x_unseen, y_unseen = datamodule.split("test_unseen")
    seen_means, _ = class_means(x_train, y_train, seen)
    true_means, _ = class_means(x_unseen, y_unseen, unseen)
    spread = (seen_means - seen_means.mean(dim=0)).pow(2).sum(dim=1).mean()
    torch.manual_seed(model.classifier_seed)
    x_gen, y_gen = generate_unseen(model)
    predictors = {"the flow's prototypes f⁻¹([c_u; 0])": model.generate(unseen, temperature=0.0),
                  "the flow's generated features (their means)": class_means(x_gen, y_gen, unseen)[0],
                  "the attribute map (cross-validated kernel ridge)": fit_attribute_map(semantics[seen], seen_means)(
                      semantics[unseen]),
                  "the true means (hindsight, for scale)": true_means}
    means = {name: {"relative error": float((centres - true_means).pow(2).sum(dim=1).mean() / spread),
                    "nearest-mean T1": _nearest_t1(x_unseen, y_unseen, centres, unseen)}
             for name, centres in predictors.items()}

    c_train, c_unseen = model.encode(x_train)[0], model.encode(x_unseen)[0]
    gaps = torch.cdist(semantics[unseen], semantics[unseen])
    naive_bayes = {
        "ĉ noise per dimension (RMS of ĉ(x) − c_y, training images)": float((c_train - semantics[y_train]).pow(2)
                                                                              .mean().sqrt()),
        "attribute separation per dimension (RMS, unseen classes)": float(
            (gaps[gaps > 0].pow(2).mean() / semantics.shape[1]).sqrt()),
        "naive Bayes T1 (centres at c_u)": _nearest_t1(c_unseen, y_unseen, semantics[unseen], unseen),
        "nearest centre in ĉ, centres placed with hindsight": _nearest_t1(
            c_unseen, y_unseen, class_means(c_unseen, y_unseen, unseen)[0], unseen),
        "nearest centre in the features, placed with hindsight": means["the true means (hindsight, for scale)"][
            "nearest-mean T1"],
    }
    return {"unseen class means": means, "naive Bayes": naive_bayes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m izf.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the directory of a dataset.split=validation run")
    found = diagnose(parser.parse_args(argv).run)
    console = Console()
    table = Table(title="Predicting the pseudo-unseen classes' means")
    for column in ("predictor", "relative squared error", "nearest-mean ZSL T1"):
        table.add_column(column, justify="left" if column == "predictor" else "right")
    for name, row in found["unseen class means"].items():
        table.add_row(escape(name), f"{row['relative error']:.3f}", f"{row['nearest-mean T1']:.3f}")
    console.print(table)
    table = Table(title="The naive-Bayes rule on ĉ")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in found["naive Bayes"].items():
        table.add_row(escape(name), f"{value:.3f}")
    console.print(table)
    print("DIAGNOSE_JSON " + json.dumps(found))
    return found


if __name__ == "__main__":
    main()
