"""Per-dataset choices, made on the dataset's own validation task before the final run.

What a method must choose per dataset (the calibrated-stacking shift γ always; for IZF also how its
classifier's training features are generated; for ESZSL its regularisers and feature scaling) is
listed in conf/_internal/select/<model>.yaml. Before a test run, `train.py` trains the same configuration on
the validation task (seen classes only: izf.data.splits), scores every candidate there, takes the
best by validation GZSL H, and then trains on trainval with it. Nothing from the test splits is used.

Two kinds of candidates, so that little is trained twice:
- `refit`: settings of the classifiers fitted after training (sampling temperature, re-centring,
  classifier weight decay). Every combination is scored on the one model trained on the validation
  task, by refitting its classifiers only.
- `retrain`: settings the training itself depends on (ESZSL's closed form); a model per combination.
γ needs neither: the validation run's stacking curve gives each classifier's best shift.

A key given on the command line is pinned: it is not chosen, and the choice says so.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from izf.config import config_dir
from izf.errors import ConfigError
from izf.io import write_json

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"  # in the run directory: what was chosen, reused when the run resumes
SELECTION_KEY = "selection"  # in metrics.json: the same
GAMMA_KEY = "model.calibration_gamma"
CLASSIFIER_KEY = "model.classifier"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def pinned(key: str, overrides: Iterable[str]) -> bool:
    """Whether a command-line override sets `key`, a value inside it, or a node that holds it; choosing
    a config group's option (dataset=cub, model=eszsl) pins nothing."""
    for given in map(_override_key, overrides):
        if (config_dir() / given).is_dir():  # a group choice
            continue
        if given == key or key.startswith(given + ".") or given.startswith(key + "."):
            return True
    return False


def _grid(candidates: dict[str, list] | None, overrides: list[str]) -> tuple[list[str], list[tuple]]:
    """The keys to choose (those not pinned) and every combination of their candidate values."""
    keys = [key for key in (candidates or {}) if not pinned(key, overrides)]
    for key in keys:
        if not isinstance(candidates[key], (list, tuple)) or not candidates[key]:
            raise ConfigError(f"select.{key}: expected a non-empty list of candidate values, got {candidates[key]!r}")
    return keys, list(itertools.product(*(candidates[key] for key in keys)))


def applies(cfg: DictConfig) -> bool:
    """select.enabled: true, false, or auto (on for a test run on an xlsa17 folder, where a
    validation task exists and the run's numbers are the ones reported)."""
    enabled = cfg.select.get("enabled", "auto")
    if enabled not in (True, False, "auto"):
        raise ConfigError(f"select.enabled={enabled!r}: expected true, false or auto")
    if cfg.dataset.split != "test":
        return False
    if enabled == "auto":
        return cfg.dataset.source == "xlsa17"
    return bool(enabled)


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    OmegaConf.update(cfg, key, value, merge=False, force_add=False)


def _gamma_keys(cfg: DictConfig, classifiers: Iterable[str]) -> dict[str, str]:
    """classifier -> the config key of its γ (IZF keeps one per classifier, the baselines one number)."""
    gamma = OmegaConf.select(cfg, GAMMA_KEY)
    return {name: f"{GAMMA_KEY}.{name}" if isinstance(gamma, DictConfig) else GAMMA_KEY for name in classifiers}


