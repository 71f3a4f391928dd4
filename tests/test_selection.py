"""Per-dataset choices on the validation task (izf.training.selection), and the two pieces they
choose between: the cross-validated attribute map and the Gaussian classifier."""

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from izf.data import save_xlsa17
from izf.data.generate import synthetic
from izf.model.attribute_map import RIDGES, fit_attribute_map
from izf.model.classifiers import GaussianClassifier
from izf.training.selection import choose, pinned
from tests.conftest import TINY


# ---- the attribute map ---------------------------------------------------------------------------
def _smooth_task(classes: int, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    attributes = torch.rand(classes, 4, generator=g)
    mix = torch.randn(4, 12, generator=g)
    means = torch.sin(2 * attributes) @ mix + noise * torch.randn(classes, 12, generator=g)
    return attributes, means


def test_the_attribute_map_predicts_held_out_classes_of_a_smooth_map():
    attributes, means = _smooth_task(60, noise=0.0)
    fitted = fit_attribute_map(attributes[:50], means[:50])
    predicted = fitted(attributes[50:])
    error = (predicted - means[50:]).pow(2).sum() / (means[50:] - means[:50].mean(0)).pow(2).sum()
    assert error < 0.05  # against 1.0 for predicting the training classes' mean
    assert fitted.held_out.shape == (50, 12)


def test_cross_validation_smooths_more_when_the_targets_are_noisier():
    attributes, _ = _smooth_task(60, noise=0.0)
    clean = fit_attribute_map(attributes, _smooth_task(60, noise=0.0)[1])
    noisy = fit_attribute_map(attributes, _smooth_task(60, noise=3.0)[1])
    assert RIDGES.index(noisy.ridge) > RIDGES.index(clean.ridge) or noisy.width > clean.width


def test_held_out_predictions_never_see_their_own_class():
    attributes, means = _smooth_task(20, noise=0.0)
    changed = means.clone()
    changed[3] += 100.0  # a wild target: its own held-out prediction must not follow it
    before = fit_attribute_map(attributes, means, seed=1)
    after = fit_attribute_map(attributes, changed, seed=1)
    if (before.ridge, before.width) == (after.ridge, after.width):
        assert torch.allclose(before.held_out[3], after.held_out[3], atol=1e-4)
    assert not torch.allclose(after(attributes[3:4]), before(attributes[3:4]), atol=1.0)


# ---- the Gaussian classifier -----------------------------------------------------------------------
def test_gaussian_scores_are_per_dimension_log_likelihoods():
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    variances = torch.tensor([1.0, 4.0])
    x = torch.tensor([[1.0, 1.0]])
    scores = GaussianClassifier(means, variances)(x)
    by_hand = [-(2.0 / (2 * 1.0 * 2)) - 0.5 * math.log(1.0), -(2.0 / (2 * 4.0 * 2)) - 0.5 * math.log(4.0)]
    assert scores[0].tolist() == pytest.approx(by_hand)


def test_a_wider_class_wins_far_from_both_means_and_loses_at_the_narrow_ones():
    classifier = GaussianClassifier(torch.tensor([[0.0], [1.0]]), torch.tensor([0.1, 1.0]))
    assert classifier(torch.tensor([[0.0]])).argmax().item() == 0
    assert classifier(torch.tensor([[-3.0]])).argmax().item() == 1


# ---- the selection, by its rules ---------------------------------------------------------------------
def _config(refit: dict, gamma_per_classifier: bool = True):
    gamma = {"a": 0.0, "b": 0.0} if gamma_per_classifier else 0.0
    return OmegaConf.create({"seed": 0, "dataset": {"split": "test", "source": "xlsa17"},
                             "model": {"classifier": "a", "calibration_gamma": gamma, "knob": 0.0, "other": 1},
                             "select": {"enabled": "auto", "refit": refit}})


def _fake_runs(h_of):
    """train_and_evaluate / rescore whose validation H per classifier is h_of(knob, other, classifier)."""
    seen_splits = []

    def metrics(cfg):
        seen_splits.append(cfg.dataset.split)
        return {f"{c}/{k}": v for c in ("a", "b") for k, v in
                {"best_gamma/gzsl/H": h_of(cfg.model.knob, cfg.model.other, c), "best_gamma": 0.5 if c == "a" else 2.0,
                 "zsl/T1": 0.3}.items()}

    return (lambda cfg: ("model", metrics(cfg))), (lambda model, cfg: metrics(cfg)), seen_splits


def test_the_choice_is_the_validation_best_and_only_validation_runs():
    train, rescore, splits = _fake_runs(lambda knob, other, c: knob * other + (0.1 if c == "b" else 0.0))
    selection = choose(_config({"model.classifier": ["a", "b"], "model.knob": [0.0, 0.5, 1.0],
                                "model.other": [1, 2]}), [], train, rescore)
    assert selection["choices"] == {"model.knob": 1.0, "model.other": 2, "model.classifier": "b",
                                    "model.calibration_gamma.a": 0.5, "model.calibration_gamma.b": 2.0}
    assert selection["validation/gzsl/H"] == pytest.approx(2.1)
    assert len(selection["candidates"]) == 3 * 2 * 2  # the classifier choice needs no extra evaluation
    assert set(splits) == {"validation"} and len(splits) == 3 * 2


def test_a_value_given_on_the_command_line_is_kept_and_not_tried():
    train, rescore, splits = _fake_runs(lambda knob, other, c: knob)
    overrides = ["model.knob=0.5", "model.calibration_gamma.a=0.1", "dataset=custom"]
    selection = choose(_config({"model.knob": [0.0, 1.0], "model.other": [1, 2]}), overrides, train, rescore)
    assert "model.knob" not in selection["choices"] and "model.calibration_gamma.a" not in selection["choices"]
    assert selection["choices"]["model.calibration_gamma.b"] == 2.0
    assert {"model.knob", "model.calibration_gamma.a"} <= set(selection["pinned"])
    assert len(splits) == 2  # only model.other's two values were tried


def test_what_pins_a_key():
    assert pinned("model.gaussian.widening", ["model.gaussian.widening=1"])
    assert pinned("model.gaussian.widening", ["+model.gaussian={shrinkage:1,widening:1}"])
    assert pinned("model.calibration_gamma", ["model.calibration_gamma.softmax=0.3"])
    assert not pinned("model.gaussian.widening", ["model=izf", "dataset=custom", "model.gaussian.shrinkage=2"])


# ---- end to end, through train.py -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return save_xlsa17(synthetic(seen=10, unseen=4, semantic_dim=6, feature_dim=16, per_class=40, seed=3),
                       tmp_path_factory.mktemp("data") / "small")


