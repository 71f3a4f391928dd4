"""The LightningDataModule serving a ZSL benchmark: shuffled trainval batches for the flow, the
full test_seen / test_unseen sets for evaluation, and the class semantics with the seen/unseen
class index sets."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from izf.data import generate
from izf.data.dataset import ZSLData
from izf.data.xlsa17 import load_xlsa17
from izf.errors import ConfigError, DatasetError

SOURCES = ("xlsa17", "synthetic", "toy")
SCALINGS = ("minmax", "none")


def minmax_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension offset and scale mapping x to [0, 1]; constant dimensions keep scale 1."""
    low, high = x.min(axis=0), x.max(axis=0)
    span = high - low
    return low, np.where(span > 0, span, 1.0)


def scale(name: str, fit_on: np.ndarray, apply_to: np.ndarray) -> np.ndarray:
    if name == "none":
        return apply_to
    low, span = minmax_fit(fit_on)
    return ((apply_to - low) / span).astype(np.float32)


class ZSLDataModule(L.LightningDataModule):
    def __init__(self, name: str, source: str = "xlsa17", root: str | None = None,
                 generator: dict[str, Any] | None = None, semantics_key: str = "att",
                 feature_scaling: str = "minmax", semantic_scaling: str = "none",
                 batch_size: int = 256, eval_batch_size: int = 8192, batches_per_epoch: int = 1000):
        super().__init__()
        if source not in SOURCES:
            raise DatasetError(f"dataset.source must be one of {SOURCES}, got '{source}'")
        for key, value in (("feature_scaling", feature_scaling), ("semantic_scaling", semantic_scaling)):
            if value not in SCALINGS:
                raise DatasetError(f"dataset.{key} must be one of {SCALINGS}, got '{value}'")
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
            return generate.synthetic(**(hp.generator or {}))
        if hp.source == "toy":
            return generate.toy(**(hp.generator or {}))
        return load_xlsa17(hp.root, name=hp.name, semantics_key=hp.semantics_key)

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

    def train_dataloader(self) -> DataLoader:
        # Whole batches are sliced from the tensors at once (batch_size=None + a BatchSampler):
        # no per-sample collation. An "epoch" is `batches_per_epoch` batches drawn from repeated
        # reshufflings (each a full pass): training length is set by max_steps, and Lightning's
        # per-epoch overhead would dominate on small datasets with one-pass epochs.
        dataset = TensorDataset(*self.split("trainval"))
        batch_size = min(self.hparams.batch_size, len(dataset))
        passes = -(-self.hparams.batches_per_epoch * batch_size // len(dataset))  # ceil
        batches = BatchSampler(RandomSampler(dataset, num_samples=passes * len(dataset)), batch_size, drop_last=True)
        return DataLoader(dataset, sampler=batches, batch_size=None)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(TensorDataset(*self.split(name)), batch_size=self.hparams.eval_batch_size)
                for name in ("test_seen", "test_unseen")]
