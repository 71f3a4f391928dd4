"""CADA-VAE: its losses on hand cases, the warm-ups, the latent classifier's training set, and a short
fit through Lightning, the protocol and a checkpoint round trip."""

import math

import lightning.pytorch as L
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from izf.baselines import cada_vae
from izf.baselines.cada_vae import CADAVAE, WARMUP, run_epoch, warmup_factor, warmup_weights, wasserstein_distance
from izf.data import ZSLDataModule
from izf.errors import ConfigError
from izf.training.evaluate import evaluate_model

SMALL_DATA = {"seen": 5, "unseen": 3, "semantic_dim": 4, "feature_dim": 12, "per_class": 30}
TINY = {"image_encoder": 16, "image_decoder": 16, "attribute_encoder": 8, "attribute_decoder": 8}
SOFTMAX = {"seen_per_class": 7, "unseen_per_class": 11, "zsl_unseen_per_class": 5, "epochs": 2, "zsl_epochs": 2,
           "batch_size": 16}


@pytest.fixture
def datamodule():
    dm = ZSLDataModule(name="synthetic", source="synthetic", generator=SMALL_DATA, batch_size=32, batches_per_epoch=10)
    dm.setup()
    return dm


def make(datamodule, **settings):
    model = CADAVAE(num_classes=len(datamodule.semantics), feature_dim=datamodule.features.shape[1],
                    semantic_dim=datamodule.semantics.shape[1], latent_dim=6, hidden=TINY,
                    softmax={**SOFTMAX, **settings.pop("softmax", {})}, **settings)
    model.set_classes(datamodule.semantics, datamodule.seen_classes)
    return model


# ---- losses -----------------------------------------------------------------------------------------
def test_wasserstein_of_identical_gaussians_is_zero():
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(wasserstein_distance(mu, logvar, mu.clone(), logvar.clone()), torch.zeros(4))


def test_wasserstein_closed_form_on_a_hand_case():
    # N((0, 0), diag(1, 4)) vs N((3, 4), diag(4, 1)): ‖Δμ‖² = 25, ‖Δσ‖² = (1−2)² + (2−1)² = 2 → √27
    mu1, sigma1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    mu2, sigma2 = torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 1.0]])
    w = wasserstein_distance(mu1, 2 * sigma1.log(), mu2, 2 * sigma2.log())
    assert w.shape == (1,)
    assert w.item() == pytest.approx(math.sqrt(27.0), rel=1e-6)
    # pure mean shift: the Euclidean distance of the means
    w = wasserstein_distance(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 2.0]]), torch.zeros(1, 3))
    assert w.item() == pytest.approx(3.0, rel=1e-6)


def test_kl_matches_torch_distributions():
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]]), torch.tensor([[0.2, -1.5, 0.7], [0.0, 1.0, -0.4]])
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros(3), torch.ones(3))).sum()
    assert cada_vae.kl_divergence(mu, logvar).item() == pytest.approx(expected.item(), rel=1e-6)
    assert cada_vae.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_reconstruction_losses_are_sums():
    x_hat, x = torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.zeros(2, 2)
    assert cada_vae.reconstruction_loss(x_hat, x, "l1").item() == pytest.approx(3.5)
    assert cada_vae.reconstruction_loss(x_hat, x, "l2").item() == pytest.approx(5.25)


def test_cross_reconstruction_decodes_with_the_other_modality(datamodule):
    model = make(datamodule)
    x, y = next(iter(datamodule.train_dataloader()))
    a = model.class_semantics[y]
    z_x, z_a = torch.randn(len(x), 6), torch.randn(len(x), 6)
    assert model.image_decoder(z_a).shape == x.shape and model.attribute_decoder(z_x).shape == a.shape
    expected = (model.image_decoder(z_a) - x).abs().sum() + (model.attribute_decoder(z_x) - a).abs().sum()
    got = cada_vae.cross_reconstruction_loss(model.image_decoder, model.attribute_decoder, z_x, z_a, x, a)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_reparameterisation_modes():
    mu, logvar = torch.zeros(2000, 3), torch.full((2000, 3), math.log(4.0))
    torch.manual_seed(0)
    standard = cada_vae.reparameterise(mu, logvar, "standard")
    assert standard.std().item() == pytest.approx(2.0, rel=0.05)  # σ = exp(½ log σ²)
    reference = cada_vae.reparameterise(mu, logvar, "reference")
    assert reference.std().item() == pytest.approx(4.0, rel=0.05)  # the reference's exp(log σ²)
    assert torch.allclose(reference, reference[:, :1].expand(-1, 3))  # one ε per row, as in the reference
    assert torch.equal(cada_vae.reparameterise(mu, torch.full_like(mu, -200.0)), mu)


# ---- warm-ups ----------------------------------------------------------------------------------------
def test_warmup_factor_is_linear_between_start_and_end():
    assert warmup_factor(0, 6, 22, 8.13) == 0.0
    assert warmup_factor(6, 6, 22, 8.13) == 0.0
    assert warmup_factor(14, 6, 22, 8.13) == pytest.approx(8.13 / 2)
    assert warmup_factor(22, 6, 22, 8.13) == pytest.approx(8.13)
    assert warmup_factor(99, 6, 22, 8.13) == pytest.approx(8.13)


