"""Train IZF and evaluate it under the (G)ZSL protocol: python train.py [overrides]."""

import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from izf.errors import IZFError
from izf.training.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)["gzsl/H"]  # returned for sweepers that optimise a value
    except IZFError as err:  # bad data or config: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except MissingMandatoryValue as err:  # a `???` key left unset, e.g. dataset=custom without a root
        print(f"error: set {err.full_key}=... on the command line (it has no default)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
