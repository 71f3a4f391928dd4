"""Where the Hydra configuration lives, in a checkout and in an installed package, and composing
it from Python (the benchmark, tests, notebooks) exactly as train.py does."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from izf.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def start_dir() -> str:
    """The folder the command was started in (conf/paths: ${izf.start_dir:}). Inside a job, Hydra's
    runtime.cwd; before Hydra's config is set, the current folder: a multirun's main process names
    its sweep folder that way, where ${hydra:runtime.cwd} cannot resolve yet, and it has not moved."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


# Registered on import: every process that composes or resolves a config imports this module first.
OmegaConf.register_new_resolver("izf.start_dir", start_dir, replace=True)


def config_dir() -> Path:
    """conf/ of an installed package (pyproject ships the checkout's conf/ as izf/conf), else the
    checkout's own conf/ beside src/ (also what an editable install sees)."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"no Hydra configuration found: neither {_PACKAGE / 'conf'} nor {_PACKAGE.parents[1] / 'conf'} "
                      "holds train.yaml (reinstall the package, or run from a checkout)")


def compose(config_name: str = "train", overrides: list[str] | tuple[str, ...] = ()):
    """The composed config, as `python train.py <overrides>` would see it (with its hydra node,
    so ${hydra:...} interpolations resolve)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg
