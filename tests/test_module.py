"""The IZF LightningModule: loss switches, checkpoint round trip, and the toy experiment."""

from contextlib import nullcontext
from unittest import mock

import lightning.pytorch as L
import pytest
import torch

from izf.data import ZSLDataModule
from izf.training.evaluate import evaluate_model
from izf.training.module import IZF
from tests.conftest import DEVICES

LOSS = {"semantic": 10.0, "negative": 1.0, "centralising": 1.0, "mmd_scales": [0.1, 1.0, 10.0],
        "mmd_unbiased": False, "negative_margin": None}
SOFTMAX = {"n_gen": 40, "epochs": 3, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "generation_batch": 100}
SMALL_DATA = {"seen": 5, "unseen": 3, "semantic_dim": 4, "feature_dim": 12, "per_class": 30}


def make(datamodule, flow=None, **loss):
    model = IZF(num_classes=len(datamodule.semantics), feature_dim=datamodule.features.shape[1],
                semantic_dim=datamodule.semantics.shape[1], flow={"blocks": 2, "hidden": 16, **(flow or {})},
                loss={**LOSS, **loss}, optimizer={"lr": 1e-3}, softmax=SOFTMAX)
    model.set_classes(datamodule.semantics, datamodule.seen_classes)
    return model


@pytest.fixture
def datamodule():
    dm = ZSLDataModule(name="synthetic", source="synthetic", generator=SMALL_DATA, batch_size=32, batches_per_epoch=10)
    dm.setup()
    return dm


