"""izf.report on hand-made sweep folders: grouping by swept keys, mean ± std over seeds, failures."""

import csv
import json

import pytest
import yaml

from izf.report import main as report_main
from izf.report import report


def _job(root, number, overrides, metrics=None, failure=None, dataset="AWA2", split="test"):
    folder = root / str(number)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"dataset": {"name": dataset, "split": split}}))
    if metrics is not None:
        full = {f"{c}/{k}": v for c in ("nb", "softmax") for k, v in metrics.items()}
        full["time/wall_s"] = 60.0 * (number + 1)  # job n took n + 1 minutes
        (folder / "metrics.json").write_text(json.dumps(full))
    if failure is not None:
        (folder / "error.txt").write_text(f"{failure}\n\nTraceback ...")


def _metrics(h):
    return {"zsl/T1": 0.5, "gzsl/U": h, "gzsl/S": h, "gzsl/H": h}


@pytest.fixture
def sweep(tmp_path):
    # lr ∈ {1e-3, 5e-4} × seed ∈ {0, 1, 2}; one job of lr=5e-4 failed, one never finished.
    number = 0
    for lr, hs in (("1e-3", [0.5, 0.6, 0.7]), ("5e-4", [0.2, None, 0.4])):
        for seed, h in zip(range(3), hs):
            failure = "model.optimizer.lr: diverged" if h is None else None
            _job(tmp_path, number, [f"model.optimizer.lr={lr}", f"seed={seed}"],
                 metrics=_metrics(h) if h is not None else None, failure=failure)
            number += 1
    _job(tmp_path, number, ["model.optimizer.lr=5e-4", "seed=3"])  # killed: neither file
    return tmp_path


def test_groups_by_swept_keys_and_averages_over_seeds(sweep):
    rows, failed = report([sweep])
    by_group = {(r["group"], r["classifier"]): r for r in rows}
    fast = by_group[("dataset=AWA2, task=test, model.optimizer.lr=1e-3", "softmax")]
    assert fast["runs"] == 3 and fast["failed"] == 0
    assert fast["gzsl/H"] == "60.00 ± 10.00"  # sample std of 50, 60, 70
    assert fast["zsl/T1"] == "50.00 ± 0.00"
    assert fast["wall min"] == "2.0"  # jobs 0, 1, 2: 1, 2 and 3 minutes
    slow = by_group[("dataset=AWA2, task=test, model.optimizer.lr=5e-4", "nb")]
    assert slow["runs"] == 2 and slow["failed"] == 2 and slow["gzsl/H"] == "30.00 ± 14.14"
    assert sorted(job.failure.split(":")[0] for job in failed) == ["model.optimizer.lr", "no metrics.json"]

    assert report_main([str(sweep)]) == 0
    table = list(csv.DictReader((sweep / "report.csv").open()))
    assert len(table) == 4 and {row["classifier"] for row in table} == {"nb", "softmax"}
    markdown = (sweep / "report.md").read_text()
    assert "60.00 ± 10.00" in markdown and "model.optimizer.lr: diverged" in markdown


def test_validation_and_test_runs_are_never_averaged_together(tmp_path):
    _job(tmp_path, 0, ["seed=0"], metrics=_metrics(0.5), dataset="CUB", split="validation")
    _job(tmp_path, 1, ["seed=1"], metrics=_metrics(0.5), dataset="CUB", split="test")
    groups = {row["group"] for row in report([tmp_path])[0]}
    assert groups == {"dataset=CUB, task=validation", "dataset=CUB, task=test"}


def test_no_jobs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no job folders"):
        report([tmp_path])