def test_warmup_weights_at_chosen_steps():
    # 100 epochs of 10 steps: step s is in the reference's epoch ⌊s/10⌋
    assert [run_epoch(s, 1000, 100) for s in (0, 9, 10, 215, 999)] == [0, 0, 1, 21, 99]
    assert warmup_weights(0, 1000, WARMUP) == {"beta": 0.0, "cross_reconstruction": 0.0, "distance": 0.0}
    w = warmup_weights(145, 1000, WARMUP)  # epoch 14: δ half-way through 6→22, γ not yet (starts at 21)
    assert w["distance"] == pytest.approx(8.13 * 8 / 16)
    assert w["cross_reconstruction"] == 0.0
    assert w["beta"] == pytest.approx(0.25 * 14 / 93)
    w = warmup_weights(480, 1000, WARMUP)  # epoch 48: γ half-way through 21→75, δ at its factor
    assert w["cross_reconstruction"] == pytest.approx(2.37 * 27 / 54)
    assert w["distance"] == pytest.approx(8.13)
    assert warmup_weights(999, 1000, WARMUP) == pytest.approx({"beta": 0.25, "cross_reconstruction": 2.37,
                                                               "distance": 8.13})
    # a run 10× shorter is the same schedule in proportion
    assert warmup_weights(48, 100, WARMUP) == warmup_weights(480, 1000, WARMUP)


def test_zero_weight_terms_are_not_computed(datamodule):
    model = make(datamodule)
    x, y = next(iter(datamodule.train_dataloader()))
    a = model.class_semantics[y]
    assert set(model.loss_terms(x, a, {"beta": 0.0, "cross_reconstruction": 0.0, "distance": 0.0})) == {
        "reconstruction"}
    terms = model.loss_terms(x, a, {"beta": 0.5, "cross_reconstruction": 1.0, "distance": 2.0})
    assert set(terms) == {"reconstruction", "kl", "cross_reconstruction", "distance"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())


def test_bad_settings_are_refused(datamodule):
    with pytest.raises(ConfigError, match="reparameterisation"):
        make(datamodule, reparameterisation="textbook")
    with pytest.raises(ConfigError, match="warmup.distance"):
        make(datamodule, warmup={"distance": {"factor": 1.0, "start": 5, "end": 5}})


# ---- the latent classifier ---------------------------------------------------------------------------
def test_latent_training_sets_counts_per_class(datamodule):
    model = make(datamodule)
    x, y = datamodule.split("trainval")
    sets = model.latent_training_sets(x, y)
    z, labels = sets["gzsl"]
    assert z.shape == (len(labels), 6)
    counts = torch.bincount(labels, minlength=len(datamodule.semantics))
    assert (counts[model.seen_classes] == SOFTMAX["seen_per_class"]).all()
    assert (counts[model.unseen_classes] == SOFTMAX["unseen_per_class"]).all()
    z, labels = sets["zsl"]
    counts = torch.bincount(labels, minlength=len(datamodule.semantics))
    assert (counts[model.unseen_classes] == SOFTMAX["zsl_unseen_per_class"]).all()
    assert counts[model.seen_classes].sum() == 0
    # more codes per class than images: each image used ⌊n/k⌋ or ⌈n/k⌉ times
    many = make(datamodule, softmax={"seen_per_class": 70})
    rows = cada_vae.per_class_rows(y, 70)
    uses = torch.bincount(rows, minlength=len(y))
    assert uses.max() - uses.min() <= 1 and len(rows) == 70 * len(y.unique())
    assert many.latent_training_sets(x, y)["gzsl"][0].shape[0] == 70 * 5 + SOFTMAX["unseen_per_class"] * 3


def test_fit_evaluate_and_checkpoint_round_trip(datamodule, tmp_path):
    L.seed_everything(0)
    model = make(datamodule)
    trainer = L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    before = model.image_encoder.mu.weight.clone()
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 12
    assert not torch.equal(before, model.image_encoder.mu.weight)
    metrics = evaluate_model(model, datamodule).metrics
    for key in ("softmax/zsl/T1", "softmax/gzsl/H", "zsl/T1", "gzsl/U", "gzsl/S", "gzsl/H"):
        assert math.isfinite(metrics[key]), key
    again = evaluate_model(model, datamodule).metrics  # its own seeded stream: the same numbers
    assert again["softmax/gzsl/H"] == metrics["softmax/gzsl/H"]

    path = tmp_path / "cada.ckpt"
    trainer.save_checkpoint(path)
    loaded = CADAVAE.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert loaded.hparams.softmax == model.hparams.softmax and loaded.hparams.latent_dim == 6
    x, _ = datamodule.split("test_unseen")
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(x)[0], model.image_encoder(x)[0])
        assert torch.equal(loaded.attribute_encoder(loaded.class_semantics)[0],
                           model.attribute_encoder(model.class_semantics)[0])
    assert torch.equal(loaded.seen_mask, model.seen_mask)
