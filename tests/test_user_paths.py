"""The commands as a user types them, and what they print: sweeps without a sweep folder, the report
on them, the progress bar, no library noise at start, typos in nested settings, generated data
marked as such, splits that cannot be empty, internal configs out of sight, and one-line errors for
the usual mistakes (issue 22, items 1-9; the console scripts, item 10, are in test_packaging.py)."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from izf.config import compose
from izf.data import ZSLDataModule, save_xlsa17
from izf.data.__main__ import main as data_main
from izf.data.extract import choose_split
from izf.data.generate import synthetic
from izf.data.xlsa17 import load_xlsa17
from izf.errors import ConfigError, DatasetError
from izf.training.run import build
from tests.conftest import REPO, SMALL, run_cli


def user_run(cwd: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python *argv` as a user starts it in `cwd`: a fresh interpreter, no IZF_ROOT, no run or sweep
    folder given (the checkout's scripts by their path, so nothing is written into the checkout)."""
    env = {key: value for key, value in os.environ.items() if key != "IZF_ROOT"} | {"WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _fake(data_dir: Path, like: str = "APY") -> Path:
    """`python -m izf.data fake --like <like> --out <data_dir>/xlsa17/<LIKE>`, with 8-d features."""
    out = data_dir / "xlsa17" / like
    assert data_main(["fake", "--like", like, "--out", str(out), "--feature-dim", "8"]) == 0
    return out


# ---- 1. a multirun sweep as typed: no sweep folder, no IZF_ROOT ---------------------------------
SWEEPS = {
    "basic": ["model=eszsl", "seed=0,1", "debug=fast"],
    "launcher=local": ["model=eszsl", "seed=0,1", "debug=fast", "launcher=local"],
    "optuna": [*SMALL, "hparams_search=izf_optuna", "debug=fast", "hydra.sweeper.n_trials=2"],  # 2 trials only
}


@pytest.mark.parametrize("form", [pytest.param(name, marks=[] if name == "basic" else [pytest.mark.slow])
                                  for name in SWEEPS])
def test_a_sweep_runs_as_typed_into_logs_multiruns(tmp_path, form):
    _ok(user_run(tmp_path, str(REPO / "train.py"), "-m", *SWEEPS[form]))
    sweeps = list((tmp_path / "logs" / "multiruns").iterdir())
    assert len(sweeps) == 1
    assert sorted(p.parent.name for p in sweeps[0].glob("*/metrics.json")) == ["0", "1"]
    if form == "basic":  # and the report reads it
        printed = _ok(user_run(tmp_path, "-m", "izf.report", str(sweeps[0]))).stdout
        assert "dataset=synthetic, task=test" in printed and (sweeps[0] / "report.md").is_file()


# ---- 2. the report on runs over a named benchmark (whose config holds ${hydra:...}) ------------------
def test_the_report_reads_runs_over_a_named_benchmark(tmp_path):
    _fake(tmp_path / "data")  # where dataset=apy looks from this folder: ./data/xlsa17/APY
    train = [str(REPO / "train.py"), "dataset=apy", "model=eszsl", "debug=fast"]
    _ok(user_run(tmp_path, *train))
    assert "dataset=APY, task=test" in _ok(user_run(tmp_path, "-m", "izf.report", "logs/runs")).stdout
    _ok(user_run(tmp_path, *train[:1], "-m", *train[1:], "seed=0,1"))  # the paper table's route: seeds, then --paper
    sweep = next((tmp_path / "logs" / "multiruns").iterdir())
    _ok(user_run(tmp_path, "-m", "izf.report", str(sweep), "--paper"))
    paper = (sweep / "paper.md").read_text()
    assert "| APY T1 | APY U | APY S | APY H |" in paper and "| eszsl: published (ESZSL) |" in paper
    assert "4.6*" in paper and "| eszsl: runs | 2 |" in paper  # ESZSL's published APY H, beside 2 runs
    assert "Not the benchmarks' data: APY (generated stand-in)" in paper  # item 6: the data were generated


# ---- 3. the progress bar counts the run's steps out of trainer.max_steps -----------------------------
def _bar(stdout: str) -> str:
    """The last state of the training bar: "Training ━━━ 20/20 ..." (rich prints it once, not on a terminal)."""
    lines = [line for line in stdout.splitlines() if re.search(r"━.* \d+/\d+ ", line)]
    assert lines, stdout
    return lines[-1]


def test_the_progress_bar_counts_the_runs_steps(tmp_path, train_cli):
    run = [*SMALL, "debug=fast", "logger=none", "dataset.batches_per_epoch=7", f"hydra.run.dir={tmp_path / 'run'}"]
    first = _bar(train_cli(*run).stdout)  # 20 steps over epochs of 7 batches
    assert re.search(r"\b20/20\b", first) and "Epoch" not in first, first
    resumed = _bar(train_cli(*run, "trainer.max_steps=30", "ckpt_path=last").stdout)
    assert re.search(r"\b30/30\b", resumed) and "Epoch" not in resumed, resumed
    eszsl = train_cli(*SMALL, "model=eszsl", "debug=fast", "logger=none", f"hydra.run.dir={tmp_path / 'eszsl'}")
    eszsl = _bar(eszsl.stdout)
    assert re.search(r"\b1/1\b", eszsl), eszsl  # a closed form: the run is one step


# ---- 4. no library noise at the start of a run ------------------------------------------------------
def test_a_run_prints_no_library_noise(tmp_path, train_cli):
    proc = train_cli(*SMALL, "model.flow.blocks=2", "model.flow.hidden=32", "model.softmax.n_gen=20",
                     "model.softmax.epochs=1", "trainer.max_steps=3", "logger=wandb", f"hydra.run.dir={tmp_path}")
    printed = proc.stdout + proc.stderr
    for noise in ("limit_train_batches", "limit_test_batches", "💡 Tip", "Total FLOPs", "anonymous setting",
                  "Seed set"):
        assert noise not in printed, noise
    assert "model IZF: " in printed and "trainable parameters" in printed  # what the summary table said


# ---- 5. a key a model does not read is refused, naming the ones it does ------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["+model.loss.semantc=1"], r"model.loss.semantc: unknown setting; model.loss takes .*\bsemantic\b"),
    (["+model.flow.widht=8"], r"model.flow.widht: unknown setting; model.flow takes .*\bhidden\b"),
    (["+model.optimizer.lrr=1"], r"model.optimizer.lrr: unknown setting; model.optimizer takes .*\blr\b"),
    (["+model.softmax.epoch=3"], r"model.softmax.epoch: unknown setting; model.softmax takes .*\bepochs\b"),
    (["+model.nonfinite.actoin=skip"], r"model.nonfinite.actoin: unknown setting; model.nonfinite takes .*\baction\b"),
    (["+model.jiter=0.1"], r"model.jiter: unknown setting; model takes .*\bjitter\b"),
    (["model=clswgan", "+model.wgan.gp_weigth=1"], r"model.wgan.gp_weigth: unknown setting; .*\bgp_weight\b"),
    (["model=cada_vae", "+model.warmup.bet=1"], r"model.warmup.bet: unknown setting; .*\bbeta\b"),
    (["model=eszsl", "+model.feature_regg=1"], r"model.feature_regg: unknown setting; model takes .*\bfeature_reg\b"),
])
def test_an_unknown_model_setting_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(compose("train", [*SMALL, *overrides, "paths.output_dir=/tmp/izf-unused"]))


