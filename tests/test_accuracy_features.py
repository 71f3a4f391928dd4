"""What the accuracy work added: the schedules and the paper's literal loss as configs,
whole-training-set class means for the centralising term, per-classifier calibrated stacking
with γ chosen on the validation task, and per-term gradient norms in the logs."""

import csv

import lightning.pytorch as L
import pytest
import torch

from izf.config import compose
from izf.data import ZSLDataModule
from izf.errors import ConfigError
from izf.evaluation.protocol import gamma_of
from izf.training.evaluate import evaluate_model
from izf.training.module import IZF

SOFTMAX = {"n_gen": 20, "epochs": 2, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "generation_batch": 100}


def config(*overrides):
    return compose("train", overrides)


@pytest.mark.parametrize("schedule, steps, hidden", [("paper", 11000, 1024), ("cpu", 300, 256)])
def test_schedules_set_length_and_width_and_apy_keeps_its_five_blocks(schedule, steps, hidden):
    cfg = config("dataset=awa2", f"schedule={schedule}")
    assert (cfg.trainer.max_steps, cfg.model.flow.hidden) == (steps, hidden)
    assert config("experiment=izf_apy", f"schedule={schedule}").model.flow.blocks == 5


def test_default_schedule_is_the_papers():
    cfg = config("dataset=awa2")
    assert (cfg.trainer.max_steps, cfg.model.flow.blocks, cfg.model.flow.hidden) == (11000, 10, 1024)


def test_paper_model_is_the_literal_loss_and_default_is_normalised():
    paper = config("dataset=awa2", "model=izf_paper").model
    assert paper.loss.scaling == "paper" and paper.loss.centre == "batch" and paper.loss.mmd_bandwidth == "fixed"
    assert (paper.loss.semantic, paper.loss.negative, paper.loss.centralising) == (10.0, 1.0, 1.0)
    assert paper.loss.negative_margin is None
    assert dict(paper.calibration_gamma) == {"softmax": 0.0, "nb": 0.0, "gaussian": 0.0}
    assert (paper.classifier, paper.unseen_centre) == ("softmax", 0.0)  # the paper's classifier on the flow's samples
    default = config("dataset=awa2").model
    assert default.loss.scaling == "normalised" and default.loss.centre == "dataset"
    assert default.softmax.balanced and not paper.softmax.balanced and paper.softmax.temperature == 1.0
    assert default.flow.actnorm and not paper.flow.actnorm  # the paper's blocks have no ActNorm
    assert default.softmax.weight_decay > 0 and paper.softmax.weight_decay == 0
    assert default.softmax.n_gen == 100 and 300 <= paper.softmax.n_gen <= 1000  # the paper's range
    paper.softmax.balanced, paper.softmax.temperature = True, default.softmax.temperature
    paper.softmax.weight_decay, paper.softmax.n_gen = default.softmax.weight_decay, default.softmax.n_gen
    paper.flow.actnorm = True
    assert paper.flow == default.flow and paper.softmax == default.softmax  # the rest is shared


@pytest.fixture
def datamodule():
    dm = ZSLDataModule(name="synthetic", source="synthetic", batch_size=32, batches_per_epoch=10,
                       generator={"seen": 5, "unseen": 3, "semantic_dim": 4, "feature_dim": 12, "per_class": 30})
    dm.setup()
    return dm


def make(dm, calibration_gamma=0.0, **loss):
    model = IZF(num_classes=len(dm.semantics), feature_dim=12, semantic_dim=4, flow={"blocks": 2, "hidden": 16},
                loss={"semantic": 10.0, "negative": 0.0, "centralising": 1.0, "mmd_scales": [1.0],
                      "mmd_unbiased": False, "negative_margin": None, "scaling": "normalised", **loss},
                optimizer={"lr": 1e-3}, softmax=SOFTMAX, calibration_gamma=calibration_gamma)
    model.set_classes(dm.semantics, dm.seen_classes, dm.class_feature_means())
    return model


def test_class_feature_means_by_hand(datamodule):
    x, y = datamodule.split("trainval")
    means = datamodule.class_feature_means()
    for c in datamodule.seen_classes.tolist():
        assert torch.allclose(means[c], x[y == c].mean(0))
    assert not means[datamodule.unseen_classes].any()  # no trainval images: zeros, never used


