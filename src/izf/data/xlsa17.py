"""Reading and writing the xlsa17 format (Xian et al., "proposed splits"; see docs/DATA.md).

A dataset folder holds `res101.mat` (features 2048×N, labels N×1, 1-based) and `att_splits.mat`
(att d_c×C, and 1-based image indices trainval_loc / test_seen_loc / test_unseen_loc, optionally
train_loc / val_loc). Everything is validated before any work starts; every problem raises a
DatasetError that names the file, the key, and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from izf.data.dataset import OPTIONAL_SPLITS, SPLITS, ZSLData
from izf.errors import DatasetError
from izf.io import atomic_path

FEATURES_FILE = "res101.mat"
SPLITS_FILE = "att_splits.mat"
HOW_TO_GET = (
    "Get the public xlsa17 archive (xlsa17.zip, Max Planck Institute for Informatics; linked from "
    "the README of every GZSL codebase) and unpack it so that <data_dir>/xlsa17/<NAME>/ holds "
    f"{FEATURES_FILE} and {SPLITS_FILE}, or point dataset.root at such a folder."
)


def _read_mat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MAT v7.3 is HDF5, which scipy does not read
        raise DatasetError(f"{path}: MAT v7.3 (HDF5) files are not supported; re-save as MAT v5 ({err})") from err
    except Exception as err:  # scipy raises many types for corrupt files; all mean the same to a user
        raise DatasetError(f"{path}: not a readable MAT v5 file ({type(err).__name__}: {err})") from err


def _require(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: missing key '{key}' (found keys: {found})")
    value = mat[key]
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise DatasetError(f"{path}: key '{key}' must be a numeric array, found {type(value).__name__}"
                           f" of dtype {getattr(value, 'dtype', None)}")
    return value


def _indices(mat: dict, key: str, path: Path, n_images: int) -> np.ndarray:
    """A 1-based *_loc vector as 0-based int64 row indices, range-checked."""
    loc = _require(mat, key, path)
    if loc.ndim != 2 or 1 not in loc.shape:
        raise DatasetError(f"{path}: '{key}' must be an n×1 vector, found shape {loc.shape}")
    if not np.issubdtype(loc.dtype, np.number) or not np.all(np.mod(loc, 1) == 0):
        raise DatasetError(f"{path}: '{key}' must hold integer image indices, found dtype {loc.dtype}")
    loc = loc.ravel().astype(np.int64)
    if loc.size and (loc.min() < 1 or loc.max() > n_images):
        raise DatasetError(f"{path}: '{key}' indices must lie in 1..{n_images} (1-based, N images), "
                           f"found {loc.min()}..{loc.max()}")
    return loc - 1


def _class_names(mat: dict, n_classes: int) -> list[str]:
    names = mat.get("allclasses_names")
    if names is None or names.size != n_classes:
        return [f"class_{i + 1}" for i in range(n_classes)]
    return [str(np.asarray(n).ravel()[0]) if np.asarray(n).size else f"class_{i + 1}"
            for i, n in enumerate(names.ravel())]


def load_xlsa17(root: str | Path, name: str | None = None, semantics_key: str = "att") -> ZSLData:
    """Read and validate one xlsa17 dataset folder."""
    root = Path(root)
    name = name or root.name
    features_path, splits_path = root / FEATURES_FILE, root / SPLITS_FILE
    missing = [p.name for p in (features_path, splits_path) if not p.is_file()]
    if missing:
        raise DatasetError(f"dataset '{name}': {root} is missing {' and '.join(missing)}. {HOW_TO_GET}")

    split_mat = _read_mat(splits_path)
    att = _require(split_mat, semantics_key, splits_path)
    if att.ndim != 2:
        raise DatasetError(f"{splits_path}: '{semantics_key}' must be a 2-D (dim × classes) matrix, "
                           f"found shape {att.shape}")
    semantics = np.ascontiguousarray(att.T, dtype=np.float32)
    if not np.isfinite(semantics).all():
        raise DatasetError(f"{splits_path}: '{semantics_key}' contains NaN or inf")
    n_classes = semantics.shape[0]

    feature_mat = _read_mat(features_path)
    features = _require(feature_mat, "features", features_path)
    labels = _require(feature_mat, "labels", features_path)
    if features.ndim != 2:
        raise DatasetError(f"{features_path}: 'features' must be a 2-D (D × N) matrix, found shape {features.shape}")
    n_images = features.shape[1]
    if labels.size != n_images:
        raise DatasetError(f"{features_path}: 'labels' has {labels.size} entries but 'features' has "
                           f"{n_images} columns (images); expected one label per image")
    labels = labels.ravel().astype(np.int64)
    if labels.min() < 1 or labels.max() > n_classes:
        raise DatasetError(f"{features_path}: 'labels' must lie in 1..{n_classes} (the columns of "
                           f"'{semantics_key}' in {splits_path.name}), found {labels.min()}..{labels.max()}")
    features = np.ascontiguousarray(features.T, dtype=np.float32)
    if not np.isfinite(features).all():
        raise DatasetError(f"{features_path}: 'features' contains NaN or inf")

    splits = {key: _indices(split_mat, f"{key}_loc", splits_path, n_images) for key in SPLITS}
    # train_loc/val_loc are optional (absent from some releases, e.g. CUB's file here).
    splits |= {key: _indices(split_mat, f"{key}_loc", splits_path, n_images)
               for key in OPTIONAL_SPLITS if f"{key}_loc" in split_mat}
    data = ZSLData(name=name, features=features, labels=labels - 1, semantics=semantics,
                   splits=splits, class_names=_class_names(split_mat, n_classes))
    validate(data, source=str(splits_path))
    return data


def validate(data: ZSLData, source: str) -> None:
    """The structural promises the rest of the code relies on."""
    all_idx = np.concatenate([data.splits[s] for s in SPLITS])
    if len(np.unique(all_idx)) != len(all_idx):
        raise DatasetError(f"{source}: trainval_loc, test_seen_loc and test_unseen_loc overlap; "
                           "expected three disjoint sets of images")
    if len(all_idx) != len(data.labels):
        raise DatasetError(f"{source}: the three splits cover {len(all_idx)} of {len(data.labels)} images; "
                           "expected trainval ∪ test_seen ∪ test_unseen = all images")
    seen, unseen = data.seen_classes, data.unseen_classes
    if len(seen) == 0 or len(unseen) == 0:
        raise DatasetError(f"{source}: expected seen (trainval) and unseen (test_unseen) classes, "
                           f"found {len(seen)} seen and {len(unseen)} unseen")
    if np.intersect1d(seen, unseen).size:
        raise DatasetError(f"{source}: classes {np.intersect1d(seen, unseen)[:10].tolist()} appear in both "
                           "trainval and test_unseen; expected disjoint seen/unseen classes")
    stray = np.setdiff1d(np.unique(data.labels[data.splits["test_seen"]]), seen)
    if stray.size:
        raise DatasetError(f"{source}: test_seen holds classes {stray[:10].tolist()} without trainval samples")


def _savemat_atomic(path: Path, content: dict) -> None:
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, content, do_compression=False)


def save_xlsa17(data: ZSLData, root: str | Path) -> Path:
    """Write `data` as an xlsa17 folder (res101.mat + att_splits.mat), each file atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(data.labels)
    label_dtype = np.uint8 if data.num_classes <= 255 else np.uint16
    names = np.empty((data.num_classes, 1), dtype=object)
    for i, class_name in enumerate(data.class_names or [f"class_{i + 1}" for i in range(data.num_classes)]):
        names[i, 0] = np.array([class_name])
    files = np.empty((n, 1), dtype=object)
    for i in range(n):
        files[i, 0] = np.array([f"images/{i + 1:06d}.jpg"])
    _savemat_atomic(root / FEATURES_FILE, {
        "features": data.features.T.astype(np.float64),
        "labels": (data.labels + 1).astype(label_dtype).reshape(-1, 1),
        "image_files": files,
    })
    loc_dtype = np.uint16 if n < 2**16 else np.uint32
    _savemat_atomic(root / SPLITS_FILE, {
        "att": data.semantics.T.astype(np.float64),
        "allclasses_names": names,
        **{f"{key}_loc": (idx + 1).astype(loc_dtype).reshape(-1, 1) for key, idx in data.splits.items()},
    })
    return root
