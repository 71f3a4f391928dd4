"""Checkpoints that survive being killed, are refused when they do not fit, and a clean stop on
SIGTERM, Ctrl-C or a cluster's preemption signal, with a checkpoint to resume from."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from izf.errors import ConfigError
from izf.io import atomic_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write beside the target, flush to disk, rename. Hand-written because Lightning's local save
    goes through an fsspec transaction that writes to the system temp folder and then moves the
    file: across filesystems that move is a copy, so a kill during it leaves a truncated
    checkpoint under the final name (readable as 'last.ckpt' by the next resume)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())


def check_checkpoint(path: str | Path, model: L.LightningModule) -> None:
    """Refuse, before any work, a checkpoint that is missing, unreadable, or of another model."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file")
    try:
        # weights_only: never runs a foreign pickle; mmap: shapes are read, tensor data is not (Lightning
        # loads the file for real right after, so a resume does not read a large checkpoint twice)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch/pickle raise many types for a damaged or foreign file
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"ckpt_path={path}: not a Lightning checkpoint (no 'state_dict')")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"ckpt_path={path}: a checkpoint of another model: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]} (compare its config's model.flow with this run's)")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ConfigError(f"ckpt_path={path}: '{name}' has shape {tuple(state[name].shape)} there and "
                              f"{tuple(tensor.shape)} here: another dataset or model.flow size")


class SaveOnInterrupt(L.Callback):
    """On SIGTERM, finish the current step, write last.ckpt and stop: Lightning then ends fit with
    its SIGTERMException, which the run reports as 'interrupted, resumable' (run.py). Lightning's own
    SIGTERM handler is deferred to the end of the step, right before the save: called at once, it
    could mark the run stopped after this callback's check, and Lightning would stop one step past
    the checkpoint (seen in CI: last.ckpt at step 50, stopped at 51).

    On Ctrl-C (SIGINT) the same, through `interrupted`: fit ends normally after that step and the run
    reports it the same way. (Lightning's own Ctrl-C handling stops mid-step and writes nothing.) A
    second Ctrl-C stops at once.

    On the preemption signal of a cluster job launched by submitit (launcher=slurm or local; USR2
    unless $SUBMITIT_PREEMPT_SIGNAL says otherwise), whose handler requeues the job and exits at
    once: finish the current step and write last.ckpt first, then hand over to that handler. The
    requeued job starts again with ckpt_path=last (the launcher configs set it) and resumes from
    that checkpoint, in its own run directory."""

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.saved_to: Path | None = None
        self.interrupted = False  # Ctrl-C arrived: the run stops after this step
        self._preempted: tuple | None = None  # (handler to hand over to, signum, frame)
        self._sigterm: tuple | None = None  # likewise, Lightning's SIGTERM handler
        self._sigint: Any = None  # the SIGINT handler before fit, put back after it

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():  # only there can handlers be set
            return
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        number = getattr(signal, f"SIG{name}", None)
        previous = signal.getsignal(number) if number is not None else None
        if callable(previous):  # someone (submitit) acts on it: defer that to the end of the step
            signal.signal(number, self._recorder("_preempted", previous))
        self._sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning sets its SIGTERM handler after on_fit_start and restores the one before it after fit
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread() and callable(lightning_handler):
            signal.signal(signal.SIGTERM, self._recorder("_sigterm", lightning_handler))

    def _recorder(self, attribute: str, handler: Any):
        """A signal handler that only records the signal in `attribute`, for `handler` to be called with
        it at the end of the step (on_train_batch_end)."""
        return lambda signum, frame: setattr(self, attribute, (handler, signum, frame))

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C: at once
        self.interrupted = True
        log.warning("Ctrl-C: stopping after this step to write last.ckpt (Ctrl-C again stops at once)")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._sigterm:
            handler, signum, frame = self._sigterm
            handler(signum, frame)  # Lightning: received_sigterm, and it stops at the end of this step
        if (trainer.received_sigterm or self.interrupted or self._preempted) and self.saved_to is None:
            self.saved_to = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(self.saved_to)
            reason = "SIGTERM" if trainer.received_sigterm else "Ctrl-C" if self.interrupted else "preempted"
            log.warning("%s: saved %s at step %d; resume with ckpt_path=last and the same hydra.run.dir",
                        reason, self.saved_to, trainer.global_step)
        if self.interrupted:
            trainer.should_stop = True
        if self._preempted:
            handler, signum, frame = self._preempted
            handler(signum, frame)  # submitit: requeue this job, then exit

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._sigint is not None:  # after fit, Ctrl-C is Python's KeyboardInterrupt again
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None