def test_dataset_centre_uses_whole_training_set_means(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    model = make(datamodule, centre="dataset")
    with torch.no_grad():
        prototypes = model.flow.inverse(model.latent(model.seen_classes, temperature=0.0))
        targets = model.feature_means[model.seen_classes] + model.hparams.jitter / 2
        expected = ((prototypes - targets).norm(dim=1) / 12 ** 0.5).mean()
        assert model.loss_terms(x, y)["centralising"].item() == pytest.approx(expected.item(), rel=1e-5)
        # The batch form differs: its targets are the (noisy) batch means.
        assert make(datamodule, centre="batch").loss_terms(x, y)["centralising"].item() != pytest.approx(
            expected.item(), rel=1e-3)


def test_negative_term_switches_on_at_its_start_step(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    model = make(datamodule, negative=1.0, negative_start=5)
    assert "negative" not in model.loss_terms(x, y)
    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert model.global_step == 5 and "negative" in model.loss_terms(x, y)



def test_sampling_temperature_scales_the_noise_and_zero_gives_the_prototypes(datamodule):
    model = make(datamodule)
    classes = model.unseen_classes[:1].repeat(4000)  # one class: its samples differ only by z
    torch.manual_seed(0)
    for temperature in (0.25, 1.0):
        z = model.latent(classes, temperature)[:, 4:]
        assert z.std().item() == pytest.approx(temperature, rel=0.02)
    assert not model.latent(classes, 0.0)[:, 4:].any()
    with torch.no_grad():
        spread = {t: model.generate(classes, t).std(0).mean().item() for t in (0.0, 0.25, 1.0)}
        assert torch.equal(model.generate(classes[:3], 0.0), model.flow.inverse(model.latent(classes[:3], 0.0)))
    assert spread[0.0] == 0.0 < spread[0.25] < spread[1.0]
    with pytest.raises(ConfigError, match="softmax.temperature"):
        IZF(num_classes=len(datamodule.semantics), feature_dim=12, semantic_dim=4, flow={}, loss={},
            optimizer={"lr": 1e-3}, softmax={**SOFTMAX, "temperature": -0.5})

@pytest.mark.parametrize("bad", [{"softmax": float("nan")}, {"svm": 1.0}, "high"])
def test_calibration_gamma_must_be_finite_numbers_per_classifier(datamodule, bad):
    with pytest.raises(ConfigError, match="calibration_gamma"):
        make(datamodule, calibration_gamma=bad)


def test_gamma_per_classifier_and_validation_reports_the_best(datamodule):
    model = make(datamodule, calibration_gamma={"softmax": 2.0})
    gamma = model.hparams.calibration_gamma
    assert (gamma_of(gamma, "softmax"), gamma_of(gamma, "nb")) == (2.0, 0.0)
    assert gamma_of(make(datamodule, calibration_gamma=0.5).hparams.calibration_gamma, "nb") == 0.5  # both

    test_metrics = evaluate_model(model, datamodule).metrics
    assert not any("best_gamma" in key for key in test_metrics)  # never chosen on test data

    validation = ZSLDataModule(name="synthetic", source="synthetic", split="validation", batch_size=32,
                               generator={"seen": 8, "unseen": 3, "semantic_dim": 4, "feature_dim": 12,
                                          "per_class": 30})
    validation.setup()
    model = make(validation)
    metrics = evaluate_model(model, validation).metrics
    for name in ("softmax", "nb"):
        # The best point of the sweep is at least as good as γ = 0 (which the sweep includes).
        assert metrics[f"{name}/best_gamma/gzsl/H"] >= metrics[f"{name}/gzsl/H"]
        shifted = make(validation, calibration_gamma={name: metrics[f"{name}/best_gamma"]})
        shifted.load_state_dict(model.state_dict())
        shifted_h = evaluate_model(shifted, validation).metrics[f"{name}/gzsl/H"]
        assert shifted_h == pytest.approx(metrics[f"{name}/best_gamma/gzsl/H"])


def test_term_gradient_norms_are_logged(datamodule, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    model = make(datamodule, negative=1.0, mmd_bandwidth="median")
    trainer = L.Trainer(max_steps=6, log_every_n_steps=2, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("grad_norm/ml")]
    assert len(logged) >= 2
    for name in ("ml", "semantic", "negative", "centralising"):
        assert all(float(r[f"grad_norm/{name}"]) > 0 for r in logged), name


def test_standard_scaling_by_hand():
    from izf.data.datamodule import scale

    att = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]]).numpy()
    scaled = scale("standard", att, att)
    assert scaled[:, 0].tolist() == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert scaled[:, 1].tolist() == [0.0, 0.0, 0.0]  # a constant dimension is centred, not divided by 0
