"""izf.report on hand-made sweep folders: grouping by swept keys, mean ± std over seeds, failures."""

import csv
import json

import pytest
import yaml

from izf.report import main as report_main
from izf.report import report


def _job(root, number, overrides, metrics=None, failure=None, dataset="AWA2", split="test", nb_factor=1.0,
         model=None, classifiers=("nb", "softmax")):
    """A finished (metrics), failed (failure) or killed (neither) job folder; model=(config name,
    class path) writes the model into the run's config as train.py does (None: an older run)."""
    folder = root / str(number)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"dataset": {"name": dataset, "split": split}}
    if model is not None:
        config["model"] = {"_target_": model[1]}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {
            "model": model[0]}}}}))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:  # the reported classifier's (unprefixed) are the last classifier's
        full = {f"{c}/{k}": v * (nb_factor if c == "nb" else 1.0)
                for c in classifiers for k, v in metrics.items()}
        full |= metrics
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
    assert len(table) == 8 and {row["classifier"] for row in table} == {"nb", "softmax", "reported", "reported, γ = 0"}
    markdown = (sweep / "report.md").read_text()
    assert "60.00 ± 10.00" in markdown and "model.optimizer.lr: diverged" in markdown


def test_validation_and_test_runs_are_never_averaged_together(tmp_path):
    _job(tmp_path, 0, ["seed=0"], metrics=_metrics(0.5), dataset="CUB", split="validation")
    _job(tmp_path, 1, ["seed=1"], metrics=_metrics(0.5), dataset="CUB", split="test")
    groups = {row["group"] for row in report([tmp_path])[0]}
    assert groups == {"dataset=CUB, task=validation", "dataset=CUB, task=test"}


def test_a_jobs_config_is_read_resolved(tmp_path):
    """Hydra's .hydra/config.yaml keeps ${hydra:...} interpolations, which resolve only inside the job:
    the report reads the resolved config.yaml train.py writes beside it, and a job that failed before
    writing one still counts, under the names it can resolve."""
    unresolved = {"dataset": {"name": "custom", "split": "test", "root": "${paths.data_dir}/mine"},
                  "paths": {"data_dir": "${hydra:runtime.cwd}/data"}}
    for number, metrics in ((0, _metrics(0.5)), (1, None)):
        _job(tmp_path, number, [f"seed={number}"], metrics=metrics, failure=None if metrics else "bad data")
        (tmp_path / str(number) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(unresolved))
    (tmp_path / "0" / "config.yaml").write_text(yaml.safe_dump({"dataset": {"name": "custom", "split": "test",
                                                                            "root": "/home/me/data/mine"}}))
    rows, failed = report([tmp_path])
    assert [(row["group"], row["runs"], row["failed"]) for row in rows if row["classifier"] in ("softmax", "—")] == [
        ("dataset=mine, task=test", 1, 0), ("dataset=custom, task=test", 0, 1)]  # the failed one's root: unknown
    assert [job.failure for job in failed] == ["bad data"]


def test_no_jobs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no job folders"):
        report([tmp_path])


