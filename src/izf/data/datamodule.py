"""The LightningDataModule serving a ZSL benchmark: shuffled trainval batches for the flow, the
full test_seen / test_unseen sets for evaluation, and the class semantics with the seen/unseen
class index sets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor

from izf.data import generate
from izf.data.benchmarks import expected_sizes
from izf.data.dataset import ZSLData
from izf.data.splits import validation_split
from izf.data.xlsa17 import load_xlsa17, validate
from izf.errors import ConfigError, DatasetError
from izf.model.losses import class_means

SOURCES = ("xlsa17", "synthetic", "toy", "stand_in")
EVALUATION_SPLITS = ("test", "validation")
SCALINGS = ("minmax", "standard", "none")


def minmax_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension offset and scale mapping x to [0, 1]; constant dimensions keep scale 1."""
    low, high = x.min(axis=0), x.max(axis=0)
    span = high - low
    return low, np.where(span > 0, span, 1.0)


def scale(name: str, fit_on: np.ndarray, apply_to: np.ndarray) -> np.ndarray:
    if name == "none":  # a private float32 copy (the input may be a read-only memory map)
        return np.array(apply_to, dtype=np.float32)
    if name == "standard":  # zero mean, unit variance per dimension
        mean, std = fit_on.mean(axis=0), fit_on.std(axis=0)
        return ((apply_to - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    low, span = minmax_fit(fit_on)
    return ((apply_to - low) / span).astype(np.float32)


class ShuffledBatches:
    """Training batches sliced from tensors that stay where they are (on the GPU when training
    there): whole passes over the data in a fresh random order, `num_batches` batches per epoch
    (training length is set by max_steps). Replaces a DataLoader, whose per-sample collation and
    per-batch transfers would cost more than a small flow step.

    Batch b of the whole run is a pure function of (seed, b): pass p = b // batches_per_pass is
    ordered by a generator seeded with (seed, p). So a run resumed from a checkpoint, mid-epoch
    included, sees exactly the batches an uninterrupted run would: the checkpoint stores the seed
    and the next batch index (Lightning saves state_dict() of a loader that has one), and
    `progress()` (batches the trainer has processed) gives the start of every later epoch.
    With several processes (DDP) every one walks the same sequence and takes its share of each
    batch, so the global batch is the same as in one process.
    """

    def __init__(self, *tensors: Tensor, batch_size: int, num_batches: int, seed: int = 0,
                 progress: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1):
        self.tensors = tensors
        self.batch_size = min(batch_size, len(tensors[0]))
        if self.batch_size % world_size:
            raise ConfigError(f"dataset.batch_size={batch_size} must be a multiple of the {world_size} processes "
                              "training together (each takes an equal share of every batch)")
        self.rank, self.world_size = rank, world_size
        self.num_batches = num_batches
        self.seed = seed
        self.progress = progress
        self._resume_at: int | None = None
        self._order: tuple[int, Tensor] | None = None  # (pass, its permutation)

    def __len__(self) -> int:
        return self.num_batches

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "next_batch": self.progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self._resume_at = state["seed"], state["next_batch"]

    def rows(self, batch: int) -> Tensor:
        n = len(self.tensors[0])
        per_pass = n // self.batch_size
        epoch_pass, index = divmod(batch, per_pass)
        if self._order is None or self._order[0] != epoch_pass:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch_pass) % 2**63)
            self._order = (epoch_pass, torch.randperm(n, generator=generator).to(self.tensors[0].device))
        return self._order[1][index * self.batch_size:(index + 1) * self.batch_size]

    def __iter__(self):
        start = self._resume_at if self._resume_at is not None else self.progress()
        self._resume_at = None
        for batch in range(start, (start // self.num_batches + 1) * self.num_batches):  # to the epoch's end
            rows = self.rows(batch)[self.rank::self.world_size]  # multi-GPU: this process's share
            yield tuple(t[rows] for t in self.tensors)


class ZSLDataModule(L.LightningDataModule):
    """split='test' trains on trainval and evaluates on test_seen/test_unseen (the reported
    numbers); split='validation' trains and evaluates inside the seen classes (splits.py), for
    choosing hyperparameters without looking at test data."""

    def __init__(self, name: str, source: str = "xlsa17", root: str | None = None,
                 generator: dict[str, Any] | None = None, semantics: str = "att", split: str = "test",
                 validation: dict[str, Any] | None = None, benchmark: str | None = None,
                 expect: dict[str, Any] | None = None,
                 cache: bool = True, feature_scaling: str = "minmax", semantic_scaling: str = "none",
                 batch_size: int = 256, eval_batch_size: int = 8192, batches_per_epoch: int = 1000):
        super().__init__()
        choices = {"source": (source, SOURCES), "split": (split, EVALUATION_SPLITS),
                   "feature_scaling": (feature_scaling, SCALINGS), "semantic_scaling": (semantic_scaling, SCALINGS)}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"dataset.{key} must be one of {allowed}, got '{value}'")
        if benchmark:
            expected_sizes(benchmark, semantics)  # an unknown name is refused now, not after reading
        if source == "xlsa17" and not root:
            raise DatasetError(f"dataset '{name}': dataset.root must name an xlsa17 folder")
        if min(batch_size, eval_batch_size, batches_per_epoch) < 1:
            raise ConfigError("dataset.batch_size, eval_batch_size and batches_per_epoch must be ≥ 1, got "
                              f"{batch_size}, {eval_batch_size}, {batches_per_epoch}")
        self.save_hyperparameters()
        self.data: ZSLData | None = None

    def _read(self) -> ZSLData:
        hp = self.hparams
        if hp.source == "synthetic":
            data = generate.synthetic(**(hp.generator or {}))
        elif hp.source == "toy":
            data = generate.toy(**(hp.generator or {}))
        elif hp.source == "stand_in":
            data = generate.like(**(hp.generator or {}))
        else:
            data = load_xlsa17(hp.root, name=hp.name, semantics=hp.semantics, cache=hp.cache)
        expect = expected_sizes(hp.benchmark, hp.semantics) if hp.benchmark else {}
        declared = {key: value for key, value in (hp.expect or {}).items() if value is not None}
        if isinstance(declared.get("semantic_dim"), dict):  # declared per kind of semantics
            declared["semantic_dim"] = declared["semantic_dim"].get(hp.semantics)
        expect |= declared
        data.check_expected(hp.root or hp.source, **expect)
        if hp.split == "validation":
            data = validation_split(data, **(hp.validation or {}))
        # before any work, whatever made the data (a generator's settings, the validation task's draw)
        validate(data, source=f"dataset '{data.name}'")
        return data

    def setup(self, stage: str | None = None) -> None:
        """Read, validate and scale once (min-max fitted on trainval only); later calls are free."""
        if self.data is not None:
            return
        raw = self._read()
        trainval = raw.features[raw.splits["trainval"]]
        self.data = ZSLData(
            name=raw.name, labels=raw.labels, splits=raw.splits, class_names=raw.class_names,
            features=scale(self.hparams.feature_scaling, trainval, raw.features),
            semantics=scale(self.hparams.semantic_scaling, raw.semantics, raw.semantics))
        self.features = torch.from_numpy(self.data.features)
        self.labels = torch.from_numpy(self.data.labels)
        self.semantics = torch.from_numpy(self.data.semantics)
        self.seen_classes = torch.from_numpy(self.data.seen_classes)
        self.unseen_classes = torch.from_numpy(self.data.unseen_classes)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of one split."""
        rows = torch.from_numpy(self.data.splits[name])
        return self.features[rows], self.labels[rows]

    def class_feature_means(self) -> torch.Tensor:
        """Mean trainval feature of each class (C × D; zeros for classes without trainval images)."""
        x, y = self.split("trainval")
        return class_means(x, y, torch.arange(len(self.semantics)))[0]  # the centralising term's own helper

    def train_dataloader(self) -> "ShuffledBatches":
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        progress = (lambda: trainer.fit_loop.epoch_loop.batch_progress.total.processed) if trainer else (lambda: 0)
        # initial_seed(): the run's seed, read without drawing from (and so shifting) the random stream
        return ShuffledBatches(*(t.to(device) for t in self.split("trainval")), batch_size=self.hparams.batch_size,
                               num_batches=self.hparams.batches_per_epoch, seed=torch.initial_seed(),
                               progress=progress, rank=trainer.global_rank if trainer else 0,
                               world_size=trainer.world_size if trainer else 1)
