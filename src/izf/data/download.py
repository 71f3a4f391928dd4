"""Fetching and unpacking the public xlsa17 archive (`python -m izf.data download`).

The archive is about 1 GB, so a dropped connection resumes from the kept `.part` file, and nothing
lands under a final name before it is verified: the archive by its sha256 (when one is given) and
the zip's per-member CRCs, each dataset by reading it with `load_xlsa17`. Every failure the user can
act on raises a one-line DatasetError.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from izf.data.xlsa17 import FEATURES_FILE, GENERATED_FILE, SENTENCES_FILE, SPLITS_FILE, is_generated, load_xlsa17
from izf.errors import DatasetError
from izf.io import atomic_folder

NAMES = ("AWA1", "AWA2", "CUB", "SUN", "APY", "FLO")
REQUIRED_FILES = (FEATURES_FILE, SPLITS_FILE)
OPTIONAL_FILES = (SENTENCES_FILE,)  # CUB's sentence embeddings; not every dataset has them
CHUNK = 1 << 20


def download(names: list[str], data_dir: Path, url: str, sha256: str | None = None,
             archive: Path | None = None, force: bool = False, progress: bool = True,
             timeout: float = 30.0) -> list[Path]:
    """Fetch (unless `archive` is a local zip given by the user) and unpack datasets `names` into
    data_dir/xlsa17/<NAME>/; returns the dataset folders."""
    names = _check_names(names)
    root = Path(data_dir) / "xlsa17"
    todo = []
    for name in names:
        if _keep(root / name, force):
            print(f"{name}: {root / name} already exists, skipping it (--force replaces it)")
            continue
        if is_generated(root / name):
            print(f"{name}: {root / name} holds a generated stand-in ({GENERATED_FILE}), not the real data: "
                  "replacing it")
        todo.append(name)
    if todo:  # fetch only when something is left to unpack
        if archive is None:
            archive = fetch(url, root / "downloads", sha256=sha256, progress=progress, timeout=timeout)
        else:
            archive = Path(archive)
            if not archive.is_file():
                raise DatasetError(f"--archive {archive}: no such file")
            if sha256:
                _check_sha256(archive, sha256, what=f"--archive {archive}")
        unpack(archive, todo, root, force=force)
    return [root / name for name in names]


def _keep(folder: Path, force: bool) -> bool:
    """A dataset folder that is there stays, unless --force, or `python -m izf.data fake` made it."""
    return folder.exists() and not force and not is_generated(folder)


def _check_names(names: list[str]) -> list[str]:
    wanted = list(dict.fromkeys(str(n).upper() for n in names))  # upper-case, duplicates dropped, order kept
    unknown = [n for n in wanted if n not in NAMES]
    if unknown or not wanted:
        raise DatasetError(f"unknown xlsa17 dataset(s) {unknown or names}; expected some of {', '.join(NAMES)}")
    return wanted


def fetch(url: str, dest_dir: Path, sha256: str | None = None, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download `url` into dest_dir/<basename of url>, resuming a kept `.part`; verified before renaming."""
    final = Path(dest_dir) / (PurePosixPath(urllib.parse.urlparse(url).path).name or "xlsa17.zip")
    if final.is_file():
        print(f"using the archive already downloaded to {final}")
        if sha256:
            _check_sha256(final, sha256, what=f"{final} (delete it to download again)")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    how_by_hand = (f"Without network access, download xlsa17.zip elsewhere and pass it with --archive PATH, or unpack "
                   f"it so that {final.parent.parent}/<NAME>/ holds {FEATURES_FILE} and {SPLITS_FILE}.")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and have):
            raise DatasetError(f"cannot download {url}: HTTP {err.code} {err.reason}. {how_by_hand}") from None
        response = None  # 416 on a resume: the .part already holds every byte; go on to verify it
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts, refused, bad URL
        raise DatasetError(f"cannot download {url}: {getattr(err, 'reason', err)}. {how_by_hand}") from None

    if response is not None:
        with response:
            start = have if response.status == 206 else 0  # 200: the server ignored Range, so start over
            length = response.headers.get("Content-Length")
            total = start + int(length) if length else None
            problem = None
            print(f"downloading {url} to {final}" + (f" (resuming at byte {start})" if start else ""))
            try:
                with open(part, "ab" if start else "wb") as out, _progress_bar(progress) as bar:
                    task = bar.add_task(final.name, total=total, completed=start)
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        bar.advance(task, len(chunk))
            except (OSError, http.client.HTTPException) as err:  # dropped connection, read timeout
                problem = str(err) or type(err).__name__
            got = part.stat().st_size
            if problem or (total is not None and got < total):
                of = f" of {total}" if total is not None else ""
                raise DatasetError(f"download of {url} stopped after {got}{of} bytes "
                                   f"({problem or 'connection closed'}); "
                                   f"run the same command again to resume (the partial file {part} is kept)")

    if sha256:
        _check_sha256(part, sha256, what=f"downloaded {url}", delete=True)
    _check_zip(part, url)
    os.replace(part, final)
    return final


