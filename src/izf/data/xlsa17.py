"""Reading and writing the xlsa17 format (Xian et al., "proposed splits"; see README, "Getting the data").

A dataset folder holds `res101.mat` (features 2048×N, labels N×1, 1-based) and `att_splits.mat`
(att d_c×C, and 1-based image indices trainval_loc / test_seen_loc / test_unseen_loc, optionally
train_loc / val_loc). Everything is validated before any work starts; every problem raises a
DatasetError that names the file, the key, and what was expected.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io

from izf.data import cache, isolated
from izf.data.benchmarks import BENCHMARKS
from izf.data.dataset import OPTIONAL_SPLITS, SPLITS, ZSLData
from izf.errors import DatasetError
from izf.io import atomic_path
from izf.outputs import GENERATED

FEATURES_FILE = "res101.mat"
SPLITS_FILE = "att_splits.mat"
SENTENCES_FILE = "sent_splits.mat"  # CUB only: the same splits, `att` = 1024-d sentence embeddings
GENERATED_FILE = "GENERATED.json"  # written by `python -m izf.data fake`: the folder is a stand-in, not the data
HOW_TO_GET = (
    "Get the public xlsa17 archive (xlsa17.zip, Max Planck Institute for Informatics; linked from "
    "the README of every GZSL codebase) and unpack it so that <data_dir>/xlsa17/<NAME>/ holds "
    f"{FEATURES_FILE} and {SPLITS_FILE}, or point dataset.root at such a folder."
)


def default_data_dir() -> Path:
    """The same place as the training config's paths.data_dir: $IZF_ROOT/data, else ./data."""
    return Path(os.environ.get("IZF_ROOT", ".")) / "data"


def how_to_get(root: Path) -> str:
    """For a benchmark's folder (<data_dir>/xlsa17/<NAME>, as paths.data_dir places it) the command
    that downloads it there; for any other folder, how to make one."""
    if root.name.upper() in BENCHMARKS and root.parent.name == "xlsa17":
        data_dir = root.parent.parent
        elsewhere = "" if data_dir.resolve() == default_data_dir().resolve() else f" --data-dir {data_dir}"
        return f"Get it with: python -m izf.data download {root.name.lower()}{elsewhere}"
    return HOW_TO_GET


def is_generated(root: Path) -> bool:
    """Whether `python -m izf.data fake` wrote this folder (a stand-in, not the benchmark's data)."""
    return (Path(root) / GENERATED_FILE).is_file()


