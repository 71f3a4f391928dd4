"""The data path beyond the reader: the float32 cache, other class semantics, the validation task,
declared expectations, realistic stand-ins and the `python -m izf.data` commands."""

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from izf.data import DatasetError, ZSLDataModule, cache, load_xlsa17, save_xlsa17
from izf.data.__main__ import main as data_cli
from izf.data.benchmarks import BENCHMARKS
from izf.data.generate import like, synthetic
from izf.data.splits import validation_split
from izf.errors import ConfigError
from tests.conftest import run_cli


@pytest.fixture
def folder(tmp_path):
    return save_xlsa17(synthetic(seen=4, unseen=2, semantic_dim=3, feature_dim=6, per_class=5), tmp_path / "small")


def _rewrite(path, **changes):
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            mat.pop(key)
        else:
            mat[key] = value
    scipy.io.savemat(path, mat)


@pytest.fixture
def real_folder(tmp_path, xlsa17_dir):
    """A copy of a REAL split folder (att_splits.mat, sent_splits.mat for CUB) with generated
    features of dimension 16 (the real AWA2 labels where known)."""
    def make(name):
        out = tmp_path / name
        out.mkdir()
        for file in ("att_splits.mat", "sent_splits.mat"):
            if (xlsa17_dir / name / file).is_file():
                shutil.copy(xlsa17_dir / name / file, out)
        labels = None
        if name == "AWA2":
            labels = np.load(xlsa17_dir / "AWA2" / "res101_labels_reconstructed.npy").astype(np.int64) - 1
        data = like(name, splits_file=out / "att_splits.mat", labels=labels, feature_dim=16)
        scipy.io.savemat(out / "res101.mat", {"features": data.features.T.astype(np.float64),
                                              "labels": (data.labels + 1)[:, None]})
        return out
    return make


# ---- the float32 cache ------------------------------------------------------------------------
def test_cache_is_written_once_then_memory_mapped(folder):
    first = load_xlsa17(folder)
    entry = folder / ".izf-cache" / "res101.mat"
    assert (entry / "key.json").is_file() and (folder / ".izf-cache" / "att_splits.mat" / "key.json").is_file()
    written = (entry / "features.npy").stat().st_mtime_ns
    again = load_xlsa17(folder)
    assert (entry / "features.npy").stat().st_mtime_ns == written  # read, not rebuilt
    assert isinstance(again.features, np.memmap)
    assert np.array_equal(first.features, again.features) and np.array_equal(first.labels, again.labels)
    assert not isinstance(load_xlsa17(folder, cache=False).features, np.memmap)


def test_cache_follows_changes_of_the_source(folder):
    load_xlsa17(folder)
    features = scipy.io.loadmat(folder / "res101.mat")["features"] + 1.0
    _rewrite(folder / "res101.mat", features=features)
    assert np.allclose(load_xlsa17(folder).features, features.T)


def test_damaged_or_half_written_cache_is_rebuilt(folder):
    expected = load_xlsa17(folder, cache=False).features
    load_xlsa17(folder)
    entry = folder / ".izf-cache" / "res101.mat"
    npy = entry / "features.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated behind the key's back
    assert np.array_equal(load_xlsa17(folder).features, expected)
    (entry / "key.json").unlink()  # a crash after the content, before key.json
    npy.write_bytes(b"half")
    assert np.array_equal(load_xlsa17(folder).features, expected)
    assert (entry / "key.json").is_file()


