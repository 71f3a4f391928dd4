"""Where a run's results go besides metrics.json: the configured loggers (W&B set up for users
with and without an account, and for sweeps) and the per-class table and pictures."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig
from torch import Tensor

from izf.data import ZSLDataModule
from izf.evaluation.pictures import PER_CLASS_COLUMNS, per_class_rows, real_vs_generated, toy_scatter
from izf.io import write_csv
from izf.training.base import ZSLModule

log = logging.getLogger(__name__)


def _wandb_logged_in() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())


def instantiate_loggers(cfg: DictConfig) -> list[Any]:
    """The configured loggers. W&B: offline (files in the run directory, `wandb sync` uploads them
    later) unless the user is logged in or WANDB_MODE says otherwise; in a multirun every job is its
    own W&B run, grouped under the sweep's folder name."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not node or "_target_" not in node:
            continue
        extra = {}
        if node._target_.endswith("WandbLogger"):
            if "WANDB_MODE" not in os.environ and not _wandb_logged_in():
                extra["offline"] = True
                log.info("W&B: not logged in, logging offline to %s (upload later: wandb sync)", cfg.paths.output_dir)
            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                sweep = Path(HydraConfig.get().sweep.dir).name
                extra["group"] = node.get("group") or sweep
                extra["name"] = node.get("name") or f"{sweep}/{HydraConfig.get().job.num}"
        logger = hydra.utils.instantiate(node, **extra)
        if isinstance(logger, WandbLogger):
            # Lightning passes wandb.init an `anonymous` setting, which wandb ≥ 0.19 warns has no effect
            logger._wandb_init.pop("anonymous", None)
        loggers.append(logger)
    return loggers


def save_pictures(model: ZSLModule, datamodule: ZSLDataModule, predictions: dict[str, tuple[Tensor, Tensor]],
                  output_dir: Path, loggers: list[Any]) -> None:
    """Per-class accuracies (CSV, W&B table) of the evaluation's GZSL predictions, and pictures
    (PNG, W&B images) of the tested model."""
    rows = per_class_rows(predictions, datamodule.seen_classes, datamodule.unseen_classes,
                          datamodule.data.class_names)
    write_csv(output_dir / "per_class_accuracy.csv", PER_CLASS_COLUMNS, rows)
    pictures = output_dir / "pictures"
    images = {}
    if hasattr(model, "generate"):  # a generative method: where do its features sit beside the real ones?
        images["real_vs_generated"] = real_vs_generated(model, datamodule, pictures / "real_vs_generated.png")
    if hasattr(model, "generate") and datamodule.hparams.source == "toy":
        images["toy"] = toy_scatter(model, datamodule, pictures / "toy.png")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table("per_class_accuracy", columns=PER_CLASS_COLUMNS, data=rows)
            for key, path in images.items():
                logger.log_image(key=f"pictures/{key}", images=[str(path)])
