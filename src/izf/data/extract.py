"""Your own images to an xlsa17 folder: `python -m izf.data extract --images DIR --attributes FILE --out DIR`.

DIR holds one sub-folder of images per class; FILE is a CSV table with one row per class, its name
then its attribute values (a header row is optional). Every image becomes the 2048-d pooled
output of an ImageNet-trained ResNet-101 (torchvision's, at 224 px after a 256 px resize, as the
xlsa17 benchmark features were made), the classes are split into seen and unseen (seeded, or
the list you give), 20 % of each seen class's images (at least one) are held out as test_seen, and
the folder is written in the xlsa17 format that `dataset=custom dataset.root=DIR` trains on.

Everything that can be checked is checked before the network runs (the table, the folders, every
image's header). The features are computed in chunks saved beside --out, so an interrupted
extraction resumes where it stopped; --out appears only when it is complete and reads back valid.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from izf.data.dataset import ZSLData
from izf.data.xlsa17 import load_xlsa17, save_xlsa17
from izf.errors import DatasetError
from izf.io import atomic_folder, atomic_path, write_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FEATURE_DIM = 2048  # ResNet-101's pooled output


# ---- the inputs, checked before any work ----------------------------------------------------------
def read_attribute_table(path: Path) -> tuple[list[str], np.ndarray]:
    """(class names, C × d attribute matrix) from a CSV of `name, value, value, ...` rows."""
    if not path.is_file():
        raise DatasetError(f"--attributes {path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if rows and not any(_is_number(cell) for cell in rows[0][1:]):
        rows = rows[1:]  # a header: no value in the first row is a number
    if not rows:
        raise DatasetError(f"{path}: no class rows (expected `class name, value, value, ...` per line)")
    width = len(rows[0])
    if width < 2:
        raise DatasetError(f"{path}: line 1 has a class name but no attribute values")
    names, values, seen = [], [], {}
    for number, row in enumerate(rows, start=1):
        name = row[0].strip()
        if len(row) != width:
            raise DatasetError(f"{path}: class '{name}' has {len(row) - 1} attribute values, the first class "
                               f"{width - 1}")
        if name in seen:
            raise DatasetError(f"{path}: class '{name}' appears twice (rows {seen[name]} and {number})")
        seen[name] = number
        for column, cell in enumerate(row[1:], start=2):
            if not _is_number(cell) or not math.isfinite(float(cell)):
                raise DatasetError(f"{path}: class '{name}', column {column}: '{cell}' is not a finite number")
        names.append(name)
        values.append([float(cell) for cell in row[1:]])
    return names, np.asarray(values, dtype=np.float32)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@dataclass
class ImageFolder:
    files: list[Path]        # every image, class by class in table order
    labels: np.ndarray       # 0-based class index of each, into the attribute table's rows


def scan_images(root: Path, class_names: list[str]) -> ImageFolder:
    """The images of each class folder; the folders and the table must name the same classes, and
    every image must open (its header is read: a file that is not an image is refused now)."""
    if not root.is_dir():
        raise DatasetError(f"--images {root}: no such folder")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing, extra = sorted(set(class_names) - set(folders)), sorted(set(folders) - set(class_names))
    if missing or extra:
        raise DatasetError("the image folders and the attribute table name different classes: "
                           + "; ".join(part for part in (
                               f"in the table but no folder under {root}: {', '.join(missing)}" if missing else "",
                               f"a folder but not in the table: {', '.join(extra)}" if extra else "") if part))
    files, labels = [], []
    for label, name in enumerate(class_names):
        images = sorted(p for p in folders[name].rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DatasetError(f"class '{name}': no images in {folders[name]} (looked for "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        for image in images:
            _check_opens(image)
        files += images
        labels += [label] * len(images)
    return ImageFolder(files, np.asarray(labels, dtype=np.int64))


def _check_opens(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def choose_split(labels: np.ndarray, class_names: list[str], unseen: list[str] | None, unseen_count: int | None,
                 test_seen_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """trainval / test_seen / test_unseen row indices: the unseen classes (given, or drawn with
    `seed`), all their images in test_unseen; each seen class holds out ⌊fraction·n⌋ of its images,
    at least one and at most n − 1, drawn with `seed`, in test_seen, the rest in trainval. So a seen
    class needs two images: one to train on, one to test the seen side of GZSL on."""
    rng = np.random.default_rng(seed)
    if unseen:
        unknown = sorted(set(unseen) - set(class_names))
        if unknown:
            raise DatasetError(f"--unseen-classes names classes that are not in the attribute table: "
                               f"{', '.join(unknown)}")
        unseen_ids = np.array(sorted(class_names.index(name) for name in set(unseen)))
    else:
        count = unseen_count if unseen_count is not None else max(1, round(0.2 * len(class_names)))
        if not 1 <= count < len(class_names):
            raise DatasetError(f"--unseen {count}: expected 1 … {len(class_names) - 1} of the {len(class_names)} "
                               "classes")
        unseen_ids = np.sort(rng.choice(len(class_names), size=count, replace=False))
    if len(unseen_ids) >= len(class_names):
        raise DatasetError("every class is unseen: at least one class must have training images")
    seen_ids = sorted(set(range(len(class_names))) - set(unseen_ids.tolist()))
    single = [class_names[label] for label in seen_ids if (labels == label).sum() < 2]
    if single:
        several = len(single) > 1
        raise DatasetError(f"seen class{'es' if several else ''} {', '.join(single)}: 1 image"
                           f"{' each' if several else ''}, expected at least 2 (one to train on, one held out for "
                           f"test_seen); add images, or make {'them' if several else 'it'} unseen "
                           "(--unseen-classes)")
    splits = {"trainval": [], "test_seen": [], "test_unseen": np.flatnonzero(np.isin(labels, unseen_ids))}
    for label in seen_ids:
        rows = rng.permutation(np.flatnonzero(labels == label))
        held_out = min(len(rows) - 1, max(1, int(test_seen_fraction * len(rows))))
        splits["test_seen"] += rows[:held_out].tolist()
        splits["trainval"] += rows[held_out:].tolist()
    return {name: np.sort(np.asarray(rows, dtype=np.int64)) for name, rows in splits.items()}


# ---- the network ------------------------------------------------------------------------------------
def feature_network(weights: str, seed: int) -> torch.nn.Module:
    """ResNet-101 up to its global average pool (fc removed): 2048-d per image.
    weights: imagenet (torchvision's IMAGENET1K_V1, through its normal download and cache),
    random (initialised from `seed`: for tests), or the path of a saved state dict."""
    try:  # only this command needs torchvision
        from torchvision.models import ResNet101_Weights, resnet101
    except ImportError as err:
        raise DatasetError(f"feature extraction needs torchvision ({err}): pip install 'izf[images]', with the "
                           "torchvision release that matches your torch") from None

    if weights == "imagenet":
        try:
            network = resnet101(weights=ResNet101_Weights.IMAGENET1K_V1)
        except Exception as err:  # offline, or a broken cache
            raise DatasetError(f"could not load torchvision's ImageNet ResNet-101 weights ({type(err).__name__}: "
                               f"{err}); download them elsewhere and pass --weights PATH") from None
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            network = resnet101(weights=None)
        if weights != "random":
            path = Path(weights)
            if not path.is_file():
                raise DatasetError(f"--weights {path}: no such file (or use imagenet / random)")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                state = state.get("state_dict", state)
                network.load_state_dict(state)
            except Exception as err:
                raise DatasetError(f"--weights {path}: not a ResNet-101 state dict ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0]})") from None
    network.fc = torch.nn.Identity()
    return network.eval()


class _Images(torch.utils.data.Dataset):
    """Decoded, resized (shorter side to 256/224 of the crop), centre-cropped, normalised images."""

    def __init__(self, files: list[Path], image_size: int):
        from torchvision import transforms

        self.files = files
        self.transform = transforms.Compose([
            transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            with Image.open(self.files[index]) as image:
                return self.transform(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:  # a file that passed the header check but does not decode
            raise DatasetError(f"{self.files[index]}: the image does not decode ({type(err).__name__}: {err})") \
                from None


# ---- the extraction -------------------------------------------------------------------------------
@dataclass
class Extraction:
    images: Path
    attributes: Path
    out: Path
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    chunk: int = 512                     # images per saved chunk: the unit of resumption
    unseen_classes: Path | None = None
    unseen: int | None = None
    test_seen_fraction: float = 0.2
    seed: int = 0
    force: bool = False
    progress: bool = True

    def work_dir(self) -> Path:
        return self.out.with_name(f".{self.out.name}.extracting")


def extract(job: Extraction) -> dict[str, float]:
    """Runs the whole extraction; returns {"images": N, "seconds": network time, "images_per_s": …}."""
    if job.out.exists() and not job.force:
        raise DatasetError(f"--out {job.out} already exists (pass --force to replace it)")
    if job.image_size < 32 or job.batch_size < 1 or job.chunk < 1 or not 0 < job.test_seen_fraction < 1:
        raise DatasetError("expected --image-size ≥ 32, --batch-size ≥ 1, --chunk ≥ 1 and 0 < "
                           "--test-seen-fraction < 1")
    names, attributes = read_attribute_table(job.attributes)
    folder = scan_images(job.images, names)
    unseen = None
    if job.unseen_classes is not None:
        if not job.unseen_classes.is_file():
            raise DatasetError(f"--unseen-classes {job.unseen_classes}: no such file")
        unseen = [line.strip() for line in job.unseen_classes.read_text().splitlines() if line.strip()]
    splits = choose_split(folder.labels, names, unseen, job.unseen, job.test_seen_fraction, job.seed)
    network = feature_network(job.weights, job.seed)  # before any image is decoded: a bad --weights stops here
    device = torch.device("cuda" if job.device == "auto" and torch.cuda.is_available()
                          else "cpu" if job.device == "auto" else job.device)

    features, seconds = _features(job, folder.files, network.to(device), device)
    relative = [str(path.relative_to(job.images)) for path in folder.files]
    data = ZSLData(name=job.out.name, features=features, labels=folder.labels, semantics=attributes,
                   splits=splits, class_names=names)
    with atomic_folder(job.out) as partial:
        save_xlsa17(data, partial, image_files=relative)
        load_xlsa17(partial, name=job.out.name, cache=False)  # what was written must read back valid
    shutil.rmtree(job.work_dir(), ignore_errors=True)
    return {"images": len(folder.files), "seconds": seconds,
            "images_per_s": len(folder.files) / seconds if seconds else float("nan")}


def _features(job: Extraction, files: list[Path], network: torch.nn.Module,
              device: torch.device) -> tuple[np.ndarray, float]:
    """N × 2048 float32, chunk by chunk; chunks already in the work folder from an interrupted run
    with the same inputs and settings are kept. Returns the features and the seconds spent on the
    chunks computed now."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    work = job.work_dir()
    manifest = {"files": [str(p) for p in files], "weights": job.weights, "image_size": job.image_size,
                "seed": job.seed if job.weights == "random" else None, "chunk": job.chunk}
    fingerprint = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    if (work / "manifest.json").is_file() and json.loads((work / "manifest.json").read_text()) != fingerprint:
        raise DatasetError(f"{work} holds an interrupted extraction of other images or settings: delete it to "
                           "start afresh, or rerun with the same arguments to resume it")
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "manifest.json", fingerprint)
    starts = range(0, len(files), job.chunk)
    todo = [start for start in starts if not (work / f"chunk_{start:08d}.npy").is_file()]
    loader_options = {"batch_size": job.batch_size, "num_workers": job.workers,
                      "pin_memory": device.type == "cuda", "persistent_workers": False}
    seconds = 0.0
    with Progress(TextColumn("features"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                  TimeRemainingColumn(), disable=not job.progress) as progress:
        task = progress.add_task("", total=len(files), completed=len(files) - sum(
            min(job.chunk, len(files) - start) for start in todo))
        for start in todo:
            rows = files[start:start + job.chunk]
            began = time.perf_counter()
            parts = []
            with torch.inference_mode():
                for batch in torch.utils.data.DataLoader(_Images(rows, job.image_size), **loader_options):
                    parts.append(network(batch.to(device, non_blocking=True)).float().cpu())
                    progress.advance(task, len(batch))
            seconds += time.perf_counter() - began
            with atomic_path(work / f"chunk_{start:08d}.npy") as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, torch.cat(parts).numpy())
    features = np.concatenate([np.load(work / f"chunk_{start:08d}.npy") for start in starts])
    return features.astype(np.float32), seconds