def choose(cfg: DictConfig, overrides: list[str], train_and_evaluate: Callable[[DictConfig], Any],
           rescore: Callable[[Any, DictConfig], dict[str, float]]) -> dict[str, Any]:
    """Run the validation task of `cfg` and return the selection: {"choices": {key: value},
    "pinned": [...], "candidates": [{settings, validation metrics}], "validation/gzsl/H": best, "time/s"}.

    train_and_evaluate(config) trains a model on the config's data and returns (model, metrics);
    rescore(model, config) refits its classifiers with the config's settings and returns the
    validation metrics with each classifier's best γ."""
    started = time.perf_counter()
    spec = OmegaConf.to_container(cfg.select, resolve=True)
    validation = copy.deepcopy(cfg)
    _set(validation, "dataset.split", "validation")
    retrain_keys, retrain_grid = _grid(spec.get("retrain"), overrides)
    refit = dict(spec.get("refit") or {})
    # Which classifier reports needs no refit: every evaluation scores all of them.
    classifiers = list(refit.pop(CLASSIFIER_KEY, None) or [cfg.model.classifier])
    if pinned(CLASSIFIER_KEY, overrides):
        classifiers = [cfg.model.classifier]
    refit_keys, refit_grid = _grid(refit, overrides)
    if not all(key.startswith("model.") for key in refit_keys):  # a refit changes the trained model's settings only
        raise ConfigError(f"select.refit: {[k for k in refit_keys if not k.startswith('model.')]} are not model.* "
                          "settings; what the training depends on belongs in select.retrain")
    candidates = []
    for retrain_values in retrain_grid:
        trial = copy.deepcopy(validation)
        for key, value in zip(retrain_keys, retrain_values):
            _set(trial, key, value)
        model, as_trained = train_and_evaluate(trial)
        trained_values = tuple(OmegaConf.select(trial, key) for key in refit_keys)
        for refit_values in refit_grid:
            metrics = as_trained
            if refit_values != trained_values:
                for key, value in zip(refit_keys, refit_values):
                    _set(trial, key, value)
                metrics = rescore(model, trial)
            for classifier in classifiers:
                settings = dict(zip(retrain_keys + refit_keys, retrain_values + refit_values))
                settings |= {CLASSIFIER_KEY: classifier} if len(classifiers) > 1 else {}
                candidates.append({"settings": settings, "classifier": classifier,
                                   "validation/gzsl/H": metrics[f"{classifier}/best_gamma/gzsl/H"],
                                   "gamma": metrics[f"{classifier}/best_gamma"], "metrics": metrics})
                log.info("validation: %s → H %.4f at its best γ %.4g", settings or "(as configured)",
                         candidates[-1]["validation/gzsl/H"], candidates[-1]["gamma"])
    best = max(candidates, key=lambda c: c["validation/gzsl/H"])
    choices = dict(best["settings"])
    metrics = best["metrics"]
    gamma_keys = _gamma_keys(cfg, [key.split("/")[0] for key in metrics if key.endswith("/best_gamma")])
    for name, key in gamma_keys.items():
        if spec.get("gamma", True) and not pinned(key, overrides) and (name == best["classifier"] or key != GAMMA_KEY):
            choices[key] = metrics[f"{name}/best_gamma"]
    chosen_pinned = [key for key in [*(spec.get("retrain") or {}), *(spec.get("refit") or {}), *gamma_keys.values()]
                     if pinned(key, overrides)]
    for candidate in candidates:  # the table of what was tried, without the full metrics of each
        del candidate["metrics"]
    return {"choices": choices, "pinned": sorted(set(chosen_pinned)), "validation/gzsl/H": best["validation/gzsl/H"],
            "validation/zsl/T1": metrics[f"{best['classifier']}/zsl/T1"], "candidates": candidates,
            "time/s": time.perf_counter() - started}


def apply(cfg: DictConfig, selection: dict[str, Any]) -> None:
    for key, value in selection["choices"].items():
        _set(cfg, key, value)


def load_or_choose(cfg: DictConfig, output_dir: Path, overrides: list[str], train_and_evaluate, rescore,
                   multi_process: bool = False) -> dict[str, Any] | None:
    """The run's selection, applied to `cfg`: the one saved in its directory (a resumed run keeps
    its choices), or a new one, saved before the final training starts. None where none applies."""
    if not applies(cfg):
        return None
    if multi_process:  # the other processes would wait for one that trains alone
        log.warning("select.enabled=auto chooses nothing under a multi-process trainer: the configured values are "
                    "used. Choose them first with dataset.split=validation on one device (it prints them)")
        return None
    keys = [key for key in [*(cfg.select.get("retrain") or {}), *(cfg.select.get("refit") or {})]
            if not pinned(key, overrides)]
    if not keys and not cfg.select.get("gamma", True):
        return None  # nothing to choose: no validation run
    saved = output_dir / SELECTION_FILE
    if saved.is_file():
        selection = json.loads(saved.read_text())
        log.info("the choices this run made on its validation task (%s): %s", saved, selection["choices"])
    else:
        log.info("choosing %s on the validation task first (pin a value on the command line to keep it; "
                 "select.enabled=false to skip)", ", ".join([*keys, "γ"]))
        selection = choose(cfg, overrides, train_and_evaluate, rescore)
        write_json(saved, selection)
    apply(cfg, selection)
    return selection


def summary(selection: dict[str, Any]) -> str:
    """One line: what the validation task chose, its score, and its cost."""
    choices = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in selection["choices"].items())
    pinned_keys = f"; kept as given: {', '.join(selection['pinned'])}" if selection["pinned"] else ""
    return (f"chosen on the validation task ({len(selection['candidates'])} candidates, "
            f"{selection['time/s']:.0f} s): {choices or 'nothing to choose'}{pinned_keys} "
            f"(validation H {100 * selection['validation/gzsl/H']:.2f})")
