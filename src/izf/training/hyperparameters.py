"""The model's hyperparameters: the allowed values of every model.<key>, checked before any work so
a bad override is refused in one line that names the key, the keys each method reads (any other,
e.g. a typo added with `+model.loss.semantc=1`, is refused rather than stored and ignored), and the
defaults of keys added after the first release (older checkpoints and configs keep the paper's
behaviour)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch

from izf.errors import ConfigError

NONFINITE_ACTIONS = ("stop", "skip")
MMD_BANDWIDTHS = ("median", "fixed")
LOSS_SCALINGS = ("normalised", "paper")
# Loss keys added after the first release: older checkpoints and configs get the paper's behaviour.
LOSS_DEFAULTS = {"scaling": "paper", "mmd_bandwidth": "fixed", "negative_start": 0, "centre": "batch"}
CENTRES = ("batch", "dataset")
NONFINITE_DEFAULTS = {"action": "stop", "lr_factor": 0.5, "max_skips": 10}
GAUSSIAN_DEFAULTS = {"shrinkage": 0.0, "widening": 0.0}  # IZF's Gaussian classifier, for checkpoints from before it


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(low: int, high: float = math.inf):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


# model.<key>: (test, what is expected). Checked before any work, so a bad override is one line.
HYPERPARAMETER_RULES = {
    "flow.blocks": (_count(1, 64), "an integer in 1..64 (the paper uses 10; each block is two couplings)"),
    "flow.hidden": (_count(1), "an integer ≥ 1"),
    "flow.clamp": (_positive, "a number > 0"),
    "flow.init_std": (_non_negative, "a number ≥ 0"),
    "flow.mixing": (lambda v: v in ("permutation", "lu"), "permutation or lu"),
    "flow.permutation_seed": (_count(0), "an integer ≥ 0"),
    "flow.actnorm": (lambda v: isinstance(v, bool), "true or false"),
    "loss.semantic": (_non_negative, "a weight ≥ 0 (0 turns the term off)"),
    "loss.negative": (_non_negative, "a weight ≥ 0 (0 turns the term off)"),
    "loss.centralising": (_non_negative, "a weight ≥ 0 (0 turns the term off)"),
    "loss.mmd_scales": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(_positive, v)),
                        "a non-empty list of kernel scales > 0"),
    "loss.negative_margin": (lambda v: v is None or _positive(v), "null or a number > 0"),
    "loss.negative_start": (_count(0), "an integer ≥ 0 (the step at which the negative term switches on)"),
    "loss.mmd_bandwidth": (lambda v: v in MMD_BANDWIDTHS, " or ".join(MMD_BANDWIDTHS)),
    "loss.scaling": (lambda v: v in LOSS_SCALINGS, " or ".join(LOSS_SCALINGS)),
    "loss.centre": (lambda v: v in CENTRES, " or ".join(CENTRES)),
    "loss.mmd_unbiased": (lambda v: isinstance(v, bool), "true or false"),
    "optimizer.lr": (_positive, "a learning rate > 0"),
    "optimizer.weight_decay": (_non_negative, "a number ≥ 0"),
    "jitter": (_non_negative, "a number ≥ 0"),
    "calibration_gamma": (lambda v: all(_finite(g) for g in (v.values() if isinstance(v, dict) else [v])),
                          "a finite number, or one per classifier"),
    "softmax.n_gen": (_count(1), "an integer ≥ 1"),
    "softmax.epochs": (_count(1), "an integer ≥ 1"),
    "softmax.lr": (_positive, "a learning rate > 0"),
    "softmax.batch_size": (_count(1), "an integer ≥ 1"),
    "softmax.weight_decay": (_non_negative, "a number ≥ 0"),
    "softmax.generation_batch": (_count(1), "an integer ≥ 1"),
    "softmax.init_std": (lambda v: v is None or _positive(v), "null (torch's default) or a std > 0"),
    "softmax.seed": (_count(0), "an integer ≥ 0"),
    "softmax.balanced": (lambda v: isinstance(v, bool), "true or false"),
    "softmax.temperature": (_non_negative, "a number ≥ 0 (1: z ~ N(0, I) as trained; 0: the class prototypes)"),
    "unseen_centre": (lambda v: _finite(v) and 0 <= v <= 1,
                      "a weight in [0, 1] (0: generated unseen features as the flow makes them; 1: re-centred on "
                      "the attribute map's prediction of their means)"),
    "gaussian.shrinkage": (_non_negative, "a number ≥ 0 (κ: 0 keeps each seen class's measured mean)"),
    "gaussian.widening": (_non_negative, "a number ≥ 0 (ω: 0 gives unseen classes the seen classes' variance)"),
    "nonfinite.action": (lambda v: v in NONFINITE_ACTIONS, " or ".join(NONFINITE_ACTIONS)),
    "nonfinite.lr_factor": (lambda v: _positive(v) and v < 1, "a factor in (0, 1)"),
    "nonfinite.max_skips": (_count(0), "an integer ≥ 0"),
}


def check_hyperparameters(hparams: dict[str, Any]) -> None:
    """Each rule whose key is given (absent keys take the code's defaults)."""
    absent = object()
    for key, (valid, expected) in HYPERPARAMETER_RULES.items():
        value = hparams
        for part in key.split("."):
            value = value.get(part, absent) if isinstance(value, dict) else absent
        if value is not absent and not valid(value):
            raise ConfigError(f"model.{key}={value!r}: expected {expected}")


def rule_keys(group: str) -> set[str]:
    """The keys of model.<group> that have a rule above: for IZF, all that it reads."""
    return {key.split(".", 1)[1] for key in HYPERPARAMETER_RULES if key.startswith(f"{group}.")}


ADAM_KEYS = tuple(name for name in inspect.signature(torch.optim.Adam).parameters if name != "params")


def refuse_unknown_keys(prefix: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse a key a method does not read, naming it and the ones it does."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown setting; {prefix} takes {', '.join(sorted(allowed))}")


def check_keys(settings: dict[str, Any], allowed: dict[str, Iterable[str]]) -> None:
    """Each nested setting (model.<group>) holds only the keys `allowed` names for it."""
    for group, keys in allowed.items():
        refuse_unknown_keys(f"model.{group}", settings.get(group) or {}, keys)


IZF_KEYS = {"flow": rule_keys("flow"), "loss": rule_keys("loss"), "optimizer": ADAM_KEYS,
            "softmax": rule_keys("softmax"), "nonfinite": rule_keys("nonfinite"), "gaussian": rule_keys("gaussian")}