class _Planted:
    """Unpickling this object creates a file: the proof that a pickle from the cache was run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_planted_in_the_cache_is_never_loaded(folder, tmp_path):
    expected = load_xlsa17(folder, cache=False)
    load_xlsa17(folder)
    marker = tmp_path / "pickle_was_run"
    entry = folder / ".izf-cache"
    with open(entry / "att_splits.mat" / "content.npz", "wb") as handle:  # an object array: a pickle inside
        np.savez(handle, att=np.array([_Planted(marker)], dtype=object), allow_pickle=True)
    with open(entry / "res101.mat" / "labels.npy", "wb") as handle:
        np.save(handle, np.array([_Planted(marker)], dtype=object), allow_pickle=True)
    (entry / "att_splits.mat" / "content.pickle").write_bytes(pickle.dumps(_Planted(marker)))  # the old format
    loaded = load_xlsa17(folder)  # the keys still match: the planted files are read, refused, rebuilt
    assert not marker.exists()
    assert np.array_equal(loaded.semantics, expected.semantics) and np.array_equal(loaded.labels, expected.labels)
    with np.load(entry / "att_splits.mat" / "content.npz", allow_pickle=False) as rebuilt:
        assert "att" in rebuilt.files and rebuilt["allclasses_names"].dtype.kind == "U"  # names as plain strings


def test_cache_goes_elsewhere_when_the_data_folder_is_read_only(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    monkeypatch.setenv("IZF_CACHE_DIR", str(tmp_path / "cache"))
    load_xlsa17(folder)
    assert not (folder / ".izf-cache").exists()
    assert list((tmp_path / "cache").glob("*/res101.mat/key.json"))
    assert isinstance(load_xlsa17(folder).features, np.memmap)


# ---- class semantics --------------------------------------------------------------------------
def test_cub_sentence_embeddings(real_folder):
    cub = real_folder("CUB")
    data = load_xlsa17(cub, semantics="sent")
    sent = scipy.io.loadmat(cub / "sent_splits.mat")["att"]
    assert data.semantics.shape == (200, 1024) and np.allclose(data.semantics, sent.T)
    assert load_xlsa17(cub).semantic_dim == 312


def test_class_embedding_files(folder, tmp_path):
    emb = np.random.default_rng(0).random((6, 5)).astype(np.float32)
    np.save(folder / "emb.npy", emb)
    assert np.array_equal(load_xlsa17(folder, semantics="emb.npy").semantics, emb)  # beside the data
    scipy.io.savemat(tmp_path / "w2v.mat", {"vectors": emb.T.astype(np.float64)})  # att's d × C layout
    assert np.allclose(load_xlsa17(folder, semantics=f"{tmp_path / 'w2v.mat'}:vectors").semantics, emb)

    np.save(folder / "wrong.npy", emb[:5])
    with pytest.raises(DatasetError, match=r"wrong.npy: the class embedding must .* \(C=6 × d\), found shape \(5, 5\)"):
        load_xlsa17(folder, semantics="wrong.npy")
    with pytest.raises(DatasetError, match=r"dataset.semantics=nowhere.npy: no such file"):
        load_xlsa17(folder, semantics="nowhere.npy")
    with pytest.raises(DatasetError, match=r"w2v.mat: missing key 'att'"):
        load_xlsa17(folder, semantics=str(tmp_path / "w2v.mat"))


# ---- the validation task ----------------------------------------------------------------------
def test_validation_task_uses_xlsa17_class_partition_and_trainval_only(real_folder):
    data = load_xlsa17(real_folder("AWA2"))  # real labels: 27 train / 13 val classes
    task = validation_split(data)
    val_classes = np.unique(data.labels[data.splits["val"]])
    assert task.num_classes == 40 and len(task.unseen_classes) == len(val_classes) == 13
    assert len(task.seen_classes) == 27 and not set(task.seen_classes) & set(task.unseen_classes)
    assert np.array_equal(task.features, data.features[data.splits["trainval"]])  # no test image
    kept = data.seen_classes  # renumbered: new class k is old class kept[k]
    assert np.array_equal(kept[task.unseen_classes], val_classes)
    assert np.allclose(task.semantics, data.semantics[kept])
    held_out = len(task.splits["test_seen"]) / (len(task.splits["test_seen"]) + len(task.splits["trainval"]))
    assert abs(held_out - 5882 / (5882 + 23527)) < 0.01  # the real split's share
    rows = np.concatenate([task.splits[s] for s in ("trainval", "test_seen", "test_unseen")])
    assert np.array_equal(np.sort(rows), np.arange(len(task.labels)))


def test_validation_task_on_generated_data_with_a_class_partition():
    """The same rules on generated data (no shared folder needed): 6 seen classes, 2 of them
    declared validation classes through train/val keys that also index test_seen rows."""
    data = synthetic(seen=6, unseen=3, semantic_dim=4, feature_dim=5, per_class=20, seed=3)
    seen_rows = np.concatenate([data.splits["trainval"], data.splits["test_seen"]])
    is_val = np.isin(data.labels[seen_rows], data.seen_classes[[1, 4]])
    with_keys = data.__class__(**{**data.__dict__, "splits": {**data.splits, "train": seen_rows[~is_val],
                                                              "val": seen_rows[is_val]}})
    task = validation_split(with_keys, classes="xlsa17")
    kept = data.seen_classes
    assert task.num_classes == 6 and kept[task.unseen_classes].tolist() == data.seen_classes[[1, 4]].tolist()
    assert np.array_equal(task.features, data.features[data.splits["trainval"]])  # test_seen rows never used
    trainval_labels = data.labels[data.splits["trainval"]]
    for new, old in enumerate(kept):
        count = int((trainval_labels == old).sum())
        in_test_seen = int((task.labels[task.splits["test_seen"]] == new).sum())
        if new in task.unseen_classes:  # all its images are the pseudo-unseen test set
            assert in_test_seen == 0 and int((task.labels[task.splits["test_unseen"]] == new).sum()) == count
        else:  # the real split's share held out, at least one image left to train on
            share = len(data.splits["test_seen"]) / len(seen_rows)
            assert in_test_seen == min(count - 1, round(share * count)) and in_test_seen > 0
    assert np.allclose(task.semantics, data.semantics[kept])


def test_validation_task_without_train_val_keys_is_seeded_random(real_folder):
    data = load_xlsa17(real_folder("CUB"))
    a, b, c = validation_split(data, seed=0), validation_split(data, seed=0), validation_split(data, seed=1)
    assert len(a.unseen_classes) == round(150 * 50 / 200) and a.num_classes == 150
    assert np.array_equal(a.splits["test_unseen"], b.splits["test_unseen"])
    assert not np.array_equal(a.splits["test_unseen"], c.splits["test_unseen"])
    with pytest.raises(DatasetError, match="no train_loc/val_loc"):
        validation_split(data, classes="xlsa17")
    with pytest.raises(ConfigError, match=r"unseen_classes must lie in 1\.\.149"):
        validation_split(data, classes="random", unseen_classes=150)


def test_validation_refuses_train_val_keys_that_share_classes(folder):
    data = load_xlsa17(folder)
    trainval = data.splits["trainval"]
    mixed = data.__class__(**{**data.__dict__, "splits": {**data.splits, "train": trainval, "val": trainval}})
    with pytest.raises(DatasetError, match="do not split the seen classes in two"):
        validation_split(mixed)


def test_datamodule_validation_mode_and_expectations(folder):
    dm = ZSLDataModule(name="small", root=str(folder), split="validation",
                       validation={"classes": "random", "unseen_classes": 1})
    dm.setup()
    assert len(dm.seen_classes) == 3 and len(dm.unseen_classes) == 1 and len(dm.semantics) == 4
    wrong = ZSLDataModule(name="AWA2", root=str(folder), expect={"images": 37322, "seen": 40, "unseen": None,
                                                                  "semantic_dim": {"att": 85}})
    with pytest.raises(DatasetError, match=r"images expected 37322, found 30, seen expected 40, found 4, "
                                           r"semantic_dim expected 85, found 3"):
        wrong.setup()
    # dataset.benchmark: the published sizes from their one home; a declared expect value wins
    as_cub = ZSLDataModule(name="CUB", root=str(folder), benchmark="CUB", semantics="att", expect={"unseen": 2})
    with pytest.raises(DatasetError, match=r"images expected 11788, found 30, seen expected 150, found 4, "
                                           r"semantic_dim expected 312, found 3\b(?!.*unseen)"):
        as_cub.setup()
    with pytest.raises(ConfigError, match=r"dataset.benchmark='AWA3': expected one of \['APY', 'AWA1'"):
        ZSLDataModule(name="x", root=str(folder), benchmark="AWA3")


# ---- realistic stand-ins ----------------------------------------------------------------------
def test_stand_in_has_resnet_like_statistics_and_learnable_classes():
    data = like("APY", seed=1)
    expected = BENCHMARKS["APY"]
    assert data.summary()["images"] == expected["images"] and data.feature_dim == 2048
    assert (len(data.seen_classes), len(data.unseen_classes)) == (expected["seen"], expected["unseen"])
    assert [len(data.splits[s]) for s in ("trainval", "test_seen", "test_unseen")] == list(expected["splits"])
    x = data.features
    assert x.min() >= 0 and 0.35 < x.mean(0).mean() < 0.5 and 0.5 < x.std(0).mean() < 0.75
    train, test = data.splits["trainval"], data.splits["test_seen"]
    means = np.stack([x[train][data.labels[train] == y].mean(0) for y in data.seen_classes])
    predicted = data.seen_classes[(x[test] @ means.T - 0.5 * (means ** 2).sum(1)).argmax(1)]
    assert 0.5 < (predicted == data.labels[test]).mean() < 1.0  # class structure, not a trivial task


def test_fake_command_on_a_real_split_file(tmp_path, xlsa17_dir, capsys):
    out = tmp_path / "APY"
    assert data_cli(["fake", "--like", "apy", "--out", str(out), "--splits", str(xlsa17_dir / "APY"),
                     "--feature-dim", "16"]) == 0
    data = load_xlsa17(out)
    real = scipy.io.loadmat(xlsa17_dir / "APY" / "att_splits.mat")
    assert np.allclose(data.semantics, real["att"].T) and data.feature_dim == 16
    assert np.array_equal(data.splits["test_unseen"], real["test_unseen_loc"].ravel() - 1)
    assert len(validation_split(data).unseen_classes) > 0  # labels fit train_loc/val_loc's partition
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # a normal folder, not a private temp one

    capsys.readouterr()
    assert data_cli(["check", str(out)]) == 0
    report = capsys.readouterr().out
    assert "APY" in report and "20 seen / 12 unseen" in report and "15339" in report


def test_fake_never_leaves_a_half_written_folder(tmp_path, capsys):
    np.save(tmp_path / "labels.npy", np.ones(10, dtype=np.uint8))  # far too few labels for APY
    out = tmp_path / "APY"
    assert data_cli(["fake", "--like", "APY", "--out", str(out), "--labels", str(tmp_path / "labels.npy"),
                     "--feature-dim", "4"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy"]
    out.mkdir()
    assert data_cli(["fake", "--like", "APY", "--out", str(out), "--feature-dim", "4"]) == 2
    assert "already exists" in capsys.readouterr().err


# ---- `check`: every kind of damage gets one specific line -------------------------------------
def _move_class_to_test_seen(m, f):
    """All trainval images of one seen class moved into test_seen: still a partition of the images."""
    labels = f["labels"].ravel()
    trainval = m["trainval_loc"].ravel()
    moved = labels[trainval - 1] == labels[trainval[0] - 1]
    return {"trainval_loc": trainval[~moved][:, None],
            "test_seen_loc": np.concatenate([m["test_seen_loc"].ravel(), trainval[moved]])[:, None]}


def _damage(folder, kind):
    splits, features = folder / "att_splits.mat", folder / "res101.mat"
    m, f = scipy.io.loadmat(splits), scipy.io.loadmat(features)
    edits = {
        "missing key": (splits, {"test_unseen_loc": None}, r"att_splits.mat: missing key 'test_unseen_loc'"),
        "wrong shape": (splits, {"att": m["att"].ravel()}, r"semantics have 18 classes but .* 4 seen \+ 2 unseen"),
        "float indices": (splits, {"trainval_loc": m["trainval_loc"] + 0.5}, r"'trainval_loc' must hold integer"),
        "out of range": (splits, {"test_seen_loc": m["test_seen_loc"] + 1000}, r"indices must lie in 1\.\.30"),
        "overlap": (splits, {"test_seen_loc": np.vstack([m["test_seen_loc"], m["trainval_loc"][:1]])}, "overlap"),
        "not covering": (splits, {"test_seen_loc": m["test_seen_loc"][1:]}, r"cover 29 of 30 images"),
        "label beyond att": (features, {"labels": np.where(f["labels"] == 1, 9, f["labels"])},
                             r"res101.mat: 'labels' must lie in 1\.\.6"),
        "seen class without training samples": (splits, _move_class_to_test_seen(m, f), "without trainval samples"),
        "nan": (features, {"features": np.where(np.arange(30) == 3, np.nan, f["features"])}, "contains NaN or inf"),
        "wrong dtype": (features, {"features": f["features"].astype(str)}, "must be a real numeric array"),
    }
    file, changes, message = edits[kind]
    _rewrite(file, **changes)
    return message


KINDS = ["missing key", "wrong shape", "float indices", "out of range", "overlap", "not covering",
         "label beyond att", "seen class without training samples", "nan", "wrong dtype"]


@pytest.mark.parametrize("kind", KINDS)
def test_check_names_each_problem(folder, kind, capsys):
    message = _damage(folder, kind)
    assert data_cli(["check", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(folder) in err
    assert re.search(message, err), err


@pytest.mark.parametrize("file, semantics, message", [
    ("res101.mat", "att", "truncated or damaged"),
    ("att_splits.mat", "att", "truncated or damaged"),
    ("sent_splits.mat", "sent", "truncated or damaged"),
    ("emb.npy", "emb.npy", "not a readable .npy array"),
])
def test_truncated_files(folder, file, semantics, message, capsys):
    shutil.copy(folder / "att_splits.mat", folder / "sent_splits.mat")
    np.save(folder / "emb.npy", np.ones((6, 4)))
    assert data_cli(["check", str(folder), "--semantics", semantics]) == 0  # intact, all of them
    content = (folder / file).read_bytes()
    (folder / file).write_bytes(content[: len(content) // 2])
    capsys.readouterr()
    assert data_cli(["check", str(folder), "--semantics", semantics]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / file}: {message}") and err.count("\n") == 1, err


def test_check_refuses_a_benchmark_of_the_wrong_shape(folder, tmp_path, capsys):
    awa2 = tmp_path / "data" / "xlsa17" / "AWA2"
    shutil.copytree(folder, awa2)
    assert data_cli(["check", "awa2", "--data-dir", str(tmp_path / "data")]) == 2
    assert "images expected 37322, found 30" in capsys.readouterr().err


def test_cli_exit_status_and_bench_load(folder):
    bad = run_cli("-m", "izf.data", "check", str(folder / "nowhere"))
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: {folder / 'nowhere'}: no such folder")
    assert "Traceback" not in bad.stderr
    bench = run_cli("-m", "izf.data", "bench-load", str(folder), "--repeat", "1", check=True)
    line = next(x for x in bench.stdout.splitlines() if x.startswith("BENCH_LOAD_JSON "))
    result = json.loads(line.split(" ", 1)[1])
    assert result["speedup"] > 0 and result["cached load (memory-mapped)"]["peak_kb"] > 0
