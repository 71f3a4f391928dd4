"""The xlsa17 reader on the REAL att_splits.mat files with generated res101.mat features, and
its errors on bad input."""

import shutil

import numpy as np
import pytest
import scipy.io
import torch

from izf.data import DatasetError, ZSLDataModule, load_xlsa17, save_xlsa17
from izf.data.benchmarks import BENCHMARKS
from izf.data.generate import like, synthetic


def _write_res101(folder, features, labels):
    scipy.io.savemat(folder / "res101.mat", {"features": features.T.astype(np.float64),
                                             "labels": (labels + 1).reshape(-1, 1).astype(np.uint16)})


@pytest.fixture
def real_like(tmp_path, xlsa17_dir, request):
    """A folder with a REAL att_splits.mat and generated features of the right shape."""
    name = request.param
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(xlsa17_dir / name / "att_splits.mat", folder)
    labels = None
    if name == "AWA2":  # the real AWA2 label vector is known
        labels = np.load(xlsa17_dir / "AWA2" / "res101_labels_reconstructed.npy").astype(np.int64) - 1
    data = like(name, splits_file=folder / "att_splits.mat", labels=labels, feature_dim=32)
    _write_res101(folder, data.features, data.labels)
    return name, folder


@pytest.mark.parametrize("real_like", list(BENCHMARKS), indirect=True)
def test_reader_on_real_split_files(real_like):
    name, folder = real_like
    data = load_xlsa17(folder, name=name)
    expected = BENCHMARKS[name]
    assert data.features.shape == (expected["images"], 32) and data.features.dtype == np.float32
    assert data.semantic_dim == expected["semantic_dim"]
    assert (len(data.seen_classes), len(data.unseen_classes)) == (expected["seen"], expected["unseen"])
    mat = scipy.io.loadmat(folder / "att_splits.mat")
    for split in ("trainval", "test_seen", "test_unseen"):  # 1-based on disk, 0-based in memory
        assert np.array_equal(data.splits[split], mat[f"{split}_loc"].ravel().astype(np.int64) - 1)
    assert ("train" in data.splits) == ("train_loc" in mat)  # optional (absent for CUB)
    assert np.allclose(data.semantics, mat["att"].T)
    if name != "FLO":
        assert len(data.class_names) == data.num_classes and data.class_names[0] != "class_1"


@pytest.mark.parametrize("real_like", ["AWA2"], indirect=True)
def test_real_awa2_labels_give_published_seen_unseen_split(real_like):
    _, folder = real_like
    data = load_xlsa17(folder)
    assert len(data.splits["trainval"]) == 23527 and len(data.splits["test_unseen"]) == 7913
    assert not set(data.seen_classes) & set(data.unseen_classes)


def test_roundtrip_through_writer(tmp_path):
    data = synthetic(seen=5, unseen=3, semantic_dim=4, feature_dim=8, per_class=10)
    back = load_xlsa17(save_xlsa17(data, tmp_path / "d"))
    assert np.array_equal(back.labels, data.labels) and np.allclose(back.features, data.features)
    assert all(np.array_equal(back.splits[k], data.splits[k]) for k in data.splits)
    assert back.class_names == data.class_names
    assert not list((tmp_path / "d").glob(".*tmp"))  # no temporary files left behind


@pytest.fixture
def good_folder(tmp_path):
    data = synthetic(seen=4, unseen=2, semantic_dim=3, feature_dim=6, per_class=5)
    return save_xlsa17(data, tmp_path / "good")


def _edit(folder, file, **changes):
    mat = scipy.io.loadmat(folder / file)
    for key, value in changes.items():
        if value is None:
            mat.pop(key)
        else:
            mat[key] = value
    scipy.io.savemat(folder / file, {k: v for k, v in mat.items() if not k.startswith("__")})


def test_missing_folder_names_files_and_how_to_get_them(tmp_path):
    with pytest.raises(DatasetError, match=r"no such folder .*AWA2 \(expected res101.mat and att_splits.mat.*xlsa17"):
        load_xlsa17(tmp_path / "AWA2")
    (tmp_path / "AWA2").mkdir()
    with pytest.raises(DatasetError, match=r"missing res101.mat and att_splits.mat.*xlsa17"):
        load_xlsa17(tmp_path / "AWA2")


def test_missing_key(good_folder):
    _edit(good_folder, "att_splits.mat", test_seen_loc=None)
    with pytest.raises(DatasetError, match=r"att_splits.mat: missing key 'test_seen_loc'"):
        load_xlsa17(good_folder)


def test_index_out_of_range(good_folder):
    loc = scipy.io.loadmat(good_folder / "att_splits.mat")["trainval_loc"].copy()
    loc[0] = 999
    _edit(good_folder, "att_splits.mat", trainval_loc=loc)
    with pytest.raises(DatasetError, match=r"'trainval_loc' indices must lie in 1\.\.30"):
        load_xlsa17(good_folder)


def test_overlapping_splits(good_folder):
    mat = scipy.io.loadmat(good_folder / "att_splits.mat")
    _edit(good_folder, "att_splits.mat", test_seen_loc=np.vstack([mat["test_seen_loc"], mat["trainval_loc"][:1]]))
    with pytest.raises(DatasetError, match="overlap"):
        load_xlsa17(good_folder)


def test_labels_beyond_attribute_columns(good_folder):
    mat = scipy.io.loadmat(good_folder / "res101.mat")
    labels = mat["labels"].copy()
    labels[0] = 7
    _edit(good_folder, "res101.mat", labels=labels)
    with pytest.raises(DatasetError, match=r"'labels' must lie in 1\.\.6"):
        load_xlsa17(good_folder)


def test_nan_features(good_folder):
    features = scipy.io.loadmat(good_folder / "res101.mat")["features"].copy()
    features[0, 0] = np.nan
    _edit(good_folder, "res101.mat", features=features)
    with pytest.raises(DatasetError, match="NaN"):
        load_xlsa17(good_folder)


def test_corrupt_file(good_folder):
    (good_folder / "res101.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 10)
    with pytest.raises(DatasetError, match=r"res101.mat: not a readable MAT v5 file"):
        load_xlsa17(good_folder)


def test_datamodule_scales_with_trainval_statistics_only(good_folder):
    dm = ZSLDataModule(name="good", root=str(good_folder))
    dm.setup()
    x_train, _ = dm.split("trainval")
    assert x_train.min() == 0 and x_train.max() == 1
    raw = load_xlsa17(good_folder)
    low = raw.features[raw.splits["trainval"]].min(0)
    span = raw.features[raw.splits["trainval"]].max(0) - low
    expected = (raw.features[raw.splits["test_unseen"]] - low) / np.where(span > 0, span, 1)
    assert np.allclose(dm.split("test_unseen")[0].numpy(), expected, atol=1e-6)
    assert set(dm.seen_classes.tolist()) | set(dm.unseen_classes.tolist()) == set(range(6))


def test_training_batches_are_whole_reshuffled_passes():
    from izf.data.datamodule import ShuffledBatches

    x = torch.arange(10.0)[:, None]
    batches = list(ShuffledBatches(x, torch.arange(10), batch_size=4, num_batches=5))
    assert len(batches) == 5 and all(len(b[0]) == 4 for b in batches)
    first_pass = torch.cat([b[1] for b in batches[:2]])
    assert len(set(first_pass.tolist())) == 8  # no repeats within a pass
    assert all(torch.equal(b[0][:, 0].long(), b[1]) for b in batches)  # rows stay aligned
