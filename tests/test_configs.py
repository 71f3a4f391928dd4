"""Every composition a user can ask for: each dataset × schedule and each experiment × schedule,
with the values that must hold (the schedule's length and width, APY's 5 blocks, a benchmark's
published sizes), every _target_ importable, and every file the docs cite present."""

import importlib
import logging
import re

import pytest
from omegaconf import OmegaConf

from izf.config import compose, config_dir
from izf.data import save_xlsa17
from izf.data.benchmarks import BENCHMARKS, expected_sizes
from izf.data.generate import synthetic
from izf.training.run import build
from tests.conftest import REPO

DATASETS = sorted(p.stem for p in (config_dir() / "dataset").glob("*.yaml") if not p.stem.startswith("_"))
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
SCHEDULES = {"paper": (11000, 10, 1024), "cpu": (300, 6, 256)}  # max_steps, blocks, hidden
# Datasets whose recipe sets a length and flow of its own (quick generated runs).
OWN_SCHEDULE = {"synthetic": (1500, 6, 256), "toy": (1500, 4, 64)}


def _targets(node):
    """Every _target_ in a plain container (the config without resolving interpolations)."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for item in node:
            yield from _targets(item)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes_under_every_schedule(dataset, schedule):
    cfg = compose("train", [f"dataset={dataset}", f"schedule={schedule}"])
    steps, blocks, hidden = OWN_SCHEDULE.get(dataset, SCHEDULES[schedule])
    blocks = 5 if dataset == "apy" else blocks  # the paper's APY flow, under either schedule
    assert (cfg.trainer.max_steps, cfg.model.flow.blocks, cfg.model.flow.hidden) == (steps, blocks, hidden)
    benchmark = cfg.dataset.get("benchmark")
    if dataset.upper() in BENCHMARKS:  # a benchmark config checks its folder against the published sizes
        assert benchmark == dataset.upper()
        assert expected_sizes(benchmark, cfg.dataset.semantics)["images"] == BENCHMARKS[benchmark]["images"]
    else:
        assert benchmark is None
    for target in _targets(OmegaConf.to_container(cfg, resolve=False)):
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_its_benchmark(experiment, schedule):
    name = experiment.removeprefix("izf_")
    cfg = compose("train", [f"experiment={experiment}", f"schedule={schedule}"])
    assert cfg.dataset.benchmark == name.upper() and cfg.dataset.name == name.upper()
    assert name in cfg.tags
    assert cfg.model.flow.blocks == (5 if name == "apy" else SCHEDULES[schedule][1])
    assert cfg.model.loss.scaling == "normalised"  # the default model, not the paper's literal loss


def test_paper_model_is_the_literal_loss():
    loss = compose("train", ["model=izf_paper"]).model.loss
    assert (loss.scaling, loss.centre, loss.mmd_bandwidth, loss.negative_margin) == ("paper", "batch", "fixed", None)
    assert (loss.negative, loss.centralising, loss.semantic) == (1.0, 1.0, 10.0)


def test_optional_groups_compose():
    for overrides in (["debug=fast"], ["trainer=ddp"], ["logger=wandb"], ["hparams_search=izf_optuna"],
                      ["launcher=slurm"], ["launcher=local"]):
        cfg = compose("train", overrides)
        assert cfg.model.flow.blocks >= 1, overrides


def test_a_benchmark_under_another_config_name_is_told_its_recipe(tmp_path, caplog):
    # APY's class counts and attribute dimension, in a small folder of another name
    folder = save_xlsa17(synthetic(seen=20, unseen=12, semantic_dim=64, feature_dim=72, per_class=5), tmp_path / "mine")
    for recipe, warned in ((None, True), ("izf_apy", False)):
        chosen = [f"_internal/recipe={recipe}"] if recipe else []
        cfg = compose("train", ["dataset=custom", f"dataset.root={folder}", *chosen])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="izf.training.run"):
            _, model = build(cfg)
        assert ("_internal/recipe=izf_apy (add it to the command line)" in caplog.text) == warned
        assert model.hparams.flow["blocks"] == (10 if warned else 5)


CITED = re.compile(r"(?<![\w./-])((?:docs|conf|src|tests)/[\w./-]+\.(?:md|yaml|py))")


def test_every_file_the_docs_and_code_cite_exists():
    texts = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "src").rglob("*.py"),
             *(REPO / "conf").rglob("*.yaml")]
    cited = {(path.relative_to(REPO), ref) for path in texts for ref in CITED.findall(path.read_text())}
    assert len(cited) > 10  # the pattern finds the citations
    missing = sorted(f"{source}: {ref}" for source, ref in cited if not (REPO / ref).exists())
    assert not missing, missing


def test_a_baseline_takes_its_reference_settings_per_dataset_and_says_when_it_has_none(caplog):
    from izf.training.run import _check_dataset_budget

    cub = compose("train", ["model=clswgan", "dataset=cub", "schedule=paper"])
    sun = compose("train", ["model=clswgan", "dataset=sun", "schedule=paper"])
    assert (cub.trainer.max_steps, cub.model.softmax.n_gen) == (37296, 300)
    assert (sun.trainer.max_steps, sun.model.optimizer.lr, sun.model.softmax.n_gen) == (38880, 2e-4, 400)
    assert compose("train", ["model=clswgan", "dataset=sun", "schedule=cpu"]).model.optimizer.lr == 1e-3  # CPU budget
    assert compose("train", ["model=cada_vae", "dataset=cub", "schedule=paper"]).model.softmax.epochs == 23
    with caplog.at_level(logging.WARNING):
        compose("train", ["model=cada_vae", "dataset=cub", "schedule=paper"])
        _check_dataset_budget()
        assert not caplog.records
        compose("train", ["model=cada_vae", "dataset=apy", "schedule=paper"])
        _check_dataset_budget()
    assert "not for dataset=apy" in caplog.text and "awa1, awa2, cub, sun" in caplog.text
