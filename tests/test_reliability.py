"""Faults injected on purpose: bad overrides and checkpoints, NaN in the loss or the gradients,
SIGKILL and SIGTERM of real training processes, failing sweep jobs. Nothing may be lost and every
failure must say what happened in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import optuna
import pytest
import torch
import yaml

from izf.config import compose
from izf.errors import ConfigError, DivergenceError
from izf.model import losses
from izf.outputs import DATA_KEY, WALL_TIME_KEY
from izf.report import retrain_command
from izf.training.callbacks import NonFiniteGuard
from izf.training.checkpoints import AtomicCheckpointIO, SaveOnInterrupt, check_checkpoint
from izf.training.run import build
from tests.conftest import REPO, TINY, cli_env, run_cli


def composed(*overrides, run_dir=None):
    """The training config as train.py would see it, without a subprocess."""
    return compose("train", [*overrides, f"paths.output_dir={run_dir or '/tmp/izf-unused'}"])


# ---- bad overrides: one line naming the key, before any work ---------------------------------
@pytest.mark.parametrize("override, message", [
    ("model.loss.negative=-1", r"model.loss.negative=-1: expected a weight ≥ 0"),
    ("model.loss.semantic=nan", r"model.loss.semantic=nan: expected a weight ≥ 0"),
    ("model.flow.blocks=500", r"model.flow.blocks=500: expected an integer in 1..64"),
    ("model.flow.hidden=0", r"model.flow.hidden=0: expected an integer ≥ 1"),
    ("model.flow.mixing=householder", r"model.flow.mixing='householder': expected permutation or lu"),
    ("model.optimizer.lr=0", r"model.optimizer.lr=0: expected a learning rate > 0"),
    ("model.loss.mmd_scales=[]", r"model.loss.mmd_scales=\[\]: expected a non-empty list"),
    ("model.loss.negative_margin=-0.3", r"model.loss.negative_margin=-0.3: expected null or a number > 0"),
    ("model.softmax.epochs=0", r"model.softmax.epochs=0: expected an integer ≥ 1"),
    ("model.nonfinite.action=ignore", r"model.nonfinite.action='ignore': expected stop or skip"),
    ("dataset.batch_size=0", r"dataset.batch_size, eval_batch_size and batches_per_epoch must be ≥ 1"),
    ("dataset.split=train", r"dataset.split must be one of \('test', 'validation'\), got 'train'"),
    ("dataset.feature_scaling=zscore", r"dataset.feature_scaling must be one of"),
    ("+dataset.expect.semantic_dim=99", r"semantic_dim expected 99, found 16"),
    ("model.classifier=knn", r"model.classifier must be one of"),
])
def test_bad_override_is_refused_before_training(override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        build(composed(override))


def test_bad_override_from_the_command_line(tmp_path, train_cli):
    proc = train_cli(*TINY, "trainer.max_steps=0", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: trainer.max_steps=0: expected an integer ≥ 1 "
                                                    "(the flow's training length; the paper's is 11000)")
    unknown = train_cli("dataset=awa3", f"hydra.run.dir={tmp_path}", check=False)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "Could not find 'dataset/awa3'" in unknown.stderr and "awa2" in unknown.stderr  # lists the options


# ---- checkpoints ----------------------------------------------------------------------------
def test_unreadable_or_foreign_checkpoints_are_refused(tmp_path):
    _, model = build(composed(*TINY))
    with pytest.raises(ConfigError, match="no such file"):
        check_checkpoint(tmp_path / "nowhere.ckpt", model)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="garbage.ckpt: not a readable checkpoint"):
        check_checkpoint(tmp_path / "garbage.ckpt", model)
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ConfigError, match=r"foreign.ckpt: a checkpoint of another model: missing \['class_semantics'"):
        check_checkpoint(tmp_path / "foreign.ckpt", model)
    _, wider = build(composed(*TINY, "model.flow.hidden=48"))
    torch.save({"state_dict": wider.state_dict()}, tmp_path / "wider.ckpt")
    with pytest.raises(ConfigError, match=r"has shape \(.*48.*\) there and \(.*32.*\) here"):
        check_checkpoint(tmp_path / "wider.ckpt", model)
    check_checkpoint(_saved(model, tmp_path / "own.ckpt"), model)  # its own kind passes


def _saved(model, path):
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)

    def dies_halfway(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of writing
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---- divergence -----------------------------------------------------------------------------
def _fit_with_nan(tmp_path, nan_steps, *overrides, where="loss"):
    """Train the tiny model in-process with NaN injected at the given steps (loss term or gradient)."""
    cfg = composed(*TINY, "trainer.max_steps=12", "callbacks.model_checkpoint.every_n_train_steps=2",
                   "model.loss.negative=1.0", *overrides,
                   run_dir=tmp_path)
    datamodule, model = build(cfg)
    trainer = L.Trainer(max_steps=12, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[L.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2,
                                                                       save_top_k=-1, filename="{step}")])
    original = losses.negative_sample_loss

    def negative(*args, **kwargs):
        value = original(*args, **kwargs)
        return value * float("nan") if where == "loss" and trainer.global_step in nan_steps else value
    if where == "gradient":  # one weight's gradient becomes inf; the loss stays finite
        next(model.flow.parameters()).register_hook(
            lambda grad: grad * float("inf") if trainer.global_step in nan_steps else grad)
    losses.negative_sample_loss = negative
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        losses.negative_sample_loss = original
    return trainer, model


def test_nan_loss_stops_the_run_naming_step_and_term(tmp_path):
    with pytest.raises(DivergenceError, match=r"training diverged at step 5: loss term 'negative' is nan"):
        _fit_with_nan(tmp_path, {5})
    checkpoints = sorted(tmp_path.glob("step=*.ckpt"))
    assert [p.name for p in checkpoints] == ["step=2.ckpt", "step=4.ckpt"]  # nothing after the NaN
    for path in checkpoints:
        assert all(torch.isfinite(v).all() for v in torch.load(path, weights_only=False)["state_dict"].values())


def test_non_finite_gradient_with_finite_loss_is_caught(tmp_path):
    with pytest.raises(DivergenceError, match=r"at step 3: the gradients are non-finite while every loss term"):
        _fit_with_nan(tmp_path, {3}, where="gradient")


@pytest.mark.parametrize("value, diverged", [(1e30, False), (float("inf"), True), (float("nan"), True)])
def test_the_guard_tells_a_huge_gradient_from_a_non_finite_one(value, diverged):
    """The guard's fast path is the gradient norm, which overflows for a huge but finite gradient:
    that one is clipping's business, an inf or NaN element stops the run."""
    module = torch.nn.Linear(3, 2)
    module.step_terms = {"ml": torch.tensor(1.0)}
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    module.weight.grad[1, 2] = value
    assert not torch.isfinite(torch.nn.utils.get_total_norm([module.weight.grad]))  # the fast path says no
    trainer = type("Trainer", (), {"global_step": 7})()
    check = lambda: NonFiniteGuard().on_before_optimizer_step(trainer, module, None)  # noqa: E731
    if diverged:
        with pytest.raises(DivergenceError, match="at step 7: the gradients are non-finite"):
            check()
    else:
        check()


