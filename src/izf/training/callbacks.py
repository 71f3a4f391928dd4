"""Callbacks the IZF module brings to any Trainer it is fitted with (IZF.configure_callbacks):
exact resumption of the random streams, and the guard that keeps NaN/inf out of the weights; and
the progress bar the callbacks config adds."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import RichProgressBar

from izf.errors import DivergenceError, require_finite_weights
from izf.training.hyperparameters import NONFINITE_DEFAULTS

log = logging.getLogger(__name__)


class RandomStreams(L.Callback):
    """Saves the Python, NumPy, torch and CUDA random states in each checkpoint and restores them
    on resume, so a resumed run draws the same batches and noise as an uninterrupted one.
    (Lightning restores the loops' progress but not these streams.)"""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)  # weights_only-safe
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state,
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, position, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(states["python"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


class NonFiniteGuard(L.Callback):
    """After backward, before clipping and Adam: a non-finite loss term (the module's `step_terms`)
    or gradient stops the run, naming the step and the term, or with action=skip drops this update
    and lowers the learning rate (at most max_skips times). One device sync per step, the price of
    catching it within the step. Checkpoints with non-finite weights are never written."""

    def __init__(self, action: str = "stop", lr_factor: float = 0.5, max_skips: int = 10):
        self.settings = {**NONFINITE_DEFAULTS, "action": action, "lr_factor": lr_factor, "max_skips": max_skips}
        self.skipped_steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        terms = pl_module.step_terms
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        # A finite gradient norm means every element is finite: one pass, where a check per tensor took
        # 7× as long (python -m izf.bench). Where the norm is not finite the elements are looked at:
        # huge but finite gradients overflow a float32 norm (seen at ~1e18 on AWA2-sized data) and
        # are clipping's business, not divergence.
        finite_terms = [torch.isfinite(v) for v in terms.values()]
        finite_norm = [torch.isfinite(torch.nn.utils.get_total_norm(grads))] if grads else []
        if torch.stack([*finite_terms, *finite_norm]).all():
            return
        if torch.stack([*finite_terms, *(torch.isfinite(g).all() for g in grads)]).all():
            return
        bad_terms = {name: float(v.detach()) for name, v in terms.items() if not torch.isfinite(v)}
        what = (", ".join(f"loss term '{name}' is {v}" for name, v in bad_terms.items()) if bad_terms
                else "the gradients are non-finite while every loss term is finite")
        cfg, step = self.settings, trainer.global_step
        if cfg["action"] == "skip" and self.skipped_steps < cfg["max_skips"]:
            self.skipped_steps += 1
            for p in pl_module.parameters():
                p.grad = None  # Adam leaves parameters without a gradient untouched
            for group in optimizer.param_groups:
                group["lr"] *= cfg["lr_factor"]
            log.warning("step %d: %s; skipped the update, learning rate now %.3g (%d of at most %d skips)",
                        step, what, optimizer.param_groups[0]["lr"], self.skipped_steps, cfg["max_skips"])
            return
        hint = "" if cfg["action"] == "stop" else f" after {self.skipped_steps} skipped steps"
        raise DivergenceError(f"training diverged at step {step}: {what}{hint}; the weights were not "
                              "updated with it. Lower model.optimizer.lr, or set model.nonfinite.action=skip")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        require_finite_weights(pl_module, "write a checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = state_dict.get("skipped_steps", 0)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting the run's steps out of trainer.max_steps. A run is a
    number of steps (max_epochs: -1) over epochs of dataset.batches_per_epoch batches, and Lightning's
    own bar counts the current epoch's batches: "Epoch 0/-2", 1000 of a 1500-step run, 120/21 after
    a resume."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's: "Epoch <n>/<max_epochs - 1>"
        return "Training"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.train_progress_bar_id is None:  # one bar for the run: the next epoch does not reset it
            super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed  # the run's, those before a resume too
        super().on_train_batch_end(trainer, pl_module, outputs, batch, done - 1)
