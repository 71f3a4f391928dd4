"""The validation task: model selection on the seen classes only, so no test image is ever used.

The seen classes are divided into training classes and pseudo-unseen validation classes. The new
task keeps the shape of the real one: `trainval` = images of the training classes minus a held-out
share, `test_seen` = that held-out share, `test_unseen` = all images of the validation classes.
Only trainval images are used: xlsa17's own train_loc/val_loc also index test_seen images (their
union is trainval ∪ test_seen), so only their class partition is taken from them.
"""

from __future__ import annotations

import numpy as np

from izf.data.dataset import ZSLData
from izf.errors import ConfigError, DatasetError

CLASS_CHOICES = ("auto", "xlsa17", "random")


def _xlsa17_classes(data: ZSLData) -> np.ndarray:
    """The validation classes of xlsa17's train_loc/val_loc (class-disjoint by design)."""
    seen = data.seen_classes
    train = np.intersect1d(np.unique(data.labels[data.splits["train"]]), seen)
    val = np.intersect1d(np.unique(data.labels[data.splits["val"]]), seen)
    if np.intersect1d(train, val).size or not val.size or not np.setdiff1d(seen, val).size:
        raise DatasetError(f"dataset '{data.name}': train_loc and val_loc do not split the seen classes in two "
                           f"({len(train)} train and {len(val)} val classes, {np.intersect1d(train, val).size} "
                           "in both); use dataset.validation.classes=random")
    return val


def _random_classes(data: ZSLData, count: int | None, rng: np.random.Generator) -> np.ndarray:
    """`count` seen classes; by default the share of classes the test split holds out."""
    seen, n_unseen = data.seen_classes, len(data.unseen_classes)
    count = count or round(len(seen) * n_unseen / (len(seen) + n_unseen))
    if not 0 < count < len(seen):
        raise ConfigError(f"dataset.validation.unseen_classes must lie in 1..{len(seen) - 1} "
                          f"(there are {len(seen)} seen classes), got {count}")
    return np.sort(rng.choice(seen, size=count, replace=False))


def validation_split(data: ZSLData, classes: str = "auto", unseen_classes: int | None = None,
                     seed: int = 0) -> ZSLData:
    """The validation task of `data` as a dataset of its own (classes renumbered).

    classes: 'xlsa17' takes the validation classes from train_loc/val_loc, 'random' draws
    `unseen_classes` of them with `seed`, 'auto' is 'xlsa17' where those keys exist.
    """
    if classes not in CLASS_CHOICES:
        raise ConfigError(f"dataset.validation.classes must be one of {CLASS_CHOICES}, got '{classes}'")
    has_xlsa17 = "train" in data.splits and "val" in data.splits
    if classes == "xlsa17" and not has_xlsa17:
        raise DatasetError(f"dataset '{data.name}' has no train_loc/val_loc; use dataset.validation.classes=random")
    rng = np.random.default_rng(seed)
    use_xlsa17 = classes == "xlsa17" or (classes == "auto" and has_xlsa17 and unseen_classes is None)
    val_classes = _xlsa17_classes(data) if use_xlsa17 else _random_classes(data, unseen_classes, rng)

    # Held out per training class: the share test_seen has of the seen images in the real split.
    n_seen_images = len(data.splits["trainval"]) + len(data.splits["test_seen"])
    held_out_share = len(data.splits["test_seen"]) / n_seen_images
    rows = data.splits["trainval"]
    kept_classes = data.seen_classes  # the validation task's classes: all seen ones
    new_label = np.full(data.num_classes, -1)
    new_label[kept_classes] = np.arange(len(kept_classes))
    labels = new_label[data.labels[rows]]
    is_val = np.isin(data.labels[rows], val_classes)
    train, test_seen = [], []
    for y in np.unique(labels[~is_val]):
        members = rng.permutation(np.flatnonzero(labels == y))
        n_test = min(len(members) - 1, round(held_out_share * len(members)))
        test_seen.append(members[:n_test])
        train.append(members[n_test:])
    return ZSLData(
        name=f"{data.name} (validation)",
        features=np.ascontiguousarray(data.features[rows]),
        labels=labels,
        semantics=data.semantics[kept_classes],
        splits={"trainval": np.sort(np.concatenate(train)), "test_seen": np.sort(np.concatenate(test_seen)),
                "test_unseen": np.flatnonzero(is_val)},
        class_names=[data.class_names[y] for y in kept_classes] if data.class_names else [],
    )
