"""python -m izf.data extract on a small generated image folder, with random ResNet-101 weights
(pretrained ones cannot be downloaded here): the written folder passes `izf.data check` and
trains; an interrupted extraction resumes to the same features; bad input is refused first."""

import numpy as np
import pytest
import torch
from PIL import Image

from izf.data import extract as extraction
from izf.data.__main__ import main as data_main
from izf.data.xlsa17 import load_xlsa17
from izf.errors import DatasetError

CLASSES = {"zebra": 4, "otter": 3, "horse": 3, "whale": 2}
FAST = ["--weights", "random", "--image-size", "32", "--batch-size", "3", "--workers", "0", "--no-progress"]


def _image_folder(root, classes=CLASSES):
    rng = np.random.default_rng(0)
    for number, (name, count) in enumerate(classes.items()):
        (root / "images" / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(24 + 5 * i, 40 - 3 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / name / f"{i}.{'png' if (number + i) % 2 else 'jpg'}")
    rows = ["name,stripes,water,legs"] + [f"{name},{n % 2},{n / 3:.3f},{4 - n}" for n, name in enumerate(classes)]
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    return root / "images", root / "attributes.csv"


def _extract(images, attributes, out, *extra):
    return data_main(["extract", "--images", str(images), "--attributes", str(attributes), "--out", str(out),
                      *FAST, *extra])


def test_extracted_folder_is_valid_xlsa17_with_the_given_split(tmp_path, capsys, monkeypatch):
    images, attributes = _image_folder(tmp_path)
    (tmp_path / "unseen.txt").write_text("otter\n")
    built = []
    monkeypatch.setattr(extraction, "feature_network", lambda *args, real=extraction.feature_network:
                        built.append(real(*args)) or built[-1])
    assert _extract(images, attributes, tmp_path / "mine", "--unseen-classes", str(tmp_path / "unseen.txt")) == 0
    assert "images/s" in capsys.readouterr().out
    assert data_main(["check", str(tmp_path / "mine")]) == 0
    data = load_xlsa17(tmp_path / "mine", cache=False)
    assert data.features.shape == (12, 2048) and data.features.dtype == np.float32
    assert data.class_names == list(CLASSES) and data.semantics.shape == (4, 3)
    np.testing.assert_allclose(data.semantics[3], [1, 1.0, 1])  # whale: row 4 of the table
    otter = list(CLASSES).index("otter")
    assert set(data.labels[data.splits["test_unseen"]]) == {otter}
    assert otter not in set(data.labels[data.splits["trainval"]])
    assert sorted(np.concatenate(list(data.splits.values()))) == list(range(12))  # every image exactly once
    for label in set(range(4)) - {otter}:  # 20 % held out, at least one image kept for training
        assert (data.labels[data.splits["trainval"]] == label).sum() >= 1
        assert (data.labels[data.splits["test_seen"]] == label).sum() == 1  # int(0.2·n) = 0: at least one
    assert not (tmp_path / ".mine.extracting").exists()  # the chunks are gone once the folder is written

    # a row is the network's pooled output for its image (batched with others there, alone here:
    # float32 sums in another order; random weights give activations in the hundreds)
    with torch.inference_mode():
        expected = built[0](extraction._Images([images / "zebra" / "0.jpg"], 32)[0][None])[0].numpy()
    np.testing.assert_allclose(data.features[0], expected, atol=1e-5 * float(expected.max()))
    assert (data.features >= 0).all()  # after the last ReLU and the average pool, as ResNet features are


def test_an_interrupted_extraction_resumes_to_the_same_features(tmp_path, monkeypatch):
    images, attributes = _image_folder(tmp_path, {"a": 2, "b": 2, "c": 2})
    assert _extract(images, attributes, tmp_path / "straight", "--chunk", "2", "--unseen", "1") == 0

    real_save = np.save
    calls = []

    def dies_on_second_chunk(handle, array):
        calls.append(len(array))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the job were killed while writing
        real_save(handle, array)

    monkeypatch.setattr(extraction.np, "save", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _extract(images, attributes, tmp_path / "resumed", "--chunk", "2", "--unseen", "1")
    monkeypatch.setattr(extraction.np, "save", real_save)
    work = tmp_path / ".resumed.extracting"
    assert sorted(p.name for p in work.glob("chunk_*.npy")) == ["chunk_00000000.npy"]  # one chunk done, none half
    assert not (tmp_path / "resumed").exists()

    computed = []
    real_network = extraction.feature_network

    def counting(weights, seed):
        network = real_network(weights, seed)
        network.register_forward_hook(lambda module, inputs, output: computed.append(len(output)))
        return network

    monkeypatch.setattr(extraction, "feature_network", counting)
    assert _extract(images, attributes, tmp_path / "resumed", "--chunk", "2", "--unseen", "1") == 0
    assert sum(computed) == 4  # the 2 images of the saved chunk were not computed again
    straight, resumed = (load_xlsa17(tmp_path / name, cache=False) for name in ("straight", "resumed"))
    np.testing.assert_array_equal(straight.features, resumed.features)
    assert all((straight.splits[k] == resumed.splits[k]).all() for k in straight.splits)


def test_weights_from_a_file(tmp_path):
    state = extraction.feature_network("random", seed=3).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # a full torchvision file
    torch.save(state, tmp_path / "resnet101.pth")
    loaded = extraction.feature_network(str(tmp_path / "resnet101.pth"), seed=0).state_dict()
    assert loaded.keys() == extraction.feature_network("random", seed=0).state_dict().keys()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert not torch.equal(loaded["conv1.weight"], extraction.feature_network("random", seed=0).state_dict()[
        "conv1.weight"])  # the file's weights, not the seed's

    images, attributes = _image_folder(tmp_path, {"a": 1, "b": 1})
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(DatasetError, match="wrong.pth: not a ResNet-101 state dict"):
        extraction.feature_network(str(tmp_path / "wrong.pth"), seed=0)
    assert _extract(images, attributes, tmp_path / "out", "--unseen", "1", "--weights", str(tmp_path / "nope.pth")) == 2


def _broken(root, case):
    """The image folder with one defect; returns the message expected."""
    images, attributes = _image_folder(root)
    if case == "empty class folder":
        for image in (images / "whale").iterdir():
            image.unlink()
        return "class 'whale': no images in"
    if case == "undecodable image":
        (images / "otter" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return "otter/1.png: not a readable image"
    if case == "class without images":
        attributes.write_text(attributes.read_text() + "lynx,1,0,4\n")
        return "in the table but no folder under"
    if case == "folder without a table row":
        (images / "lynx").mkdir()
        return "a folder but not in the table: lynx"
    if case == "duplicate class":
        attributes.write_text(attributes.read_text() + "zebra,1,0,4\n")
        return "class 'zebra' appears twice (rows 1 and 5)"
    if case == "non-numeric attribute":
        attributes.write_text(attributes.read_text().replace("otter,1,", "otter,yes,"))
        return "class 'otter', column 2: 'yes' is not a finite number"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty class folder", "undecodable image", "class without images",
                                  "folder without a table row", "duplicate class", "non-numeric attribute"])
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, monkeypatch, case):
    expected = _broken(tmp_path, case)
    monkeypatch.setattr(extraction, "feature_network", lambda *a: pytest.fail("the network was built"))
    assert _extract(tmp_path / "images", tmp_path / "attributes.csv", tmp_path / "out", "--unseen", "1") == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.extracting").exists()


def test_an_image_that_fails_to_decode_mid_run_names_the_file_and_keeps_the_finished_chunks(tmp_path, capsys):
    images, attributes = _image_folder(tmp_path)
    whole = (images / "whale" / "1.jpg").read_bytes()
    (images / "whale" / "1.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated file: its header is fine
    assert _extract(images, attributes, tmp_path / "out", "--chunk", "4") == 2
    assert "whale/1.jpg: the image does not decode" in capsys.readouterr().err
    assert len(list((tmp_path / ".out.extracting").glob("chunk_*.npy"))) == 2 and not (tmp_path / "out").exists()
