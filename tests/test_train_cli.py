"""train.py through the real CLI (subprocesses), on small generated data."""

import json
import re
import time
from pathlib import Path

import pytest

from izf.data import save_xlsa17
from izf.data.generate import synthetic
from tests.conftest import SMALL, XLSA17


def _check_metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for prefix in ("", "nb/", "softmax/", "gaussian/"):
        for key in ("zsl/T1", "gzsl/U", "gzsl/S", "gzsl/H"):
            assert 0.0 <= metrics[prefix + key] <= 1.0
    assert metrics["time/wall_s"] > 0  # time to accuracy is part of the result
    u, s = metrics["gzsl/U"], metrics["gzsl/S"]
    assert metrics["gzsl/H"] == pytest.approx(0 if u + s == 0 else 2 * u * s / (u + s))
    assert metrics["gzsl/H"] == metrics["gaussian/gzsl/H"]  # model.classifier defaults to gaussian
    return metrics


@pytest.mark.slow
def test_end_to_end_synthetic(tmp_path, train_cli):
    run_dir = tmp_path / "run"
    # The default job (synthetic data, 30 classes), shortened to 500 steps (checkpoint every 250).
    proc = train_cli("trainer.max_steps=500", "callbacks.model_checkpoint.every_n_train_steps=250",
                     f"hydra.run.dir={run_dir}")
    metrics = _check_metrics(run_dir)
    # Chance is 1/30 for GZSL accuracies (H ≈ 0.03) and 1/10 for ZSL T1.
    for classifier in ("nb", "softmax", "gaussian"):
        assert metrics[f"{classifier}/gzsl/H"] > 0.4, metrics
        assert metrics[f"{classifier}/zsl/T1"] > 0.5, metrics
    assert "gzsl H" in proc.stdout  # the results table
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "step_500.ckpt"}
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert list((run_dir / "csv").glob("metrics.csv"))


@pytest.mark.slow
def test_custom_folder_and_nb_classifier(tmp_path, train_cli):
    folder = save_xlsa17(synthetic(seen=5, unseen=3, semantic_dim=6, feature_dim=16, per_class=30), tmp_path / "data")
    run_dir = tmp_path / "run"
    train_cli("dataset=custom", f"dataset.root={folder}", "debug=fast", "model.classifier=nb",
              "logger=none", f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["gzsl/H"] == metrics["nb/gzsl/H"]


def test_benchmark_without_data_fails_at_once_naming_the_files(tmp_path, train_cli):
    start = time.monotonic()
    proc = train_cli("dataset=awa2", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode != 0
    assert "res101.mat and att_splits.mat" in proc.stderr and str(tmp_path / "xlsa17" / "AWA2") in proc.stderr
    assert f"Get it with: python -m izf.data download awa2 --data-dir {tmp_path}" in proc.stderr  # the command
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_multirun_sweep_over_loss_weights(tmp_path, train_cli):
    train_cli("-m", *SMALL, "debug=fast", "logger=none", "model.loss.negative=0,0.5",
              f"hydra.sweep.dir={tmp_path}")
    runs = sorted(tmp_path.glob("*/metrics.json"))
    assert len(runs) == 2
    configs = [(p.parent / "config.yaml").read_text() for p in runs]
    assert "negative: 0\n" in configs[0] and "negative: 0.5\n" in configs[1]


def test_custom_without_root_says_which_key_to_set(tmp_path, train_cli):
    proc = train_cli("dataset=custom", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert "error: set dataset.root=... on the command line" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def fake_awa2(tmp_path_factory):
    """data/xlsa17/AWA2 as `python -m izf.data fake` writes it (real splits where ../shared has them)."""
    from izf.data.__main__ import main as data_cli

    data_dir = tmp_path_factory.mktemp("data")
    splits = ["--splits", str(XLSA17 / "AWA2")] if (XLSA17 / "AWA2" / "att_splits.mat").is_file() else []
    assert data_cli(["fake", "--like", "AWA2", "--out", str(data_dir / "xlsa17" / "AWA2"), "--feature-dim", "96",
                     *splits]) == 0
    return data_dir


@pytest.mark.slow
def test_benchmark_validation_task(fake_awa2, tmp_path, train_cli):
    run_dir = tmp_path / "run"
    proc = train_cli("dataset=awa2", f"paths.data_dir={fake_awa2}", "dataset.split=validation", "debug=fast",
                     "logger=none", f"hydra.run.dir={run_dir}")
    _check_metrics(run_dir)
    assert "AWA2 (generated stand-in) (validation), validation task" in " ".join(proc.stdout.split())
    assert "to use it: model.calibration_gamma.softmax=<γ>" in " ".join(proc.stdout.split())  # the γ it chose
    # The task: AWA2's 40 seen classes, split into training and pseudo-unseen validation classes.
    task = re.search(r"'classes': (\d+), 'seen': (\d+), 'unseen': (\d+)", proc.stdout + proc.stderr)
    classes, seen, unseen = map(int, task.groups())
    assert classes == seen + unseen == 40 and unseen > 0


def test_benchmark_config_refuses_data_of_another_shape(fake_awa2, tmp_path, train_cli):
    proc = train_cli("dataset=awa1", f"dataset.root={fake_awa2 / 'xlsa17' / 'AWA2'}", f"hydra.run.dir={tmp_path}",
                     check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("does not match dataset 'AWA1 (generated stand-in)' as configured: images expected 30475, found 37322"
            in proc.stderr)