def test_paper_layout_next_to_the_published_numbers(tmp_path):
    """Datasets as column groups; the published value and the difference beside each number; an
    unconfirmed published value marked; a failed run counted; validation runs left out."""
    for number, (dataset, h, split) in enumerate([("CUB", 0.50, "test"), ("CUB", None, "test"), ("CUB", 0.60, "test"),
                                                   ("AWA2", 0.70, "test"), ("AWA2", 0.66, "validation"),
                                                   ("mine", 0.40, "test")]):
        _job(tmp_path, number, [f"seed={number}"], metrics=None if h is None else _metrics(h),
             failure="diverged" if h is None else None, dataset=dataset, split=split, nb_factor=0.5)
    assert report_main([str(tmp_path), "--paper"]) == 0
    cells = {(row["dataset"], row["metric"]): row for row in csv.DictReader((tmp_path / "paper.csv").open())}
    assert [d for d, m in cells if m == "gzsl/H"] == ["AWA2", "CUB", "mine"]  # published order, then the rest
    cub_h = cells[("CUB", "gzsl/H")]
    assert (float(cub_h["mean"]), float(cub_h["std"]), cub_h["runs"], cub_h["failed"]) == \
        (pytest.approx(55.0), pytest.approx(7.0711, abs=1e-3), "2", "1")
    assert float(cub_h["published"]) == 59.4 and float(cub_h["difference"]) == pytest.approx(-4.4)
    assert cells[("CUB", "gzsl/S")]["published_confirmed"] == "False"  # recalled, not from the table
    assert cells[("AWA2", "gzsl/H")]["runs"] == "1"  # the validation run is not a result
    assert cells[("mine", "gzsl/H")]["published"] == "" and cells[("CUB", "zsl/T1")]["published"] == ""
    markdown = (tmp_path / "paper.md").read_text()
    assert "| CUB T1 | CUB U | CUB S | CUB H |" in markdown and "55.0 ± 7.1" in markdown
    assert "68.0*" in markdown and "-4.4" in markdown and "2 (+1 failed)" in markdown
    assert "arXiv:2007.04873" in markdown and "1 validation-task run(s) left out" in markdown
    assert (tmp_path / "paper.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report_main([str(tmp_path), "--paper", "--classifier", "nb"]) == 0  # a chosen classifier's numbers
    nb = {(r["dataset"], r["metric"]): r for r in csv.DictReader((tmp_path / "paper.csv").open())}
    assert float(nb[("CUB", "gzsl/H")]["mean"]) == pytest.approx(27.5)


def test_methods_side_by_side_each_with_its_classifiers_and_published_numbers(tmp_path):
    """A sweep over model=izf,eszsl: one group per method with its own classifiers; in the paper
    layout a block of rows per method beside that method's published numbers."""
    number = 0
    for model, classifiers, h in ((("izf", "izf.training.module.IZF"), ("nb", "softmax"), 0.5),
                                  (("eszsl", "izf.baselines.eszsl.ESZSL"), ("compatibility",), 0.2)):
        for seed in range(2):
            _job(tmp_path, number, [f"model={model[0]}", f"seed={seed}"], metrics=_metrics(h + 0.1 * seed),
                 dataset="CUB", model=model, classifiers=classifiers)
            number += 1
    rows, failed = report([tmp_path])
    assert not failed
    assert {(r["group"], r["classifier"]) for r in rows} == {
        ("dataset=CUB, task=test, model=izf", "nb"), ("dataset=CUB, task=test, model=izf", "softmax"),
        ("dataset=CUB, task=test, model=eszsl", "compatibility"),
        *((f"dataset=CUB, task=test, model={m}", r) for m in ("izf", "eszsl") for r in ("reported", "reported, γ = 0"))}
    eszsl = next(r for r in rows if r["classifier"] == "compatibility")
    assert eszsl["gzsl/H"] == "25.00 ± 7.07" and eszsl["runs"] == 2

    assert report_main([str(tmp_path), "--paper"]) == 0
    cells = {(r["method"], r["metric"]): r for r in csv.DictReader((tmp_path / "paper.csv").open())}
    assert float(cells[("eszsl", "gzsl/H")]["mean"]) == pytest.approx(25.0)
    assert float(cells[("eszsl", "gzsl/H")]["published"]) == 21.0  # conf/_internal/published/eszsl.yaml
    assert float(cells[("izf", "gzsl/H")]["published"]) == 59.4    # conf/_internal/published/izf.yaml
    markdown = (tmp_path / "paper.md").read_text()
    assert "| eszsl: published (ESZSL) |" in markdown and "| izf: published (IZF) |" in markdown
    assert "arXiv:1707.00600" in markdown and "arXiv:2007.04873" in markdown


def test_each_method_is_labelled_by_its_own_swept_keys_across_sweep_folders(tmp_path):
    """IZF seeds from two folders and an ESZSL sweep over its regulariser: IZF's group is not split
    or labelled by ESZSL's keys, and ESZSL's groups name only the key that varies among its jobs."""
    izf, eszsl = ("izf", "izf.training.module.IZF"), ("eszsl", "izf.baselines.eszsl.ESZSL")
    _job(tmp_path / "izf_a", 0, ["schedule=cpu", "seed=0"], metrics=_metrics(0.4), dataset="CUB", model=izf)
    for seed in (1, 2):
        _job(tmp_path / "izf_b", seed, ["schedule=cpu", f"seed={seed}"], metrics=_metrics(0.5), dataset="CUB",
             model=izf)
    for number, reg in enumerate(("1", "10")):
        _job(tmp_path / "eszsl", number, ["model=eszsl", "callbacks=none", f"model.feature_reg={reg}"],
             metrics=_metrics(0.2), dataset="CUB", model=eszsl, classifiers=("compatibility",))
    rows, _ = report([tmp_path / "izf_a", tmp_path / "izf_b", tmp_path / "eszsl"])
    assert {(r["group"], r["runs"]) for r in rows if r["classifier"] != "nb"} == {
        ("dataset=CUB, task=test, model=izf", 3),
        ("dataset=CUB, task=test, model=eszsl, model.feature_reg=1", 1),
        ("dataset=CUB, task=test, model=eszsl, model.feature_reg=10", 1)}
