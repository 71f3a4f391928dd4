"""A float32 copy of res101.mat's features and labels that later runs memory-map.

res101.mat stores float64 features one column per image: scipy parses ~600 MB for AWA2 and the
reader then transposes and narrows it, on every run. The cache holds the finished (N, D) float32
array as .npy files that np.load memory-maps in milliseconds. It is keyed by the source file's
size and mtime (any change rebuilds it) and `key.json` is written last, after the arrays, each
file atomically: a crash while caching leaves either no cache or the old one, never a wrong one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from izf.io import atomic_path

VERSION = 1
CACHE_DIRNAME = ".izf-cache"


def _key(source: Path) -> dict:
    stat = source.stat()
    return {"version": VERSION, "source": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_dir(source: Path) -> Path:
    """Beside the source when that folder is writable; else under $IZF_CACHE_DIR or ~/.cache/izf
    (e.g. a read-only shared copy of the benchmarks)."""
    beside = source.parent / CACHE_DIRNAME
    if os.access(source.parent, os.W_OK) or beside.is_dir():
        return beside
    base = Path(os.environ.get("IZF_CACHE_DIR", Path.home() / ".cache" / "izf"))
    return base / hashlib.sha1(str(source.parent.resolve()).encode()).hexdigest()[:16]


def load(source: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(features memory-mapped read-only, labels) if a cache for this exact source file exists."""
    folder = cache_dir(source)
    try:
        if json.loads((folder / "key.json").read_text()) != _key(source):
            return None
        features = np.load(folder / "features.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
    except (OSError, ValueError):  # absent, unreadable or truncated: rebuild from the source
        return None
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        return None
    return features, labels


def store(source: Path, features: np.ndarray, labels: np.ndarray) -> bool:
    """Write the cache for `source`; False (and no cache) where it cannot be written."""
    folder = cache_dir(source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").unlink(missing_ok=True)  # invalid while the arrays are replaced
        for name, array in (("features.npy", features), ("labels.npy", labels)):
            with atomic_path(folder / name) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
        with atomic_path(folder / "key.json") as tmp:
            tmp.write_text(json.dumps(_key(source)))
    except OSError:  # a read-only or full disk: run without a cache rather than fail
        return False
    return True