def test_zero_weight_switches_term_off_entirely(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    full = make(datamodule)
    assert set(full.loss_terms(x, y)) == {"ml", "semantic", "negative", "centralising"}
    only_ml = make(datamodule, semantic=0.0, negative=0.0, centralising=0.0)
    with mock.patch.object(only_ml.flow, "inverse", side_effect=AssertionError("reverse pass ran")):
        assert set(only_ml.loss_terms(x, y)) == {"ml"}
    no_neg = make(datamodule, negative=0.0)
    with mock.patch("izf.model.losses.mmd2", side_effect=AssertionError("MMD computed")):
        assert set(no_neg.loss_terms(x, y)) == {"ml", "semantic", "centralising"}


def test_terms_are_weighted(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    base = make(datamodule)
    model = make(datamodule, semantic=20.0, centralising=3.0)
    model.load_state_dict(base.state_dict())
    torch.manual_seed(2)
    t1 = base.loss_terms(x, y)
    torch.manual_seed(2)
    t2 = model.loss_terms(x, y)
    assert t2["semantic"].item() == pytest.approx(2 * t1["semantic"].item(), rel=1e-5)
    assert t2["centralising"].item() == pytest.approx(3 * t1["centralising"].item(), rel=1e-5)
    assert t2["ml"].item() == pytest.approx(t1["ml"].item(), rel=1e-6)


def test_gradients_reach_the_flow_through_the_reverse_pass(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    model = make(datamodule, semantic=0.0)
    terms = model.loss_terms(x, y)
    for term in ("negative", "centralising"):
        model.zero_grad()
        terms[term].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.flow.parameters()), term


def test_generation_encodes_back_to_its_class_semantics(datamodule):
    model = make(datamodule)
    classes = model.unseen_classes.repeat(4)
    with torch.no_grad():
        c_hat, _, _ = model.encode(model.generate(classes))
    assert torch.allclose(c_hat, model.class_semantics[classes], atol=1e-4)


def test_checkpoint_reload_gives_same_predictions(datamodule, tmp_path):
    L.seed_everything(0)
    model = make(datamodule)
    trainer = L.Trainer(max_steps=20, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    reloaded = IZF.load_from_checkpoint(tmp_path / "model.ckpt")  # weights_only loading: plain hparams
    assert torch.equal(reloaded.class_semantics, model.class_semantics)
    assert torch.equal(reloaded.seen_mask, model.seen_mask)
    x, _ = datamodule.split("test_unseen")
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded.encode(x)[0], model.encode(x)[0])
        torch.manual_seed(5)
        a = model.generate(model.unseen_classes)
        torch.manual_seed(5)
        b = reloaded.generate(reloaded.unseen_classes)
    assert torch.equal(a, b)
    # The whole protocol with both classifiers: the same numbers, whatever the global random state
    # (the softmax classifiers have their own seeded stream).
    torch.manual_seed(1)
    evaluation = evaluate_model(model, datamodule)
    torch.manual_seed(2)
    assert evaluate_model(reloaded, datamodule).metrics == evaluation.metrics
    for split in ("test_seen", "test_unseen"):  # the reported classifier's GZSL predictions, with their labels
        predicted, labels = evaluation.predictions[split]
        assert torch.equal(labels, datamodule.split(split)[1]) and predicted.shape == labels.shape


@pytest.mark.slow
def test_compiled_loss_terms_match_eager(datamodule):
    # The random draws (unseen classes, z) differ under torch.compile; the deterministic terms agree.
    x, y = next(iter(datamodule.train_dataloader()))
    model = make(datamodule, negative=0.0)
    eager, compiled = model.loss_terms(x, y), model.compiled_loss_terms(x, y)
    assert set(eager) == set(compiled)
    for term in eager:
        assert torch.allclose(eager[term], compiled[term], rtol=1e-4, atol=1e-6), term


def test_actnorm_is_initialised_from_the_training_set_the_same_way_in_every_process(datamodule):
    # DDP processes each see a different first batch; the setup-time sample is the same for all.
    def fitted_actnorm(rng_seed):
        model = make(datamodule, flow={"actnorm": True})
        torch.manual_seed(rng_seed)  # what differs between processes
        model.prepare(datamodule, "fit")
        return model.flow.layers[0]
    first, other = fitted_actnorm(0), fitted_actnorm(1)
    assert bool(first.initialised) and torch.equal(first.bias, other.bias)
    assert torch.equal(first.log_scale, other.log_scale)
    x, _ = datamodule.split("trainval")
    assert torch.allclose(first(x)[0].mean(0), torch.zeros(x.shape[1]), atol=0.2)  # ≈ standardised


def test_the_classifiers_fitted_after_training_follow_their_settings(datamodule):
    """The Gaussian classifier's seen means are the training means (κ = 0) or pulled toward the
    attribute map's held-out predictions (κ > 0); its unseen means are the generated ones moved
    `unseen_centre` of the way onto the map; unseen classes are wider by ω τ². The softmax
    classifiers are reused when only the Gaussian settings change."""
    from izf.model.attribute_map import fit_attribute_map
    from izf.model.losses import class_means

    model = make(datamodule)
    x, y = datamodule.split("trainval")
    seen, unseen = model.seen_classes, model.unseen_classes
    seen_means = class_means(x, y, seen)[0]
    attribute_map = fit_attribute_map(model.class_semantics[seen], seen_means)

    def fitted(unseen_centre, shrinkage, widening):
        model.hparams.unseen_centre, model.hparams.gaussian = unseen_centre, {"shrinkage": shrinkage,
                                                                              "widening": widening}
        torch.manual_seed(0)
        return model.fit_classifiers(x, y, progress=lambda *_: nullcontext(lambda: None))

    onto_map = fitted(1.0, 0.0, 0.0)
    torch.testing.assert_close(onto_map["gaussian"].means[seen], seen_means)
    torch.testing.assert_close(onto_map["gaussian"].means[unseen], attribute_map(model.class_semantics[unseen]))
    assert torch.equal(onto_map["gaussian"].variances[unseen], onto_map["gaussian"].variances[seen[:len(unseen)]])
    own = fitted(0.0, 0.0, 0.0)  # the flow's own samples: their means, not the map's
    assert not torch.allclose(own["gaussian"].means[unseen], onto_map["gaussian"].means[unseen], atol=1e-3)
    wide = fitted(0.0, 4.0, 1.0)
    assert wide["softmax"] is own["softmax"]  # only the Gaussian settings changed: no softmax refit
    counts = torch.bincount(y)[seen].float()[:, None]
    pulled = counts / (counts + 4.0) * seen_means + 4.0 / (counts + 4.0) * attribute_map.held_out.float()
    torch.testing.assert_close(wide["gaussian"].means[seen], pulled)
    assert (wide["gaussian"].variances[unseen] > wide["gaussian"].variances[seen][0]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_a_short_fit_on_the_device_uses_the_fused_optimiser_and_learns(device, datamodule):
    model = make(datamodule)
    model.prepare(datamodule)
    x, y = (t[:64].to(device) for t in datamodule.split("trainval"))
    with torch.no_grad():
        before = sum(model.to(device).loss_terms(x, y).values())
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.optimizers[0].defaults["fused"] is True  # izf.model.optim.adam on a device with the kernel
    assert next(model.parameters()).device.type == device
    with torch.no_grad():
        assert sum(model.to(device).loss_terms(x, y).values()) < before
