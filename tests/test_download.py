"""`izf.data.download` against a local HTTP server serving a small generated xlsa17-like archive:
resume, corruption, checksums, unreachable hosts, bad datasets, skip/force, and the CLI."""

import hashlib
import io
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from izf.data.download import download
from izf.data.generate import synthetic
from izf.data.xlsa17 import load_xlsa17, save_xlsa17
from izf.errors import DatasetError
from tests.conftest import run_cli


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    """A zip laid out like xlsa17.zip: AWA2 and CUB valid (CUB with sent_splits.mat), SUN with a
    truncated res101.mat, APY with split indices out of range, FLO with att_splits.mat only."""
    base = tmp_path_factory.mktemp("datasets")
    small = {"seen": 4, "unseen": 2, "semantic_dim": 5, "feature_dim": 8, "per_class": 10}
    files = {}
    for seed, name in enumerate(["AWA2", "CUB", "SUN", "APY", "FLO"]):
        files[name] = _folder_files(save_xlsa17(synthetic(**small, seed=seed), base / name))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"att": np.ones((4, 6))})
    files["CUB"]["sent_splits.mat"] = buf.getvalue()
    files["SUN"]["res101.mat"] = files["SUN"]["res101.mat"][:200]
    bad = scipy.io.loadmat(io.BytesIO(files["APY"]["att_splits.mat"]))
    bad["test_unseen_loc"] = bad["test_unseen_loc"] + 1000
    buf = io.BytesIO()
    scipy.io.savemat(buf, {k: v for k, v in bad.items() if not k.startswith("__")})
    files["APY"]["att_splits.mat"] = buf.getvalue()
    del files["FLO"]["res101.mat"]

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("xlsa17/", b"")
        zf.writestr("xlsa17/README.txt", b"proposed splits")
        for name, content in files.items():
            for file, data in content.items():
                zf.writestr(f"xlsa17/data/{name}/{file}", data)
    return out.getvalue()


class _State:
    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None  # send the full Content-Length, then only this many bytes (once)
        self.corrupt = False  # flip bytes in the middle of the archive
        self.ignore_range = False
        self.ranges: list[str | None] = []  # the Range header of every request


@pytest.fixture
def server(payload):
    state = _State(payload)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            if self.path != "/xlsa17.zip":
                self.send_error(404)
                return
            data = bytearray(state.payload)
            if state.corrupt:
                mid = len(data) // 2
                data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
            rng = self.headers.get("Range")
            state.ranges.append(rng)
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = bytes(data[start:])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:
                body, state.cut_after = body[:state.cut_after], None
            self.wfile.write(body)
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/xlsa17.zip"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/xlsa17.zip"


def _fetch(server, data_dir, names=("AWA2",), **kwargs):
    return download(list(names), data_dir, server.url, progress=False, timeout=5, **kwargs)


def _entries(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "xlsa17").iterdir())


@pytest.mark.parametrize("names", [["AWA2"], ["awa2", "CUB"]])
def test_download_and_unpack(server, tmp_path, names, payload):
    folders = _fetch(server, tmp_path, names, sha256=hashlib.sha256(payload).hexdigest())
    assert folders == [tmp_path / "xlsa17" / n.upper() for n in names]
    for folder in folders:
        assert load_xlsa17(folder, name=folder.name).features.shape[1] == 8
    assert _entries(tmp_path) == sorted(["downloads", *(n.upper() for n in names)])  # no .partial leftovers
    assert [p.name for p in (tmp_path / "xlsa17" / "downloads").iterdir()] == ["xlsa17.zip"]
    if "CUB" in _entries(tmp_path):
        assert (tmp_path / "xlsa17" / "CUB" / "sent_splits.mat").is_file()


def test_interrupted_download_resumes(server, tmp_path, payload):
    kept = len(payload) // 2
    server.cut_after = kept
    with pytest.raises(DatasetError, match=rf"after {kept} of {len(payload)} bytes.*again to resume") as err:
        _fetch(server, tmp_path)
    assert "\n" not in str(err.value)
    part = tmp_path / "xlsa17" / "downloads" / "xlsa17.zip.part"
    assert part.stat().st_size == kept
    assert _entries(tmp_path) == ["downloads"]

    _fetch(server, tmp_path)
    assert server.ranges[-1] == f"bytes={kept}-"
    assert not part.exists()
    load_xlsa17(tmp_path / "xlsa17" / "AWA2")


def test_server_ignoring_range_restarts(server, tmp_path):
    server.cut_after = 100
    with pytest.raises(DatasetError, match="resume"):
        _fetch(server, tmp_path)
    server.ignore_range = True
    _fetch(server, tmp_path)
    assert server.ranges[-1] == "bytes=100-"
    load_xlsa17(tmp_path / "xlsa17" / "AWA2")


