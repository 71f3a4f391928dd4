"""logger=wandb with no account and no network: an offline W&B run per job, holding the config,
losses, metrics, the per-class table and the pictures (also saved as files in the run directory)."""

import csv
import json
import os

import pytest

from tests.conftest import REPO, TINY, run_cli


def run_offline(tmp_path, *overrides):
    """train.py as a user without a W&B account runs it: no WANDB_MODE, no API key, no ~/.netrc."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"IZF_ROOT": str(REPO), "HOME": str(tmp_path / "home"), "NETRC": str(tmp_path / "home" / ".netrc")}
    return run_cli("train.py", *overrides, env=env, check=True)


def _offline_run(run_dir):
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0], next(runs[0].glob("run-*.wandb")).read_bytes()


@pytest.mark.slow
def test_offline_run_holds_config_losses_metrics_table_and_pictures(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_offline(tmp_path, "dataset=toy", "logger=wandb", "debug=fast", f"hydra.run.dir={run_dir}")
    assert "logging offline" in proc.stdout + proc.stderr
    run, log = _offline_run(run_dir)
    for key in (b"negative_margin", b"batches_per_epoch", b"train/loss", b"train/ml", b"gzsl/H", b"nb/zsl/T1"):
        assert key in log, key  # the config, the losses and the metrics are in the run's record log
    table = json.loads(next((run / "files" / "media" / "table").glob("per_class_accuracy*.json")).read_text())
    rows = list(csv.reader((run_dir / "per_class_accuracy.csv").open()))
    assert table["columns"] == rows[0] and len(table["data"]) == len(rows) - 1 == 4
    assert [r[1] for r in table["data"]] == ["seen_[0,1]", "seen_[0,0]", "seen_[1,0]", "unseen_[1,1]"]
    images = {p.name.split("_")[0] for p in (run / "files" / "media" / "images" / "pictures").glob("*.png")}
    assert images == {"real", "toy"}
    for picture in ("real_vs_generated.png", "toy.png"):  # the same pictures for users without W&B
        assert (run_dir / "pictures" / picture).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_one_wandb_run_per_job_grouped_by_sweep(tmp_path):
    sweep = tmp_path / "sweep_2026"
    run_offline(tmp_path, "-m", *TINY, "debug=fast", "logger=wandb", "seed=0,1", f"hydra.sweep.dir={sweep}")
    for job in ("0", "1"):
        _, log = _offline_run(sweep / job)
        assert b"sweep_2026" in log and f"sweep_2026/{job}".encode() in log  # group and run name
