"""One training job, from a composed config to metrics.json: the body of train.py."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from izf.data import ZSLDataModule
from izf.io import atomic_path
from izf.training.module import CLASSIFIERS, IZF

log = logging.getLogger(__name__)
# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
METRIC_COLUMNS = ("zsl/T1", "gzsl/U", "gzsl/S", "gzsl/H")


def write_json_atomic(path: Path, content: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True))


def results_table(metrics: dict[str, float], title: str, chosen: str) -> Table:
    table = Table(title=title)
    table.add_column("classifier")
    for column in METRIC_COLUMNS:
        table.add_column(column.replace("/", " "), justify="right")
    for name in CLASSIFIERS:
        label = f"{name} (reported)" if name == chosen else name
        table.add_row(label, *(f"{100 * metrics[f'{name}/{c}']:.2f}" for c in METRIC_COLUMNS))
    return table


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [hydra.utils.instantiate(node) for node in (group or {}).values() if "_target_" in node]


def build(cfg: DictConfig) -> tuple[ZSLDataModule, IZF]:
    """The data (read and validated now, before any work) and a fresh model sized to it."""
    datamodule = ZSLDataModule(**OmegaConf.to_container(cfg.dataset, resolve=True, throw_on_missing=True))
    datamodule.setup("fit")
    model = IZF(num_classes=len(datamodule.semantics), feature_dim=datamodule.features.shape[1],
                semantic_dim=datamodule.semantics.shape[1],
                **OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True))
    return datamodule, model


def train(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    log.info("run directory: %s", output_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    datamodule, model = build(cfg)
    log.info("data %s: %s", datamodule.data.name, datamodule.data.summary())
    with atomic_path(output_dir / "config.yaml") as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)

    loggers = _instantiate_all(cfg.get("logger"))
    for logger in loggers:  # the whole experiment, not only the model's hyperparameters
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False,
                                                 callbacks=_instantiate_all(cfg.get("callbacks")))
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # Evaluation uses the final weights of the fixed schedule (no selection on test data).
    L.seed_everything(cfg.seed, workers=True)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = model.test_metrics

    for logger in loggers:
        if isinstance(logger, WandbLogger):  # one W&B run per job, also within a multirun
            logger.experiment.finish()

    write_json_atomic(output_dir / "metrics.json", metrics)
    task = ("validation task: seen classes only, no test data" if datamodule.hparams.split == "validation"
            else "test splits")
    Console().print(results_table(metrics, f"IZF on {datamodule.data.name}, {task} (%)", cfg.model.classifier))
    log.info("metrics written to %s", output_dir / "metrics.json")
    return metrics