QUICK = [o for o in TINY if not o.startswith("dataset.generator")] + ["trainer.max_steps=20"]


@pytest.mark.slow
def test_a_test_run_chooses_on_its_validation_task_and_records_it(tmp_path, small_folder, train_cli):
    run_dir = tmp_path / "run"
    train_cli("dataset=custom", f"dataset.root={small_folder}", *QUICK, f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    selection = metrics["selection"]
    best = max(selection["candidates"], key=lambda c: c["validation/gzsl/H"])
    assert selection["validation/gzsl/H"] == best["validation/gzsl/H"]
    for key, value in best["settings"].items():  # the run trained and reported with the validation best
        assert selection["choices"][key] == value
        assert OmegaConf.select(OmegaConf.load(run_dir / "config.yaml"), key) == value
    gamma_key = f"model.calibration_gamma.{best['classifier']}"
    assert selection["choices"][gamma_key] == best["gamma"]
    assert metrics["gzsl/H"] == metrics[f"{best['classifier']}/gzsl/H"]  # the chosen classifier reports
    assert metrics["time/wall_s"] >= selection["time/s"] > 0  # the choice is part of the run's time

    # Resumed in the same directory, the run keeps its choices instead of choosing again.
    proc = train_cli("dataset=custom", f"dataset.root={small_folder}", *QUICK, f"hydra.run.dir={run_dir}",
                     "ckpt_path=last")
    assert "the choices this run made on its validation task" in (run_dir / "train.log").read_text() + proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["selection"] == selection


@pytest.mark.slow
def test_a_pinned_value_overrides_the_choice_and_test_data_never_enter_it(tmp_path, small_folder, train_cli):
    pinned_run, scrambled_run = tmp_path / "pinned", tmp_path / "scrambled"
    train_cli("dataset=custom", f"dataset.root={small_folder}", *QUICK, "model.unseen_centre=0.5",
              "model.classifier=softmax", f"hydra.run.dir={pinned_run}")
    config = OmegaConf.load(pinned_run / "config.yaml")
    selection = json.loads((pinned_run / "metrics.json").read_text())["selection"]
    assert config.model.unseen_centre == 0.5 and config.model.classifier == "softmax"
    assert "model.unseen_centre" not in selection["choices"] and "model.classifier" not in selection["choices"]
    assert {"model.unseen_centre", "model.classifier"} <= set(selection["pinned"])

    # The same folder with its test images replaced by noise: the choices cannot change.
    data = synthetic(seen=10, unseen=4, semantic_dim=6, feature_dim=16, per_class=40, seed=3)
    test_rows = np.concatenate([data.splits["test_seen"], data.splits["test_unseen"]])
    data.features[test_rows] = np.random.default_rng(0).random((len(test_rows), data.features.shape[1]))
    scrambled = save_xlsa17(data, tmp_path / "scrambled_data")
    train_cli("dataset=custom", f"dataset.root={scrambled}", *QUICK, "model.unseen_centre=0.5",
              "model.classifier=softmax", f"hydra.run.dir={scrambled_run}")
    assert json.loads((scrambled_run / "metrics.json").read_text())["selection"]["choices"] == selection["choices"]


def test_no_choice_without_a_validation_task_to_make_it_on(tmp_path, train_cli):
    run_dir = tmp_path / "run"  # the generated default (source: synthetic) keeps the config's values
    train_cli(*TINY, "trainer.max_steps=5", f"hydra.run.dir={run_dir}")
    assert "selection" not in json.loads((run_dir / "metrics.json").read_text())


# ---- the diagnosis of a validation run --------------------------------------------------------------------
@pytest.mark.slow
def test_the_diagnosis_measures_the_pseudo_unseen_classes_and_refuses_a_test_run(tmp_path, small_folder, train_cli):
    from tests.conftest import run_cli

    run_dir = tmp_path / "validation"
    train_cli("dataset=custom", f"dataset.root={small_folder}", "dataset.split=validation", *QUICK,
              f"hydra.run.dir={run_dir}")
    proc = run_cli("-m", "izf.diagnose", str(run_dir), check=True)
    found = json.loads(proc.stdout.split("DIAGNOSE_JSON ", 1)[1])
    means = found["unseen class means"]
    truth = means["the true means (hindsight, for scale)"]
    assert truth["relative error"] == pytest.approx(0.0, abs=1e-6)
    for row in means.values():  # nothing predicts the means better than the means themselves
        assert row["relative error"] >= truth["relative error"] and 0 <= row["nearest-mean T1"] <= 1
    assert found["naive Bayes"]["nearest centre in the features, placed with hindsight"] == truth["nearest-mean T1"]

    test_dir = tmp_path / "test"
    train_cli("dataset=custom", f"dataset.root={small_folder}", *QUICK, "select.enabled=false",
              f"hydra.run.dir={test_dir}")
    refused = run_cli("-m", "izf.diagnose", str(test_dir))
    assert refused.returncode != 0 and "dataset.split=validation" in refused.stderr
