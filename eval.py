"""Evaluate a saved IZF checkpoint: python eval.py ckpt_path=... [dataset=...] [overrides]."""

import hydra
from omegaconf import DictConfig

from izf.training.evaluate import evaluate_checkpoint
from izf.training.run import exit_with_error, user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_checkpoint(cfg)
    except Exception as err:
        if (message := user_error(err)) is None:
            raise
        exit_with_error(message)


if __name__ == "__main__":
    main()
