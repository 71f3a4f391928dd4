"""Benchmark data from the command line.

    python -m izf.data download awa2 [cub ...|all]   fetch and unpack the public xlsa17 archive
    python -m izf.data check awa2|DIR                validate a dataset folder and summarise it
    python -m izf.data fake --like AWA2 --out DIR    a stand-in with the benchmark's shape
    python -m izf.data extract --images DIR --attributes FILE --out DIR
                                                     your own images to an xlsa17 folder (ResNet-101 features)
    python -m izf.data bench-load DIR                first (uncached) vs cached load time and memory

Bad data or arguments print one `error: ...` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from izf.config import config_dir
from izf.data import cache, download, extract, generate
from izf.data.benchmarks import BENCHMARKS, expected_sizes
from izf.data.xlsa17 import (
    FEATURES_FILE,
    GENERATED_FILE,
    SENTENCES_FILE,
    SPLITS_FILE,
    default_data_dir,
    how_to_get,
    is_generated,
    load_xlsa17,
    save_xlsa17,
)
from izf.errors import IZFError
from izf.io import atomic_folder, write_json

DOWNLOAD_CONFIG = "_internal/download.yaml"  # the archive's address and checksum


def _dataset_folder(target: str, data_dir: Path) -> tuple[Path, str | None]:
    """(folder, benchmark name or None) for `check NAME` or `check DIR`; neither is refused."""
    name = target.upper()
    if name in BENCHMARKS and not Path(target).is_dir():
        folder = data_dir / "xlsa17" / name
        if not folder.is_dir():
            raise IZFError(f"{target}: no such dataset folder {folder}. {how_to_get(folder)}")
        return folder, name
    folder = Path(target)
    if not folder.is_dir():
        raise IZFError(f"{target}: no such folder, and not a benchmark's name (expected a dataset folder, or one "
                       f"of {', '.join(n.lower() for n in BENCHMARKS)})")
    return folder, folder.name.upper() if folder.name.upper() in BENCHMARKS else None


def cmd_download(args: argparse.Namespace) -> None:
    config = OmegaConf.load(config_dir() / DOWNLOAD_CONFIG)
    names = list(download.NAMES) if [n.lower() for n in args.names] == ["all"] else args.names
    url = args.url or config.url
    folders = download.download(names, data_dir=args.data_dir, url=url, sha256=args.sha256 or config.sha256,
                                archive=args.archive, force=args.force, progress=not args.no_progress)
    for folder in folders:
        print(f"ready: {folder}")


def feature_statistics(features: np.ndarray) -> dict[str, float]:
    per_dim_mean, per_dim_std = features.mean(axis=0), features.std(axis=0)
    return {"min": float(features.min()), "max": float(features.max()),
            "per-dim mean (avg)": float(per_dim_mean.mean()), "per-dim std (avg)": float(per_dim_std.mean()),
            "zeros": float((features == 0).mean())}


def cmd_check(args: argparse.Namespace) -> None:
    folder, benchmark = _dataset_folder(args.target, args.data_dir)
    features_cached = (folder / FEATURES_FILE).is_file() and cache.lookup(folder / FEATURES_FILE) is not None
    start = time.perf_counter()
    data = load_xlsa17(folder, name=benchmark or folder.name, semantics=args.semantics, cache=not args.no_cache)
    seconds = time.perf_counter() - start
    if benchmark:  # a known benchmark must look like it: the same check as dataset.benchmark
        data.check_expected(str(folder), **expected_sizes(benchmark, args.semantics))
    table = Table(title=f"{data.name}: {folder} — valid", show_header=False)
    summary = data.summary()
    rows = {"images": summary["images"],
            "classes": f"{summary['classes']} ({summary['seen']} seen / {summary['unseen']} unseen)",
            f"semantics '{args.semantics}'": f"{summary['semantic_dim']}-d",
            "features": f"{summary['feature_dim']}-d float32",
            **{f"split {split}": summary[split] for split in data.splits},
            **{f"features {k}": f"{v:.4g}" for k, v in feature_statistics(data.features).items()},
            "load": f"{seconds:.2f} s ({'from the cache' if features_cached else 'from ' + FEATURES_FILE})"}
    if is_generated(folder):
        rows["generated"] = f"yes ({GENERATED_FILE}): made by `python -m izf.data fake`, not the benchmark's data"
    for key, value in rows.items():
        table.add_row(key, str(value))
    Console().print(table)


def cmd_fake(args: argparse.Namespace) -> None:
    """Written under a temporary name beside --out and renamed at the end: never half a folder."""
    out = Path(args.out)
    if out.exists() and not args.force:
        raise IZFError(f"--out {out} already exists (pass --force to replace it)")
    splits_file = args.splits / SPLITS_FILE if args.splits and args.splits.is_dir() else args.splits
    if splits_file is not None and not splits_file.is_file():
        raise IZFError(f"--splits {args.splits}: no {SPLITS_FILE} there")
    labels = np.load(args.labels).astype(np.int64) - 1 if args.labels else None  # stored 1-based
    data = generate.like(args.like, splits_file=splits_file, labels=labels, feature_dim=args.feature_dim,
                         seed=args.seed)
    with atomic_folder(out) as partial:
        save_xlsa17(data, partial)
        if splits_file is not None and (splits_file.parent / SENTENCES_FILE).is_file():
            shutil.copy(splits_file.parent / SENTENCES_FILE, partial / SENTENCES_FILE)
        # the mark that tells check, download, training and reports that this is not the real data
        write_json(partial / GENERATED_FILE, {"generated_by": "python -m izf.data fake", "like": args.like,
                                              "feature_dim": args.feature_dim, "seed": args.seed,
                                              "splits": str(splits_file) if splits_file else None})
        load_xlsa17(partial, name=args.like, cache=False)  # what was written must read back valid
    print(f"wrote {out}, a generated stand-in for {args.like} (marked by {GENERATED_FILE}): {data.summary()}")


def cmd_extract(args: argparse.Namespace) -> None:
    options = {key: value for key, value in vars(args).items() if key in extract.Extraction.__dataclass_fields__}
    result = extract.extract(extract.Extraction(**options, progress=not args.no_progress))
    print(f"wrote {args.out}: {result['images']} images, {result['images_per_s']:.1f} images/s "
          f"({result['seconds']:.1f} s in the network this run); check it with: python -m izf.data check {args.out}")


_LOAD_PROBE = """
import json, resource, sys, tempfile, time
from pathlib import Path
from izf.data.xlsa17 import FEATURES_FILE, _convert_features, load_xlsa17
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if sys.argv[2] == "parse":  # the reader's child-process work, here in the measured process
    with tempfile.TemporaryDirectory(dir=sys.argv[1]) as out:
        _convert_features(Path(sys.argv[1]) / FEATURES_FILE, Path(out))
