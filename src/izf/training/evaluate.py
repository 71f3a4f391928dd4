"""The evaluation protocol on a datamodule's splits (after training, in eval.py, in the benchmark),
and evaluating a saved checkpoint (eval.py): both classifiers under the protocol, and calibrated
stacking swept over γ with the resulting seen/unseen trade-off (table, CSV, plot)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning.pytorch as L
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from izf.data import ZSLDataModule
from izf.errors import ConfigError
from izf.evaluation.protocol import TEST_SPLITS, Evaluation, evaluate, gamma_of, stacking_curves
from izf.io import save_figure, write_csv, write_json
from izf.outputs import DATA_KEY, METRIC_COLUMNS, METRICS_FILE, classifiers_in
from izf.training.base import METHOD_KEY, ZSLModule
from izf.training.hyperparameters import check_hyperparameters

log = logging.getLogger(__name__)


def results_table(metrics: dict[str, float], title: str, chosen: str) -> Table:
    table = Table(title=title)
    table.add_column("classifier")
    for column in METRIC_COLUMNS:
        table.add_column(column.replace("/", " "), justify="right")
    for name in classifiers_in(metrics):
        label = f"{name} (reported)" if name == chosen else name
        table.add_row(label, *(f"{100 * metrics[f'{name}/{c}']:.2f}" for c in METRIC_COLUMNS))
    return table


@contextmanager
def progress_task(trainer: L.Trainer | None, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar for work outside Lightning's loops (the classifier fitting): a task in
    Lightning's own rich bar while one is shown (rich allows one live display at a time), else a
    bar of its own. Yields the function that advances it by one."""
    shown = getattr(getattr(trainer, "progress_bar_callback", None), "progress", None)
    if isinstance(shown, Progress):
        task = shown.add_task(description, total=total)
        yield lambda: shown.advance(task)
        return
    with Progress(*Progress.get_default_columns(), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def evaluate_model(model: ZSLModule, datamodule: ZSLDataModule, trainer: L.Trainer | None = None) -> Evaluation:
    """The protocol on the datamodule's full splits, in one process (also after multi-GPU
    training); the best γ is reported on the validation task only."""
    tests = {split: datamodule.split(split) for split in TEST_SPLITS}
    return evaluate(model, datamodule.split("trainval"), tests, batch_size=datamodule.hparams.eval_batch_size,
                    choose_gamma=datamodule.hparams.split == "validation",
                    progress=lambda description, total: progress_task(trainer, description, total))


def load_model(ckpt_path: str | Path) -> ZSLModule:
    """The model a checkpoint holds, as the method class that wrote it (IZF for checkpoints older
    than the baselines), built from the checkpoint's own hyperparameters."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file")
    try:
        method = torch.load(path, map_location="cpu", weights_only=True).get(METHOD_KEY, "izf.training.module.IZF")
        model = hydra.utils.get_class(method).load_from_checkpoint(path, map_location="cpu")
    except Exception as err:  # not a checkpoint, or not one of this framework's
        raise ConfigError(f"ckpt_path={path}: not a readable izf checkpoint ({type(err).__name__}: {err})") from None
    return model  # its tensors fit its hyperparameters by construction


def dataset_config(cfg: DictConfig, ckpt_path: Path) -> dict:
    """dataset=... if given, else the dataset of the run the checkpoint comes from."""
    if cfg.get("dataset") is not None:
        return OmegaConf.to_container(cfg.dataset, resolve=True, throw_on_missing=True)
    run_config = ckpt_path.parent.parent / "config.yaml"  # <run>/checkpoints/<name>.ckpt
    if not run_config.is_file():
        raise ConfigError(f"no {run_config} beside the checkpoint to take the dataset from; set dataset=...")
    return OmegaConf.to_container(OmegaConf.load(run_config).dataset, resolve=True)


def _check_fit(model: ZSLModule, datamodule: ZSLDataModule) -> None:
    hp = model.hparams
    found = (len(datamodule.semantics), datamodule.features.shape[1], datamodule.semantics.shape[1])
    if found != (hp.num_classes, hp.feature_dim, hp.semantic_dim):
        raise ConfigError(f"the checkpoint was trained for {hp.num_classes} classes, {hp.feature_dim}-d features and "
                          f"{hp.semantic_dim}-d semantics; dataset '{datamodule.data.name}' has {found[0]}, "
                          f"{found[1]} and {found[2]}")


def _save_curve_plot(curves: dict[str, list[dict]], chosen_gamma: dict[str, float], path: Path) -> None:
    import matplotlib.pyplot as plt  # the Agg backend: chosen by izf.evaluation.pictures

    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    for name, curve in curves.items():
        axes.plot([100 * p["gzsl/U"] for p in curve], [100 * p["gzsl/S"] for p in curve], marker=".", label=name)
        at = min(curve, key=lambda p: abs(p["gamma"] - chosen_gamma[name]))
        axes.scatter([100 * at["gzsl/U"]], [100 * at["gzsl/S"]], s=60, facecolors="none", edgecolors="black")
    axes.set(xlabel="unseen accuracy U (%)", ylabel="seen accuracy S (%)",
             title="Calibrated stacking: U/S as γ varies (circle: the configured γ)")
    axes.legend()
    axes.grid(alpha=0.3)
    save_figure(figure, path, dpi=120)


def scoring_data(model: ZSLModule, dataset: dict) -> ZSLDataModule:
    """The data (`dataset`: a dataset config) a loaded model is scored on, checked to fit it; the
    model is told which classes are seen."""
    datamodule = ZSLDataModule(**dataset)
    datamodule.setup("test")
    _check_fit(model, datamodule)
    model.set_classes(datamodule.semantics, datamodule.seen_classes)
    return datamodule


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = Path(cfg.ckpt_path)
    model = load_model(ckpt_path)
    datamodule = scoring_data(model, dataset_config(cfg, ckpt_path))
    if (gamma := cfg.get("calibration_gamma")) is not None:  # e.g. the γ a validation run chose
        model.hparams.calibration_gamma = OmegaConf.to_container(gamma) if OmegaConf.is_config(gamma) else gamma
    for group in ("softmax", "gaussian"):  # classifier settings to refit with (null: the checkpoint's own)
        refit = {key: value for key, value in (cfg.get(group) or {}).items() if value is not None}
        if refit and group not in model.hparams:
            raise ConfigError(f"{group}.{next(iter(refit))}: {type(model).__name__} has no {group} classifier "
                              "settings to change")
        if refit:
            model.hparams[group] = {**model.hparams[group], **refit}
    for key in ("classifier", "unseen_centre"):
        if cfg.get(key) is not None:
            if key not in model.hparams:
                raise ConfigError(f"{key}={cfg.get(key)}: {type(model).__name__} has no such setting")
            model.hparams[key] = cfg.get(key)
    if model.hparams.classifier not in model.classifiers:
        raise ConfigError(f"classifier={model.hparams.classifier}: {type(model).__name__} has "
                          f"{', '.join(model.classifiers)}")
    check_hyperparameters({key: model.hparams[key] for key in ("calibration_gamma", "softmax", "gaussian",
                                                                "unseen_centre") if key in model.hparams})
    model.check_calibration_gamma(model.hparams.calibration_gamma)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    model.to(device)
    L.seed_everything(cfg.seed, workers=True)
    result = evaluate_model(model, datamodule)
    metrics, scores, labels = result.metrics, result.scores, result.labels
    gammas = list(cfg.calibration.gammas) if cfg.calibration.gammas is not None else None
    curves = stacking_curves(scores, labels, model.seen_classes, model.unseen_classes, gammas)

    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / METRICS_FILE,
               metrics | {DATA_KEY: datamodule.data.name, "checkpoint": str(ckpt_path.resolve())})
    write_csv(output_dir / "calibration.csv", ["classifier", "gamma", "gzsl/U", "gzsl/S", "gzsl/H"],
              ([name, p["gamma"], p["gzsl/U"], p["gzsl/S"], p["gzsl/H"]] for name, curve in curves.items()
               for p in curve))
    chosen = {name: gamma_of(model.hparams.calibration_gamma, name) for name in model.classifiers}
    _save_curve_plot(curves, chosen, output_dir / "calibration_curve.png")

    console = Console()
    console.print(results_table(metrics, f"{ckpt_path.name} on {datamodule.data.name} (%)", model.hparams.classifier))
    for name, curve in curves.items():
        table = Table(title=f"{name}: calibrated stacking (%)")
        for column in ("γ", "U", "S", "H"):
            table.add_column(column, justify="right")
        best = max(curve, key=lambda p: p["gzsl/H"])
        for point in curve:
            style = "bold" if point is best else None
            table.add_row(f"{point['gamma']:.4g}", *(f"{100 * point[k]:.2f}" for k in ("gzsl/U", "gzsl/S", "gzsl/H")),
                          style=style)
        console.print(table)
    console.print("(bold: the best H of each sweep, which is chosen on test data: choose γ on the validation task)")
    log.info("wrote %s, calibration.csv and calibration_curve.png in %s", METRICS_FILE, output_dir)
    return metrics
