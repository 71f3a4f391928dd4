"""Parsed copies of the dataset files that later runs load in milliseconds.

res101.mat stores float64 features one column per image: scipy parses ~600 MB for AWA2 and the
reader then transposes and narrows it, on every run. Its cache entry holds the finished (N, D)
float32 array as .npy files that np.load memory-maps; the small .mat files are kept parsed too.
An entry is keyed by its source file's size and mtime (any change rebuilds it), and `key.json` is
written last, after the content, each file atomically: a crash while caching leaves either no
entry or the old one, never a wrong one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from izf.io import atomic_path

VERSION = 3  # 3: .mat variables as .npz (no pickle)
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


def entry(source: Path) -> Path:
    return cache_dir(source) / source.name


def lookup(source: Path) -> Path | None:
    """The entry folder of this exact source file, if there is one."""
    folder = entry(source)
    try:
        return folder if json.loads((folder / "key.json").read_text()) == _key(source) else None
    except (OSError, ValueError):
        return None


def build(source: Path, write: Callable[[Path], None]) -> Path | None:
    """A fresh entry for `source`, its content written by `write(folder)`; None (and no entry)
    where the cache cannot be written. Errors of `write` itself (bad data) propagate."""
    folder = entry(source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").unlink(missing_ok=True)  # invalid while the content is replaced
    except OSError:  # a read-only or full disk: run without a cache rather than fail
        return None
    try:
        write(folder)
        with atomic_path(folder / "key.json") as tmp:
            tmp.write_text(json.dumps(_key(source)))
    except OSError:
        return None
    return folder
