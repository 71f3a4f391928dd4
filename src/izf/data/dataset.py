"""The in-memory form of a ZSL benchmark, shared by the xlsa17 reader and the generators."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from izf.errors import DatasetError

SPLITS = ("trainval", "test_seen", "test_unseen")
OPTIONAL_SPLITS = ("train", "val")


@dataclass(frozen=True)
class ZSLData:
    """Features of every image, their classes, and the class semantics.

    features: (N, D) float32, one row per image.
    labels: (N,) int64, 0-based class index (xlsa17 label l is class l-1).
    semantics: (C, d_c) float32, row y is c_y.
    splits: name -> 0-based row indices; always trainval/test_seen/test_unseen, train/val if given.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    semantics: np.ndarray
    splits: dict[str, np.ndarray]
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.semantics.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    @property
    def semantic_dim(self) -> int:
        return self.semantics.shape[1]

    @property
    def seen_classes(self) -> np.ndarray:
        """Classes with training samples (those of trainval)."""
        return np.unique(self.labels[self.splits["trainval"]])

    @property
    def unseen_classes(self) -> np.ndarray:
        """Classes of test_unseen."""
        return np.unique(self.labels[self.splits["test_unseen"]])

    def summary(self) -> dict[str, int]:
        return {
            "images": len(self.labels), "classes": self.num_classes,
            "seen": len(self.seen_classes), "unseen": len(self.unseen_classes),
            "feature_dim": self.feature_dim, "semantic_dim": self.semantic_dim,
            **{split: len(idx) for split, idx in self.splits.items()},
        }

    def check_expected(self, source: str, **expected: int | None) -> None:
        """Refuse data that disagree with what the config declares (images, seen, unseen,
        semantic_dim; None = not declared), e.g. a folder of another benchmark."""
        found = self.summary()
        wrong = {key: (value, found[key]) for key, value in expected.items()
                 if value is not None and found[key] != value}
        if wrong:
            details = ", ".join(f"{key} expected {want}, found {got}" for key, (want, got) in wrong.items())
            raise DatasetError(f"{source}: does not match dataset '{self.name}' as configured: {details} "
                               "(wrong folder? dataset.benchmark and dataset.expect say what it must hold)")