def _progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def _check_sha256(path: Path, expected: str, what: str, delete: bool = False) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    found, expected = digest.hexdigest(), expected.strip().lower()
    if found != expected:
        if delete:  # a wrong download must not be resumed: the next run starts over
            path.unlink(missing_ok=True)
        raise DatasetError(f"{what}: sha256 mismatch, expected {expected}, found {found}"
                           + ("; deleted it, run again to download afresh" if delete else ""))


def _check_zip(part: Path, url: str) -> None:
    """Read every member once so its CRC32 is checked; a damaged download is deleted, not resumed."""
    try:
        with zipfile.ZipFile(part) as zf:
            bad = zf.testzip()
        problem = f"member {bad} fails its CRC check" if bad else None
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # the many ways a damaged zip shows
        problem = f"not a valid zip archive ({err})"
    if problem:
        part.unlink(missing_ok=True)
        raise DatasetError(f"downloaded {url}: {problem}; deleted it, run again to download afresh")


def _members(zf: zipfile.ZipFile, name: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's files for dataset `name`: members ending in <NAME>/<file>, at any depth."""
    found: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        parts = PurePosixPath(info.filename).parts
        if not info.is_dir() and len(parts) >= 2 and parts[-2].upper() == name:
            found.setdefault(parts[-1], info)
    return found


def unpack(archive: Path, names: list[str], root: Path, force: bool = False) -> list[Path]:
    """Extract and validate datasets `names` from the xlsa17 zip into root/<NAME>/, each atomically."""
    names, root = _check_names(names), Path(root)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"{archive}: not a readable zip archive ({err})") from None
    with zf:
        members = {name: _members(zf, name) for name in names}
        for name, found in members.items():  # check them all before writing anything
            missing = [f for f in REQUIRED_FILES if f not in found]
            if missing:
                holds = ", ".join(info.filename for info in found.values()) or "nothing"
                raise DatasetError(f"{archive} lacks {' and '.join(missing)} for {name}; for {name} it holds: {holds}")
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            _install(zf, archive, name, members[name], root, force)
    return [root / name for name in names]


def _install(zf: zipfile.ZipFile, archive: Path, name: str, found: dict[str, zipfile.ZipInfo],
             root: Path, force: bool) -> None:
    final = root / name
    if _keep(final, force):
        print(f"{name}: {final} already exists, skipping it (--force replaces it)")
        return
    with atomic_folder(final) as tmp:  # unpacked and validated under a hidden name, then renamed
        for file in REQUIRED_FILES + OPTIONAL_FILES:
            if file in found:
                try:
                    with zf.open(found[file]) as src, open(tmp / file, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise DatasetError(f"{archive}: cannot extract {found[file].filename} ({err})") from None
        load_xlsa17(tmp, name=name)  # a bad dataset raises DatasetError naming the file and key
    print(f"{name}: unpacked to {final}")
