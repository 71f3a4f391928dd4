"""The commands, in the package so that an installed izf has them (pyproject's [project.scripts]):
izf-train is `python train.py`, izf-eval is `python eval.py`; the two scripts of a checkout call
these functions. The configuration is the package's (izf.config.config_dir)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from izf.config import config_dir
from izf.training.evaluate import evaluate_checkpoint
from izf.training.run import exit_with_error, run_job, user_error

CONFIG_PATH = str(config_dir())  # absolute: the same configuration whichever file or command starts the job


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """Train a model and evaluate it under the (G)ZSL protocol: izf-train [overrides]."""
    return run_job(cfg)  # GZSL H, for sweepers that optimise a value


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """Evaluate a saved checkpoint: izf-eval ckpt_path=... [dataset=...] [overrides]."""
    try:
        evaluate_checkpoint(cfg)
    except Exception as err:
        if (message := user_error(err)) is None:
            raise
        exit_with_error(message)
