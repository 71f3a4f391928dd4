"""What every zero-shot method in the framework shares (IZF and the baselines): the class
information it is given, and the two calls through which the one evaluation protocol
(izf.evaluation.protocol) tests it. A new method subclasses ZSLModule, sets `classifiers`,
implements `fit_classifiers` and `classifier_scores`, and adds a config under conf/model/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor

from izf.errors import ConfigError

METHOD_KEY = "zsl_method"  # in every checkpoint: the class that wrote it, so eval.py rebuilds the right one


class ZSLModule(L.LightningModule):
    """Subclasses call `super().__init__(num_classes, semantic_dim, classifier, calibration_gamma)`
    first, then `save_hyperparameters()`; hyperparameters must be plain containers (numbers,
    strings, lists, dicts) so checkpoints load with weights_only=True."""

    classifiers: tuple[str, ...] = ()  # metrics.json keys "<classifier>/<metric>"; model.classifier picks one

    def __init__(self, num_classes: int, semantic_dim: int, classifier: str,
                 calibration_gamma: float | dict[str, float]):
        super().__init__()
        if classifier not in self.classifiers:
            raise ConfigError(f"model.classifier must be one of {self.classifiers}, got '{classifier}'")
        self.check_calibration_gamma(calibration_gamma)
        # Class information travels with the checkpoint, so a reloaded model predicts on its own.
        self.register_buffer("class_semantics", torch.zeros(num_classes, semantic_dim))
        self.register_buffer("seen_mask", torch.zeros(num_classes, dtype=torch.bool))

    @classmethod
    def check_calibration_gamma(cls, calibration_gamma: float | dict[str, float]) -> None:
        if isinstance(calibration_gamma, dict) and not set(calibration_gamma) <= set(cls.classifiers):
            raise ConfigError(f"model.calibration_gamma={calibration_gamma}: expected one number, or one per "
                              f"classifier of {cls.__name__} ({', '.join(cls.classifiers)})")

    # ---- class information -------------------------------------------------------------------
    def set_classes(self, semantics: Tensor, seen_classes: Tensor) -> None:
        self.class_semantics.copy_(semantics)
        self.seen_mask.zero_()
        self.seen_mask[seen_classes] = True

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.prepare(datamodule, stage)

    def prepare(self, datamodule, stage: str = "fit") -> None:
        """Take what the method needs from the data before fitting or testing (Lightning calls
        this through setup, on every process, before the model is wrapped for DDP)."""
        datamodule.setup(stage)
        self.set_classes(datamodule.semantics, datamodule.seen_classes)

    def _class_sets(self) -> tuple[Tensor, Tensor]:
        """(seen, unseen) class indices. nonzero() waits for the device, so they are computed once
        per device and per change of the mask (its in-place version counter), not every step."""
        key = (self.seen_mask.device, self.seen_mask._version)
        if getattr(self, "_class_sets_key", None) != key:
            self._class_sets_cache = (self.seen_mask.nonzero().squeeze(1), (~self.seen_mask).nonzero().squeeze(1))
            self._class_sets_key = key
        return self._class_sets_cache

    @property
    def seen_classes(self) -> Tensor:
        return self._class_sets()[0]

    @property
    def unseen_classes(self) -> Tensor:
        return self._class_sets()[1]

    # ---- what the evaluation protocol calls -----------------------------------------------------
    @property
    def classifier_seed(self) -> int:
        """The seed of the random stream the classifiers are fitted on (their own, so evaluation
        gives the same numbers after training, after a resume and in eval.py)."""
        return int(self.hparams.get("softmax", {}).get("seed", 0))

    def fit_classifiers(self, x_seen: Tensor, y_seen: Tensor,
                        progress: Callable[[str, int], Any]) -> Any:
        """After training, with the method's weights fixed: whatever its classifiers need from the
        real seen training features (e.g. softmax classifiers on real seen + generated unseen)."""
        raise NotImplementedError

    def classifier_scores(self, fitted: Any, x: Tensor) -> dict[str, Tensor]:
        """Scores (N × all classes) of every classifier for every task: {"<classifier>/gzsl": …,
        "<classifier>/zsl": …}; the protocol restricts ZSL to the unseen classes itself."""
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[METHOD_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