def test_complete_part_is_verified_not_refetched(server, tmp_path, payload):
    """A run killed after the last byte but before the rename: the server answers 416 to the resume."""
    downloads = tmp_path / "xlsa17" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "xlsa17.zip.part").write_bytes(payload)
    _fetch(server, tmp_path)
    assert server.ranges == [f"bytes={len(payload)}-"]
    assert (downloads / "xlsa17.zip").read_bytes() == payload


def test_corrupted_download_is_deleted(server, tmp_path):
    server.corrupt = True
    with pytest.raises(DatasetError, match="run again to download afresh"):
        _fetch(server, tmp_path)
    assert _entries(tmp_path) == ["downloads"]
    assert list((tmp_path / "xlsa17" / "downloads").iterdir()) == []


def test_sha256_mismatch(server, tmp_path, payload):
    with pytest.raises(DatasetError) as err:
        _fetch(server, tmp_path, sha256="0" * 64)
    assert "0" * 64 in str(err.value) and hashlib.sha256(payload).hexdigest() in str(err.value)
    assert list((tmp_path / "xlsa17" / "downloads").iterdir()) == []


def test_unreachable_host_fails_fast(tmp_path):
    url = _closed_port_url()
    start = time.monotonic()
    with pytest.raises(DatasetError, match="--archive") as err:
        download(["AWA2"], tmp_path, url, progress=False, timeout=5)
    assert time.monotonic() - start < 5
    assert url in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "xlsa17" / "AWA2").exists()


def test_http_error(server, tmp_path):
    with pytest.raises(DatasetError, match=r"cannot download .*/missing\.zip: HTTP 404.*--archive"):
        download(["AWA2"], tmp_path, server.url.replace("xlsa17.zip", "missing.zip"), progress=False)


def test_local_archive_needs_no_server(tmp_path, payload):
    archive = tmp_path / "elsewhere" / "xlsa17.zip"
    archive.parent.mkdir()
    archive.write_bytes(payload)
    [folder] = download(["CUB"], tmp_path / "data", _closed_port_url(), archive=archive, progress=False)
    load_xlsa17(folder, name="CUB")
    assert _entries(tmp_path / "data") == ["CUB"]  # nothing fetched
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        download(["AWA2"], tmp_path / "data", "", archive=archive, sha256="ab" * 32, progress=False)
    assert archive.is_file()  # the user's own file is never deleted


@pytest.mark.parametrize(("names", "message"), [
    (["AWA2", "FLO"], r"lacks res101\.mat for FLO; for FLO it holds: xlsa17/data/FLO/att_splits\.mat"),
    (["AWA1"], r"lacks res101\.mat and att_splits\.mat for AWA1; for AWA1 it holds: nothing"),
])
def test_dataset_missing_from_archive(server, tmp_path, names, message):
    with pytest.raises(DatasetError, match=message):
        _fetch(server, tmp_path, names)
    assert _entries(tmp_path) == ["downloads"]  # AWA2 was not unpacked either: all are checked first


# The messages are the reader's; only the file (and key) they name is pinned here.
@pytest.mark.parametrize(("name", "message"), [("SUN", r"res101\.mat"), ("APY", r"att_splits\.mat.*test_unseen_loc")])
def test_invalid_dataset_leaves_nothing(server, tmp_path, name, message):
    with pytest.raises(DatasetError, match=message):
        _fetch(server, tmp_path, [name])
    assert _entries(tmp_path) == ["downloads"]


def test_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="unknown xlsa17 dataset.*IMAGENET"):
        download(["AWA2", "imagenet"], tmp_path, "http://127.0.0.1:1/xlsa17.zip", progress=False)


def test_existing_folder_skipped_or_replaced(server, tmp_path):
    [folder] = _fetch(server, tmp_path)
    (folder / "marker").write_text("mine")
    requests = len(server.ranges)
    _fetch(server, tmp_path)
    assert (folder / "marker").is_file() and len(server.ranges) == requests  # skipped, nothing fetched

    _fetch(server, tmp_path, force=True)
    assert not (folder / "marker").exists()
    load_xlsa17(folder)
    assert len(server.ranges) == requests  # the downloaded archive is reused
    assert _entries(tmp_path) == ["AWA2", "downloads"]  # the old copy is gone too


def test_cli(server, tmp_path):
    def cli(url, data_dir):
        return run_cli("-m", "izf.data", "download", "AWA2", "--data-dir", str(data_dir), "--url", url, "--no-progress",
                       timeout=120)

    done = cli(server.url, tmp_path)
    assert done.returncode == 0, done.stderr
    load_xlsa17(tmp_path / "xlsa17" / "AWA2")

    failed = cli(_closed_port_url(), tmp_path / "other")
    assert failed.returncode == 2
    assert failed.stderr.startswith("error:") and "--archive" in failed.stderr and "Traceback" not in failed.stderr