def _check_complete(path: Path) -> None:
    """A MAT v5 file is a 128-byte header and a chain of (type, byte count, data) elements; the
    chain must end exactly at the end of the file. Catches a truncated download, which scipy
    does not notice when the missing tail holds a variable it was not asked to read."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return  # not MAT v5 at all: scipy names the problem
        order = "<" if header[126:128] == b"IM" else ">"
        position, count = 128, 0
        while position < size:
            handle.seek(position)
            tag = handle.read(8)
            if len(tag) < 8:
                break
            _, nbytes = struct.unpack(order + "II", tag)
            position += 8 + nbytes
            count += 1
    if position != size:
        raise DatasetError(f"{path}: truncated or damaged: its variable #{count} ends at byte {position}, "
                           f"the file has {size} bytes (download or copy it again)")


def _loadmat(path: Path, **options) -> dict:
    """scipy.io.loadmat with its many failure types turned into one message. Runs in the child
    process of `isolated.run` only: a corrupted file can crash the parser itself."""
    _check_complete(path)
    try:
        return scipy.io.loadmat(str(path), **options)
    except NotImplementedError as err:  # MAT v7.3 is HDF5, which scipy does not read
        raise DatasetError(f"{path}: MAT v7.3 (HDF5) files are not supported; re-save as MAT v5 ({err})") from err
    except Exception as err:  # scipy raises many types for corrupt files; all mean the same to a user
        raise DatasetError(f"{path}: not a readable MAT v5 file ({type(err).__name__}: {err})") from err


def _plain_array(value) -> np.ndarray | None:
    """A variable as an array np.load reads without pickle: numbers as they are, a cell array of
    strings (class names) as a string array of the same shape; None for anything else."""
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype.kind in "biufU":
        return value
    if value.dtype == object:
        cells = [np.asarray(cell).ravel() for cell in value.ravel()]
        if all(cell.dtype.kind == "U" and cell.size <= 1 for cell in cells):
            return np.array([str(cell[0]) if cell.size else "" for cell in cells]).reshape(value.shape)
    return None


def _parse_mat(path: Path, out: Path) -> None:
    """(child) The file's variables as plain arrays in `out`/content.npz. No pickle: a cache
    folder others can write to must never become a way to run code in this process."""
    variables = {key: array for key, value in _loadmat(path).items()
                 if not key.startswith("__") and (array := _plain_array(value)) is not None}
    with atomic_path(out / "content.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **variables)


def _convert_features(path: Path, out: Path) -> None:
    """(child) res101.mat checked and stored as (N, D) float32 features and (N,) 1-based int64
    labels in `out` (.npy); image_files is never parsed."""
    mat = _loadmat(path, variable_names=["features", "labels"])
    features, labels = _require(mat, "features", path), _require(mat, "labels", path)
    if features.ndim != 2:
        raise DatasetError(f"{path}: 'features' must be a 2-D (D × N) matrix, found shape {features.shape}")
    if labels.size != features.shape[1]:
        raise DatasetError(f"{path}: 'labels' has {labels.size} entries but 'features' has "
                           f"{features.shape[1]} columns (images); expected one label per image")
    if labels.size == 0 or not np.all(np.mod(labels, 1) == 0):
        raise DatasetError(f"{path}: 'labels' must hold integer class indices, one per image, found "
                           f"{labels.size} of dtype {labels.dtype}")
    if np.iscomplexobj(features):
        raise DatasetError(f"{path}: 'features' must hold real numbers, found dtype {features.dtype}")
    features = np.ascontiguousarray(features.T, dtype=np.float32)
    if not np.isfinite(features).all():
        raise DatasetError(f"{path}: 'features' contains NaN or inf (or values beyond float32)")
    for name, array in (("features.npy", features), ("labels.npy", labels.ravel().astype(np.int64))):
        with atomic_path(out / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)


def _read_content(folder: Path | None, memory_map: bool):
    """What a conversion left in `folder`; None where there is nothing whole to read."""
    if folder is None:
        return None
    try:
        if (folder / "content.npz").is_file():
            with np.load(folder / "content.npz", allow_pickle=False) as content:
                return {key: content[key] for key in content.files}
        features = np.load(folder / "features.npy", mmap_mode="r" if memory_map else None, allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged, half-written, or holding a pickle
        return None
    return (features, labels) if features.ndim == 2 and labels.shape == (features.shape[0],) else None


def _parsed(path: Path, convert: Callable[[Path, Path], None], use_cache: bool):
    """What `convert` makes of `path` (run in a child process), from the cache when it is current.
    A damaged cache entry is rebuilt; an unwritable cache is skipped."""
    if use_cache:
        content = _read_content(cache.lookup(path), memory_map=True)
        if content is None:
            content = _read_content(cache.build(path, lambda out: isolated.run(convert, path, out)), memory_map=True)
        if content is not None:
            return content
    with tempfile.TemporaryDirectory() as tmp:
        isolated.run(convert, path, Path(tmp))
        return _read_content(Path(tmp), memory_map=False)


def _read_mat(path: Path, use_cache: bool = True) -> dict:
    return _parsed(path, _parse_mat, use_cache)


def _require(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: missing key '{key}' (found keys: {found})")
    value = mat[key]
    real = isinstance(value, np.ndarray) and (np.issubdtype(value.dtype, np.integer)
                                               or np.issubdtype(value.dtype, np.floating))
    if not real:
        raise DatasetError(f"{path}: key '{key}' must be a real numeric array, found {type(value).__name__}"
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
    return [str(n) or f"class_{i + 1}" for i, n in enumerate(_plain_array(names).ravel())]


def _as_class_rows(matrix: np.ndarray, path: Path, what: str, n_classes: int | None) -> np.ndarray:
    """A finite 2-D (C, d) float32 matrix, C = n_classes where that is known."""
    if matrix.ndim != 2 or (n_classes is not None and matrix.shape[0] != n_classes):
        rows = "C" if n_classes is None else f"C={n_classes}"
        raise DatasetError(f"{path}: {what} must be a 2-D matrix with one row per class ({rows} × d), "
                           f"found shape {matrix.shape}")
    if np.iscomplexobj(matrix):
        raise DatasetError(f"{path}: {what} must hold real numbers, found dtype {matrix.dtype}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(rows).all():  # checked after the conversion: 3.5e38 is finite only before it
        raise DatasetError(f"{path}: {what} contains NaN or inf (or values beyond float32)")
    return rows


def read_semantics(root: Path, split_mat: dict, semantics: str = "att", use_cache: bool = True) -> np.ndarray:
    """The class semantics as (C, d_c) float32. `semantics` is a key of att_splits.mat ('att',
    'original_att'), 'sent' (CUB's sent_splits.mat, 1024-d sentence embeddings), or a file of
    class embeddings: .npy with one row per class, or .mat in att's d × C layout ('file.mat' with
    a key 'att', or 'file.mat:key'). Rows follow the labels: label l is row l−1."""
    splits_path = root / SPLITS_FILE
    n_classes = split_mat["att"].shape[1] if getattr(split_mat.get("att"), "ndim", 0) == 2 else None
    if semantics in ("sent", SENTENCES_FILE):
        path, key = root / SENTENCES_FILE, "att"
    elif semantics.endswith(".npy") or ".mat" in semantics:
        file, key = semantics.rsplit(":", 1) if ".mat:" in semantics else (semantics, "att")
        path = root / file if (root / file).is_file() else Path(file)  # beside the data, or as given
    else:  # a key of att_splits.mat
        return _as_class_rows(_require(split_mat, semantics, splits_path).T, splits_path,
                              f"'{semantics}' (transposed from d × C)", None)
    if not path.is_file():
        raise DatasetError(f"dataset.semantics={semantics}: no such file {path}")
    if path.suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not a readable .npy array ({err})") from err
        if not np.issubdtype(matrix.dtype, np.number):
            raise DatasetError(f"{path}: expected a numeric array, found dtype {matrix.dtype}")
        return _as_class_rows(matrix, path, "the class embedding", n_classes)
    return _as_class_rows(_require(_read_mat(path, use_cache), key, path).T, path,
                          f"'{key}' (transposed from d × C)", n_classes)


def load_xlsa17(root: str | Path, name: str | None = None, semantics: str = "att", cache: bool = True) -> ZSLData:
    """Read and validate one xlsa17 dataset folder (features through the float32 cache)."""
    root = Path(root)
    name = name or root.name
    features_path, splits_path = root / FEATURES_FILE, root / SPLITS_FILE
    if not root.is_dir():
        raise DatasetError(f"dataset '{name}': no such folder {root} (expected {FEATURES_FILE} and {SPLITS_FILE} "
                           f"there). {how_to_get(root)}")
    missing = [p.name for p in (features_path, splits_path) if not p.is_file()]
    if missing:
        raise DatasetError(f"dataset '{name}': {root} is missing {' and '.join(missing)}. {how_to_get(root)}")
    if is_generated(root):  # results tables, metrics.json and the paper report say so
        name = f"{name} ({GENERATED})"

    split_mat = _read_mat(splits_path, cache)
    class_semantics = read_semantics(root, split_mat, semantics, cache)
    n_classes = len(class_semantics)
    features, labels = _parsed(features_path, _convert_features, cache)
    if labels.min() < 1 or labels.max() > n_classes:
        raise DatasetError(f"{features_path}: 'labels' must lie in 1..{n_classes} (one per class of the "
                           f"semantics '{semantics}'), found {labels.min()}..{labels.max()}")

    n_images = len(labels)
    splits = {key: _indices(split_mat, f"{key}_loc", splits_path, n_images) for key in SPLITS}
    # train_loc/val_loc are optional (absent from some releases, e.g. CUB's file here).
    splits |= {key: _indices(split_mat, f"{key}_loc", splits_path, n_images)
               for key in OPTIONAL_SPLITS if f"{key}_loc" in split_mat}
    data = ZSLData(name=name, features=features, labels=labels - 1, semantics=class_semantics,
                   splits=splits, class_names=_class_names(split_mat, n_classes))
    validate(data, source=str(splits_path))
    return data


def validate(data: ZSLData, source: str) -> None:
    """The structural promises the rest of the code relies on."""
    empty = [split for split in SPLITS if len(data.splits[split]) == 0]
    if empty:
        raise DatasetError(f"{source}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty; "
                           "expected images in each of trainval (to train on), test_seen and test_unseen (to test "
                           "the seen and the unseen classes on)")
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
    if len(seen) + len(unseen) != data.num_classes:
        raise DatasetError(f"{source}: the semantics have {data.num_classes} classes but the splits hold "
                           f"{len(seen)} seen + {len(unseen)} unseen; expected every class to be one of them")


def _savemat_atomic(path: Path, content: dict) -> None:
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, content, do_compression=False)


def save_xlsa17(data: ZSLData, root: str | Path, image_files: list[str] | None = None) -> Path:
    """Write `data` as an xlsa17 folder (res101.mat + att_splits.mat), each file atomically;
    image_files: each row's image path (default: placeholder names)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(data.labels)
    label_dtype = np.uint8 if data.num_classes <= 255 else np.uint16
    names = np.empty((data.num_classes, 1), dtype=object)
    for i, class_name in enumerate(data.class_names or [f"class_{i + 1}" for i in range(data.num_classes)]):
        names[i, 0] = np.array([class_name])
    files = np.empty((n, 1), dtype=object)
    for i in range(n):
        files[i, 0] = np.array([image_files[i] if image_files else f"images/{i + 1:06d}.jpg"])
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
