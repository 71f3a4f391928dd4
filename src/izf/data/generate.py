"""Generated datasets in the xlsa17 structure: the synthetic default, the paper's toy data, and
features for a real att_splits.mat (the benchmark features themselves cannot be shipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from izf.data.benchmarks import BENCHMARKS
from izf.data.dataset import ZSLData


def _softplus(a: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, a)


def unit_attributes(n_classes: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative attribute vectors, L2-normalised per class like xlsa17's `att` (C × dim)."""
    attributes = rng.random((n_classes, dim)) ** 2
    return attributes / np.linalg.norm(attributes, axis=1, keepdims=True)


def class_means(semantics: np.ndarray, feature_dim: int, rng: np.random.Generator,
                hidden: int = 64) -> np.ndarray:
    """A random smooth nonlinear map from class semantics (C×d_c) to non-negative class mean
    features (C×D): softplus(W2 · tanh(W1 · standardised c)). Nonlinear, so a linear map from
    features to attributes cannot invert it exactly: zero-shot transfer is learnable, not trivial."""
    c = (semantics - semantics.mean(0)) / (semantics.std(0) + 1e-8)
    w1 = rng.normal(size=(semantics.shape[1], hidden)) / np.sqrt(semantics.shape[1])
    w2 = rng.normal(size=(hidden, feature_dim)) * (1.5 / np.sqrt(hidden))
    return _softplus(np.tanh(c @ w1) @ w2 - 0.5)