def test_an_unknown_model_setting_from_the_command_line(tmp_path, train_cli):
    proc = train_cli(*SMALL, "debug=fast", "+model.loss.semantc=1", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.loss.semantc: unknown setting")


# ---- 6. a generated folder is marked, and every tool says so -----------------------------------------
def _archive(path: Path, name: str) -> Path:
    """An xlsa17.zip holding a small valid dataset under `name`: what `download --archive` unpacks."""
    folder = save_xlsa17(synthetic(seen=4, unseen=2, semantic_dim=5, feature_dim=8, per_class=10), path / "real")
    with zipfile.ZipFile(path / "xlsa17.zip", "w") as zf:
        for file in folder.iterdir():
            zf.write(file, f"xlsa17/data/{name}/{file.name}")
    return path / "xlsa17.zip"


def test_generated_data_is_marked_as_such(tmp_path, capsys, train_cli):
    data_dir = tmp_path / "data"
    folder = _fake(data_dir)
    assert data_main(["check", "apy", "--data-dir", str(data_dir)]) == 0
    checked = " ".join(capsys.readouterr().out.split())
    assert "APY (generated stand-in):" in checked and "│ generated │ yes (GENERATED.json): made by" in checked

    run_dir = tmp_path / "run"
    proc = train_cli("dataset=apy", f"paths.data_dir={data_dir}", "model=eszsl", "debug=fast", "logger=none",
                     f"hydra.run.dir={run_dir}")
    assert "ESZSL on APY (generated stand-in), test splits" in " ".join(proc.stdout.split())
    assert json.loads((run_dir / "metrics.json").read_text())["data"] == "APY (generated stand-in)"

    archive = _archive(tmp_path, "APY")  # the download replaces the stand-in with the archive's data
    assert data_main(["download", "apy", "--data-dir", str(data_dir), "--archive", str(archive), "--no-progress"]) == 0
    assert "holds a generated stand-in" in capsys.readouterr().out
    assert load_xlsa17(folder, cache=False).name == "APY" and len(load_xlsa17(folder, cache=False).labels) == 60
    assert data_main(["download", "apy", "--data-dir", str(data_dir), "--archive", str(archive), "--no-progress"]) == 0
    assert "already exists, skipping it" in capsys.readouterr().out  # real data stays


# ---- 7. no empty split: extraction holds out seen images, and loading refuses an empty split ------------
def test_extraction_holds_out_an_image_of_every_seen_class():
    labels = np.repeat(np.arange(5), 3)  # 3 images a class: ⌊0.2 · 3⌋ = 0 would leave test_seen empty
    splits = choose_split(labels, list("abcde"), ["e"], None, 0.2, seed=0)
    assert sorted(labels[splits["test_seen"]]) == [0, 1, 2, 3]
    assert sorted(labels[splits["trainval"]]) == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(DatasetError, match=r"seen class d: 1 image, expected at least 2"):
        choose_split(np.array([0, 0, 1, 1, 2, 2, 3, 4]), list("abcde"), ["e"], None, 0.2, seed=0)


def test_an_empty_split_is_refused_before_any_work(tmp_path, capsys, train_cli):
    data = synthetic(seen=4, unseen=2, semantic_dim=5, feature_dim=8, per_class=10, test_seen_fraction=0)
    folder = save_xlsa17(data, tmp_path / "no_test_seen")
    assert data_main(["check", str(folder)]) == 2
    assert "the test_seen split is empty" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="the test_seen split is empty"):  # generated data too
        ZSLDataModule(name="synthetic", source="synthetic", generator={"test_seen_fraction": 0}).setup()
    proc = train_cli("dataset=custom", f"dataset.root={folder}", "debug=fast", f"hydra.run.dir={tmp_path / 'run'}",
                     check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the test_seen split is empty" in proc.stderr.strip().splitlines()[-1]


# ---- 8. internal configs are not offered as choices ----------------------------------------------------
def test_help_offers_only_the_groups_a_user_chooses(tmp_path):
    printed = run_cli("train.py", "--help", check=True).stdout
    groups = printed.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line and not line[0].isspace())
    chosen = {group: options.split(", ") for group, options in listed.items() if not group.startswith("_internal")}
    assert not {"budget", "recipe", "debug_model", "published", "data"} & set(chosen), sorted(chosen)
    assert "_shared" not in chosen["dataset"] and "apy" in chosen["dataset"]
    proc = run_cli("train.py", "dataset=_shared", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "Could not find 'dataset/_shared'" in proc.stderr
    assert "Traceback" not in proc.stderr and "TypeError" not in proc.stderr


# ---- 9. the usual mistakes, each in one line ------------------------------------------------------------
def test_check_names_a_folder_that_is_not_there(tmp_path, capsys):
    for target in ("awa3", str(tmp_path / "no" / "such" / "folder")):
        assert data_main(["check", target, "--data-dir", str(tmp_path)]) == 2
        assert f"error: {target}: no such folder, and not a benchmark's name" in capsys.readouterr().err
    assert data_main(["check", "awa2", "--data-dir", str(tmp_path)]) == 2  # a benchmark not downloaded yet
    assert (f"no such dataset folder {tmp_path / 'xlsa17' / 'AWA2'}. Get it with: python -m izf.data download awa2 "
            f"--data-dir {tmp_path}") in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_trainer_gpu_without_a_gpu_is_one_line(tmp_path, train_cli):
    proc = train_cli("trainer=gpu", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: trainer (accelerator=gpu, devices=1")
    assert "no GPU" in proc.stderr.strip().splitlines()[-1]


def test_a_failed_runs_log_ends_with_its_error(tmp_path, train_cli):
    proc = train_cli("trainer.max_steps=0", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trainer.max_steps=0") and last in (tmp_path / "train.log").read_text()


def test_the_missing_data_error_gives_the_download_command(tmp_path):
    with pytest.raises(DatasetError, match=rf"Get it with: python -m izf.data download awa2 --data-dir {tmp_path}$"):
        load_xlsa17(tmp_path / "xlsa17" / "AWA2")
    with pytest.raises(DatasetError, match=r"or point dataset.root at such a folder"):  # not a benchmark's folder
        load_xlsa17(tmp_path / "mine")
