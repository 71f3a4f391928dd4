"""Property-based fuzzing of the data readers: whatever the .mat / .npy files hold, loading gives a
valid dataset or a DatasetError (one line naming the file), never another exception."""

import io
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from izf.data import DatasetError, load_xlsa17, save_xlsa17
from izf.data.generate import synthetic
from izf.data.xlsa17 import FEATURES_FILE, SPLITS_FILE, validate

VALID = synthetic(seen=3, unseen=2, semantic_dim=3, feature_dim=5, per_class=4, seed=0)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_contents(tmp_path):
    folder = save_xlsa17(VALID, tmp_path / "valid")
    return {file: {k: v for k, v in scipy.io.loadmat(folder / file).items() if not k.startswith("__")}
            for file in (FEATURES_FILE, SPLITS_FILE)}


# Arrays a broken or foreign file might hold: any numeric kind, odd shapes, NaN/inf, empty ones.
any_array = st.one_of(
    hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int64, np.uint8, np.uint16, np.int8, np.bool_,
                                      np.complex128]),
               shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=25)),
    st.integers(-5, 40).map(lambda n: np.full((max(n, 0), 1), n)),
    st.text(max_size=8).map(np.array),
)


def _load_checked(folder):
    """The property: a DatasetError, or a dataset that passes validation and is internally consistent."""
    try:
        data = load_xlsa17(folder, cache=False)
    except DatasetError as err:
        message = str(err)
        assert message and "\n" not in message
        return
    validate(data, source="fuzz")
    assert data.features.dtype == np.float32 and np.isfinite(data.features).all()
    assert data.labels.min() >= 0 and data.labels.max() < data.num_classes


@FUZZ
@given(file=st.sampled_from([FEATURES_FILE, SPLITS_FILE]),
       key=st.sampled_from(["features", "labels", "att", "trainval_loc", "test_seen_loc", "test_unseen_loc",
                            "train_loc", "val_loc", "allclasses_names"]),
       value=st.one_of(st.none(), any_array))
def test_replaced_or_missing_keys(tmp_path, file, key, value):
    contents = _valid_contents(tmp_path)
    mat = contents[file]
    if value is None:
        mat.pop(key, None)
    else:
        mat[key] = value
    folder = tmp_path / "fuzzed"
    folder.mkdir(exist_ok=True)
    for name, content in contents.items():
        scipy.io.savemat(folder / name, content)
    _load_checked(folder)


@FUZZ
@given(file=st.sampled_from([FEATURES_FILE, SPLITS_FILE]), data=st.data())
def test_corrupted_bytes(tmp_path, file, data):
    folder = save_xlsa17(VALID, tmp_path / "corrupt")
    raw = bytearray((folder / file).read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for position in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=20)):
            raw[position] ^= data.draw(st.integers(1, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=300)))
    (folder / file).write_bytes(bytes(raw))
    _load_checked(folder)


@FUZZ
@given(value=any_array, kind=st.sampled_from(["npy", "mat"]))
def test_class_embedding_files(tmp_path, value, kind):
    folder = save_xlsa17(VALID, tmp_path / "emb")
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, value)
        (folder / "emb.npy").write_bytes(buffer.getvalue())
    else:
        scipy.io.savemat(folder / "emb.mat", {"att": value})
    try:
        data = load_xlsa17(folder, semantics=f"emb.{kind}", cache=False)
    except DatasetError as err:
        assert "\n" not in str(err)
        return
    assert data.semantics.shape[0] == VALID.num_classes and np.isfinite(data.semantics).all()


@pytest.mark.parametrize("value, message", [
    (np.full((5, 1), 3.4028236e38), "beyond float32"),  # finite in float64, inf once read as float32 (fuzzing found it)
    (np.ones((5, 2)) + 1j, "must hold real numbers"),
])
def test_class_embeddings_that_float32_cannot_hold_are_refused(tmp_path, value, message):
    folder = save_xlsa17(VALID, tmp_path / "emb")
    np.save(folder / "emb.npy", value)
    with pytest.raises(DatasetError, match=message):
        load_xlsa17(folder, semantics="emb.npy", cache=False)


@pytest.mark.parametrize("file", [FEATURES_FILE, SPLITS_FILE])
def test_fuzzing_sees_valid_files_as_valid(tmp_path, file):
    """The property's other branch is reachable: untouched files load."""
    folder = save_xlsa17(VALID, tmp_path / "ok")
    data = load_xlsa17(folder, cache=False)
    assert data.summary() == VALID.summary()


def _segfault(source, out):
    import ctypes
    ctypes.string_at(0)  # what scipy's MAT parser does on some corrupted files


def test_a_parser_crash_becomes_a_dataset_error(tmp_path):
    from izf.data import isolated

    with pytest.raises(DatasetError, match=r"x.mat: corrupt file: the MAT parser crashed on it \(SIGSEGV\)"):
        isolated.run(_segfault, tmp_path / "x.mat", tmp_path)


def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    """The reader's child process imports the main module first: a script whose code runs at import
    makes the child exit before it answers. That is the script's fault, not the file's."""
    folder = save_xlsa17(VALID, tmp_path / "ok")
    script = tmp_path / "unguarded.py"
    script.write_text("import sys\nfrom izf.data.xlsa17 import load_xlsa17\nload_xlsa17(sys.argv[1], cache=False)\n")
    result = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert 'put its code under `if __name__ == "__main__":`' in result.stderr
    assert "corrupt file" not in result.stderr