def _sample(means: np.ndarray, labels: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Non-negative features around their class means (ReLU, like ResNet pooled outputs)."""
    x = means[labels] + noise * rng.normal(size=(len(labels), means.shape[1]))
    return np.maximum(x, 0.0).astype(np.float32)


def synthetic(seen: int = 20, unseen: int = 10, semantic_dim: int = 16, feature_dim: int = 64,
              per_class: int = 120, test_seen_fraction: float = 0.2, noise: float = 0.5,
              seed: int = 0) -> ZSLData:
    """A deterministic (given the seed) dataset in the xlsa17 structure.

    Attributes are non-negative and L2-normalised per class like xlsa17's `att`; which classes are
    unseen is drawn at random; seen classes give trainval and test_seen samples, unseen classes
    test_unseen samples only.
    """
    rng = np.random.default_rng(seed)
    n_classes = seen + unseen
    semantics = unit_attributes(n_classes, semantic_dim, rng)
    means = class_means(semantics, feature_dim, rng)
    labels = np.repeat(np.arange(n_classes), per_class)
    features = _sample(means, labels, noise, rng)
    unseen_classes = rng.choice(n_classes, size=unseen, replace=False)
    n_test = int(round(per_class * test_seen_fraction))
    splits = {"trainval": [], "test_seen": [], "test_unseen": []}
    for y in range(n_classes):
        rows = rng.permutation(np.flatnonzero(labels == y))
        if y in unseen_classes:
            splits["test_unseen"].append(rows)
        else:
            splits["test_seen"].append(rows[:n_test])
            splits["trainval"].append(rows[n_test:])
    return ZSLData(name="synthetic", features=features, labels=labels, semantics=semantics.astype(np.float32),
                   splits={k: np.sort(np.concatenate(v)) for k, v in splits.items()},
                   class_names=[f"class_{y + 1}" for y in range(n_classes)])


def toy(per_class: int = 200, test_fraction: float = 0.2, seed: int = 0) -> ZSLData:
    """The paper's toy data: seen classes c = [0,1], [0,0], [1,0], unseen c = [1,1];
    x = [2c − 1 + ε, 0, 0], ε ~ N(0, (1/3)² I₂) (D = 4, d_c = 2). Class 3 is the unseen one."""
    rng = np.random.default_rng(seed)
    semantics = np.array([[0, 1], [0, 0], [1, 0], [1, 1]], dtype=np.float32)
    labels = np.repeat(np.arange(4), per_class)
    features = np.zeros((len(labels), 4), dtype=np.float32)
    features[:, :2] = 2 * semantics[labels] - 1 + rng.normal(scale=1 / 3, size=(len(labels), 2))
    n_test = int(round(per_class * test_fraction))
    seen_rows = [rng.permutation(np.flatnonzero(labels == y)) for y in range(3)]
    splits = {"trainval": np.sort(np.concatenate([r[n_test:] for r in seen_rows])),
              "test_seen": np.sort(np.concatenate([r[:n_test] for r in seen_rows])),
              "test_unseen": np.flatnonzero(labels == 3)}
    return ZSLData(name="toy", features=features, labels=labels, semantics=semantics, splits=splits,
                   class_names=["seen_[0,1]", "seen_[0,0]", "seen_[1,0]", "unseen_[1,1]"])


def resnet_like_features(semantics: np.ndarray, labels: np.ndarray, feature_dim: int,
                         rng: np.random.Generator, class_effect: float = 0.4, shape: float = 0.5,
                         chunk: int = 4096) -> np.ndarray:
    """Features with the statistics of xlsa17's ResNet-101 ones (README, "No data yet?"): non-negative,
    per-dimension means log-normal around 0.42 (≈0.05–2.5), std ≈ 0.6, a few % near zero.

    Dimension d of class y has mean m_d·r_yd, where r = 1 + class_effect·(h − 1) and h is a
    random smooth nonlinear function of the attributes (mean 1 over classes); images scatter
    around it as Gamma(shape) noise (non-negative, coefficient of variation 1/√shape). With the
    defaults a nearest-class-mean classifier on AWA2-sized data reaches ≈ 90 %: class structure
    that is learnable, not trivial.
    """
    dim_mean = rng.lognormal(np.log(0.42) - 0.18, 0.6, size=feature_dim)  # E = 0.42
    h = class_means(semantics, feature_dim, rng)
    class_mean = dim_mean * (1 + class_effect * (h / h.mean(0) - 1)) / shape
    features = np.empty((len(labels), feature_dim), dtype=np.float32)
    for start in range(0, len(labels), chunk):  # bounded temporaries for AWA2-sized data
        rows = labels[start:start + chunk]
        noise = rng.standard_gamma(shape, size=(len(rows), feature_dim), dtype=np.float32)
        features[start:start + chunk] = noise * class_mean[rows].astype(np.float32)
    return features


def _draw_labels(locs: dict[str, np.ndarray], n_images: int, n_classes: int, n_unseen: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Labels consistent with the splits: `n_unseen` random classes in test_unseen, the others in
    trainval and test_seen, and where train/val locations exist, class-disjoint train and val
    classes (xlsa17's semantics) in the share of their image counts."""
    unseen = rng.choice(n_classes, size=n_unseen, replace=False)
    seen = rng.permutation(np.setdiff1d(np.arange(n_classes), unseen))
    seen_rows = np.concatenate([locs["trainval"], locs["test_seen"]])
    groups = [(seen_rows, seen)]
    if "train" in locs and "val" in locs:
        val_share = len(locs["val"]) / (len(locs["train"]) + len(locs["val"]))
        n_val = min(len(seen) - 1, max(1, round(len(seen) * val_share)))
        groups = [(np.setdiff1d(seen_rows, locs["val"]), seen[n_val:]), (locs["val"], seen[:n_val])]
    labels = np.zeros(n_images, dtype=np.int64)
    for rows, classes in [*groups, (locs["test_unseen"], unseen)]:  # test_unseen last: it wins
        labels[rows] = classes[rng.permutation(len(rows)) % len(classes)]
    return labels


def like(name: str, splits_file: str | Path | None = None, labels: np.ndarray | None = None,
         feature_dim: int = 2048, seed: int = 0) -> ZSLData:
    """A stand-in for benchmark `name` (a key of BENCHMARKS) with ResNet-like features.

    With the real att_splits.mat: its attributes, class names and split indices, and the real
    labels (0-based) where given (AWA2); else labels drawn to fit the splits. Without it:
    generated attributes and splits of the published sizes.
    """
    facts = BENCHMARKS[name]
    rng = np.random.default_rng(seed)
    names = []
    if splits_file is not None:
        mat = scipy.io.loadmat(str(splits_file))
        semantics = mat["att"].T.astype(np.float32)
        locs = {k[:-4]: mat[k].ravel().astype(np.int64) - 1 for k in mat if k.endswith("_loc")}
        names = [str(np.asarray(n).ravel()[0]) for n in mat["allclasses_names"].ravel()] \
            if "allclasses_names" in mat else []
    else:
        semantics = unit_attributes(facts["seen"] + facts["unseen"], facts["semantic_dim"], rng).astype(np.float32)
        order = rng.permutation(facts["images"])
        locs = dict(zip(("trainval", "test_seen", "test_unseen"),
                        np.split(order, np.cumsum(facts["splits"])[:2])))
    n_images = int(max(v.max() for v in locs.values())) + 1
    if labels is None:
        labels = _draw_labels(locs, n_images, len(semantics), facts["unseen"], rng)
    return ZSLData(name=f"{name} stand-in", features=resnet_like_features(semantics, labels, feature_dim, rng),
                   labels=labels, semantics=semantics, splits={k: np.sort(v) for k, v in locs.items()},
                   class_names=names or [f"class_{y + 1}" for y in range(len(semantics))])