else:
    data = load_xlsa17(sys.argv[1])
    x = float(data.features[data.splits["trainval"]].sum())  # touch the training rows, as a run does
print(json.dumps({"seconds": time.perf_counter() - start, "imports_kb": before,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def cmd_bench_load(args: argparse.Namespace) -> None:
    """Each load in a fresh process, so the page cache is the only thing shared between them."""
    folder = Path(args.folder)

    def probe(mode: str) -> dict[str, float]:
        result = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(folder), mode],
                                capture_output=True, text=True, check=False)
        if result.returncode:
            raise IZFError(f"loading {folder} failed: {result.stderr.strip().splitlines()[-1]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    results = {f"parsing {FEATURES_FILE} (done in a child process)": probe("parse")}
    shutil.rmtree(cache.cache_dir(folder / FEATURES_FILE), ignore_errors=True)
    results["first load (parses, builds the cache)"] = probe("load")
    results["cached load (memory-mapped)"] = min((probe("load") for _ in range(args.repeat)),
                                                 key=lambda r: r["seconds"])
    table = Table(title=f"Loading {folder}")
    for column in ("load", "seconds", "peak RSS MB", "of which imports MB"):
        table.add_column(column, justify="right" if column != "load" else "left")
    for label, r in results.items():
        table.add_row(label, f"{r['seconds']:.3f}", f"{r['peak_kb'] / 1024:.0f}", f"{r['imports_kb'] / 1024:.0f}")
    Console().print(table)
    first, cached = results["first load (parses, builds the cache)"], results["cached load (memory-mapped)"]
    speedup = first["seconds"] / cached["seconds"]
    print(f"the cached load is {speedup:.1f}x faster than the first")
    print("BENCH_LOAD_JSON " + json.dumps({"speedup": speedup, **results}))


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m izf.data", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)

    p = commands.add_parser("download", help="fetch and unpack xlsa17 datasets into <data-dir>/xlsa17/<NAME>/")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(download.NAMES)} (any case) or all")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: $IZF_ROOT/data or ./data")
    p.add_argument("--url", help=f"archive address (default: url in conf/{DOWNLOAD_CONFIG})")
    p.add_argument("--sha256", help="expected sha256 of the archive")
    p.add_argument("--archive", type=Path, help="an xlsa17.zip you downloaded yourself: no network used")
    p.add_argument("--force", action="store_true", help="replace datasets that are already there")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_download)

    p = commands.add_parser("check", help="validate a dataset folder and print its summary")
    p.add_argument("target", metavar="NAME|DIR", help="a benchmark under <data-dir>/xlsa17/, or any folder")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--semantics", default="att", help="as dataset.semantics: att, sent, emb.npy, ...")
    p.add_argument("--no-cache", action="store_true", help="read res101.mat itself, write no cache")
    p.set_defaults(run=cmd_check)

    p = commands.add_parser("fake", help="write a generated stand-in with a benchmark's shape")
    p.add_argument("--like", required=True, type=str.upper, choices=sorted(BENCHMARKS))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--splits", type=Path, help="the real att_splits.mat (or its folder) to take attributes and "
                                               "splits from; without it they are generated")
    p.add_argument("--labels", type=Path, help="the real 1-based label vector (.npy), e.g. AWA2's")
    p.add_argument("--feature-dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=cmd_fake)

    p = commands.add_parser("extract", help="your own images (a folder per class) and attribute table to an "
                                            "xlsa17 folder of ResNet-101 features")
    p.add_argument("--images", required=True, type=Path, help="one sub-folder of images per class")
    p.add_argument("--attributes", required=True, type=Path, help="CSV: class name, then its attribute values")
    p.add_argument("--out", required=True, type=Path, help="the xlsa17 folder to write")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (torchvision's ResNet-101 IMAGENET1K_V1), a state-dict file, or random (tests)")
    p.add_argument("--unseen-classes", type=Path, help="a file naming the unseen classes, one per line")
    p.add_argument("--unseen", type=int, help="otherwise: how many classes to draw as unseen (default 20 %%)")
    p.add_argument("--test-seen-fraction", type=float, default=0.2, help="of each seen class's images")
    p.add_argument("--seed", type=int, default=0, help="the unseen classes' and held-out images' draw")
    p.add_argument("--image-size", type=int, default=224, help="the centre crop, after resizing to 256/224 of it")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--chunk", type=int, default=512, help="images per saved chunk (the unit of resumption)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_extract)

    p = commands.add_parser("bench-load", help="time a dataset's load from res101.mat and from the cache")
    p.add_argument("folder", type=Path)
    p.add_argument("--repeat", type=int, default=3, help="cached loads to take the fastest of")
    p.set_defaults(run=cmd_bench_load)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except IZFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