def test_skip_mode_drops_the_update_and_lowers_the_learning_rate(tmp_path):
    trainer, model = _fit_with_nan(tmp_path, {5, 6}, "model.nonfinite.action=skip")
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))  # brought by the module
    assert trainer.global_step == 12 and guard.skipped_steps == 2
    saved = torch.load(tmp_path / "step=12.ckpt", weights_only=True)["callbacks"]
    assert saved["NonFiniteGuard"] == {"skipped_steps": 2}  # a resumed run keeps counting
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-4 * 0.25)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(DivergenceError, match=r"after 1 skipped steps"):
        _fit_with_nan(tmp_path / "again", {3, 4}, "model.nonfinite.action=skip", "model.nonfinite.max_skips=1")


# ---- interruption, resume, determinism (real processes) --------------------------------------
RESUMABLE = [*TINY, "trainer.max_steps=300", "callbacks.model_checkpoint.every_n_train_steps=50",
             "dataset.batches_per_epoch=70", "trainer.deterministic=true"]  # checkpoints fall mid-epoch


def _start(run_dir, *overrides):
    env = cli_env()
    return subprocess.Popen([sys.executable, "train.py", *RESUMABLE, *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _metrics(run_dir):
    """The run's accuracy numbers (its wall time differs from run to run; the data's name is no number)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in (WALL_TIME_KEY, DATA_KEY)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train_cli):
    """An uninterrupted run: what every interrupted and resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight")
    train_cli(*RESUMABLE, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, train_cli, straight):
    train_cli(*RESUMABLE, f"hydra.run.dir={tmp_path / 'again'}")
    assert _metrics(straight) == _metrics(tmp_path / "again")  # same seed, same numbers
    train_cli(*RESUMABLE, "seed=1", f"hydra.run.dir={tmp_path / 'seed1'}")
    assert _metrics(tmp_path / "seed1") != _metrics(straight)

    killed = tmp_path / "killed"
    process = _start(killed)
    _wait_for(killed / "checkpoints" / "step_100.ckpt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()
    for path in (killed / "checkpoints").glob("*.ckpt"):  # killed mid-write or not: every final name is whole
        torch.load(path, weights_only=False)
    train_cli(*RESUMABLE, "ckpt_path=last", f"hydra.run.dir={killed}")
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # a kill's half-written leftovers are cleared
    assert _metrics(killed) == _metrics(straight)
    assert _final_weights(killed).keys() == _final_weights(straight).keys()
    for name, tensor in _final_weights(killed).items():  # bit for bit, not only the same accuracies
        assert torch.equal(tensor, _final_weights(straight)[name]), name


def _final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def _task_of(sweep):
    """The pid of the running submitit task (the process executing the job) of a local sweep."""
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = stat.read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if "submitit.core._submit" in command and str(sweep) in command:
            return int(stat.parent.name)
    return None


@pytest.mark.slow
def test_a_preempted_cluster_job_is_requeued_and_resumes_to_the_same_numbers(tmp_path, straight):
    """launcher=local runs the SLURM launcher's code path (submitit) on this machine, each job in a
    process of its own: the job gets submitit's preemption signal mid-run, writes last.ckpt, is
    requeued, resumes from it, and ends with the same weights and metrics as a run that was never
    interrupted."""
    sweep = tmp_path / "sweep"
    env = cli_env()
    command = [sys.executable, "train.py", "-m", *RESUMABLE, "launcher=local", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = sweep / "0"
    _wait_for(job / "checkpoints" / "step_100.ckpt", process)
    task = _task_of(sweep)
    assert task is not None
    os.kill(task, signal.SIGUSR2)  # what SLURM sends (through submitit's --signal) before preempting
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Submitit 'local' sweep" in stdout + stderr and list(sweep.glob(".submitit/*/*_result.pkl"))
    logs = "".join(path.read_text() for path in (sweep / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs  # submitit's own account
    assert "preempted: saved" in logs and "resuming from" in logs  # ours: saved, then resumed from it
    assert _metrics(job) == _metrics(straight)
    for name, tensor in _final_weights(job).items():
        assert torch.equal(tensor, _final_weights(straight)[name]), name


def test_a_sigterm_after_the_save_check_still_saves_the_step_it_stops_at(tmp_path):
    """The race CI once hit: SIGTERM arrives after SaveOnInterrupt's end-of-step check but before
    Lightning's. Lightning stopped there with last.ckpt one step behind (or none); the deferred
    handler makes the step that saves the step that stops."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class SigtermLate(L.Callback):  # runs after SaveOnInterrupt in the same hook
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    datamodule, model = build(composed(*TINY, run_dir=tmp_path))
    saver = SaveOnInterrupt(tmp_path)
    trainer = L.Trainer(max_steps=20, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[saver, SigtermLate()])
    with pytest.raises(SIGTERMException):
        trainer.fit(model, datamodule=datamodule)
    assert saver.saved_to is not None
    assert torch.load(saver.saved_to, weights_only=False)["global_step"] == trainer.global_step == 4


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, train_cli):
    run_dir = tmp_path / "preempted"
    process = _start(run_dir, "trainer.max_steps=100000")
    _wait_for(run_dir / "checkpoints" / "step_50.ckpt", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3 and "Traceback" not in stderr, stderr
    assert "interrupted: stopped by SIGTERM at step" in stderr and "ckpt_path=last" in stderr
    step = int(stderr.split("stopped by SIGTERM at step ")[1].split(";")[0])
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == step >= 50
    train_cli(*RESUMABLE, f"trainer.max_steps={step + 5}", "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly_like_sigterm(tmp_path):
    run_dir = tmp_path / "interrupted"
    process = _start(run_dir, "trainer.max_steps=100000")
    _wait_for(run_dir / "checkpoints" / "step_50.ckpt", process)
    process.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped by Ctrl-C at step") and last.endswith("ckpt_path=last"), last
    step = int(last.split("stopped by Ctrl-C at step ")[1].split(";")[0])
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step >= 50
    assert last in (run_dir / "train.log").read_text()  # the run's log says how it ended


# ---- sweeps ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_the_report_lists_it(tmp_path, train_cli):
    # Generated data under two benchmarks' names, so the paper layout has published numbers to show.
    proc = train_cli("-m", *TINY, "debug=fast", "dataset.name=AWA1,CUB", "model.loss.negative=-1,0",
                     f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    failure = (tmp_path / "0" / "error.txt").read_text()
    assert failure.startswith("model.loss.negative=-1: expected a weight ≥ 0") and "ConfigError" in failure
    assert (tmp_path / "1" / "metrics.json").is_file()
    printed = run_cli("-m", "izf.report", str(tmp_path), check=True)
    assert "failed" in printed.stdout and "expected a weight ≥ 0" in printed.stdout
    markdown = (tmp_path / "report.md").read_text()
    assert "model.loss.negative=0" in markdown and "## Failed or unfinished runs" in markdown
    run_cli("-m", "izf.report", str(tmp_path), "--paper", check=True)
    paper = (tmp_path / "paper.md").read_text()
    assert "| AWA1 T1 | AWA1 U | AWA1 S | AWA1 H | CUB T1 |" in paper and "1 (+1 failed)" in paper
    assert "59.4" in paper and "80.5" in paper  # CUB's H and AWA1's S as published


@pytest.mark.slow
def test_optuna_search_on_the_validation_task_survives_failing_trials(tmp_path, train_cli):
    search = tmp_path / "conf" / "hparams_search"
    search.mkdir(parents=True)
    (search / "tiny.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - izf_optuna\n"  # the shipped search, narrowed: 3 trials, one weight that can fail
        "hydra:\n  sweeper:\n    n_trials: 3\n    params:\n      model.loss.negative: choice(-1, 0.3)\n")
    sweep, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'study.db'}"
    search = ["-m", *TINY, "debug=fast", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hparams_search=tiny",
              "hydra.sweeper.sampler.seed=0", f"hydra.sweeper.storage={storage}"]
    proc = train_cli(*search, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["model.loss.negative"] == 0.3 and 0 <= results["best_value"] <= 1
    configs = [yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) for job in sweep.glob("[0-9]*")]
    assert configs and all(c["dataset"]["split"] == "validation" for c in configs)  # never the test splits
    failed = [job for job in sweep.glob("[0-9]*") if (job / "error.txt").exists()]
    assert failed and all("model.loss.negative=-1" in (job / "error.txt").read_text() for job in failed)
    assert "python train.py" in retrain_command(sweep) and "dataset.split=test" in retrain_command(sweep)
    assert "model.loss.negative=0.3" in retrain_command(sweep) and "hparams_search" not in retrain_command(sweep)
    # The study lives in its sqlite storage: a second search (a restart) continues it.
    proc = train_cli(*search, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'again'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(optuna.load_study(study_name="izf_synthetic", storage=storage).trials) == 3 + 1


# ---- several processes (DDP on CPU) ---------------------------------------------------------
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, train_cli):
    # The terms that are means over samples (likelihood, semantic) give the same averaged gradient
    # in two processes as in one; the batch statistics (MMD, class means) are per process, and the
    # jitter noise is drawn per process: they are off here so the runs can be compared.
    same = [*TINY, "trainer.max_steps=100", "model.loss.negative=0", "model.loss.centralising=0", "model.jitter=0"]
    train_cli(*same, f"hydra.run.dir={tmp_path / 'one'}")
    train_cli(*same, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}")
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert one.keys() == two.keys() and all(abs(one[k] - two[k]) <= 0.02 for k in one)  # stated tolerance
    for name, tensor in _final_weights(tmp_path / "two").items():
        assert torch.allclose(tensor.float(), _final_weights(tmp_path / "one")[name].float(), atol=1e-5), name


def test_ddp_inside_a_multirun_is_refused(tmp_path, train_cli):
    proc = train_cli("-m", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seed=0,1",
                     f"hydra.sweep.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer=ddp cannot run inside a multirun (-m)" in proc.stderr and "launcher=slurm" in proc.stderr
