"""Train IZF and evaluate it under the (G)ZSL protocol: python train.py [overrides]."""

import hydra
from omegaconf import DictConfig

from izf.training.run import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)  # GZSL H, for sweepers that optimise a value


if __name__ == "__main__":
    main()
