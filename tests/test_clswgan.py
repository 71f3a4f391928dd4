"""The f-CLSWGAN baseline: its losses on hand cases, its networks, the frozen seen classifier, the
critic/generator schedule under a real Trainer, evaluation and the checkpoint round trip."""

from unittest import mock

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from izf.baselines.clswgan import (
    CLSWGAN,
    ConditionalCritic,
    Generator,
    classification_loss,
    critic_loss,
    generator_loss,
    gradient_penalty,
)
from izf.data import ZSLDataModule
from izf.training.evaluate import evaluate_model

SMALL_DATA = {"seen": 5, "unseen": 3, "semantic_dim": 4, "feature_dim": 12, "per_class": 30}
SOFTMAX = {"n_gen": 40, "epochs": 3, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "balanced": False,
           "temperature": 1.0, "generation_batch": 100, "seed": 0}


def make(datamodule, critic_steps=5, **wgan):
    return CLSWGAN(num_classes=len(datamodule.semantics), feature_dim=datamodule.features.shape[1],
                   semantic_dim=datamodule.semantics.shape[1],
                   networks={"generator_hidden": 32, "critic_hidden": 32, "noise_dim": None, "init_std": 0.02},
                   wgan={"critic_steps": critic_steps, "gp_weight": 10.0, "cls_weight": 0.01, **wgan},
                   optimizer={"lr": 1e-4, "betas": [0.5, 0.999]},
                   seen_classifier={"epochs": 20, "lr": 1e-2, "batch_size": 50, "seed": 0}, softmax=SOFTMAX)


def trainer(max_steps, **kwargs):
    return L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


@pytest.fixture
def datamodule():
    dm = ZSLDataModule(name="synthetic", source="synthetic", generator=SMALL_DATA, batch_size=32, batches_per_epoch=10)
    dm.setup()
    return dm


# ---- the losses on hand cases ----------------------------------------------------------------------------
def test_gradient_penalty_of_a_linear_critic_is_weight_times_squared_norm_gap():
    # D(x, a) = w·x has gradient w everywhere, whatever α: penalty = λ(‖w‖ − 1)².
    w = torch.tensor([3.0, 4.0, 0.0])  # ‖w‖ = 5
    real, fake, a = torch.rand(6, 3), torch.rand(6, 3), torch.rand(6, 2)
    penalty = gradient_penalty(lambda x, _: x @ w[:, None], real, fake, a, weight=10.0)
    assert penalty.item() == pytest.approx(10.0 * (5.0 - 1.0) ** 2)
    unit = torch.tensor([0.6, 0.8, 0.0])  # a 1-Lipschitz critic is not penalised
    unit_penalty = gradient_penalty(lambda x, _: x @ unit[:, None], real, fake, a, weight=10.0)
    assert unit_penalty.item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_penalty_is_taken_at_the_interpolates_and_reaches_the_critic_weights():
    # D(x) = ½‖x‖²: ∇ = x̃ = α x + (1 − α) x̂; with α = 1 the point is the real row.
    real, fake = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    scale = torch.tensor(1.0, requires_grad=True)
    penalty = gradient_penalty(lambda x, _: scale * 0.5 * x.pow(2).sum(1, keepdim=True), real, fake,
                               torch.zeros(1, 1), weight=1.0, alpha=torch.ones(1, 1))
    assert penalty.item() == pytest.approx((2.0 - 1.0) ** 2)
    (grad,) = torch.autograd.grad(penalty, scale)  # d/ds (2s − 1)² = 4(2s − 1) at s = 1
    assert grad.item() == pytest.approx(4.0)


def test_critic_and_generator_loss_signs():
    d_real, d_fake, penalty = torch.tensor([3.0, 5.0]), torch.tensor([1.0, -1.0]), torch.tensor(0.5)
    # The critic minimises E[D(fake)] − E[D(real)] + GP: scoring real above fake lowers it.
    assert critic_loss(d_real, d_fake, penalty).item() == pytest.approx(0.0 - 4.0 + 0.5)
    assert critic_loss(d_fake, d_real, penalty).item() > critic_loss(d_real, d_fake, penalty).item()
    # The generator minimises −E[D(fake)]: a higher critic score of its output lowers it.
    assert generator_loss(d_fake).item() == pytest.approx(0.0)
    assert generator_loss(d_real).item() == pytest.approx(-4.0)


def test_classification_loss_is_the_cross_entropy_of_the_frozen_classifier():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3).requires_grad_(False)
    fake = torch.randn(8, 5, requires_grad=True)
    target = torch.randint(3, (8,))
    loss = classification_loss(linear, fake, target)
    expected = -torch.log_softmax(fake @ linear.weight.T + linear.bias, dim=1)[torch.arange(8), target].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0 and linear.weight.grad is None


# ---- the networks ------------------------------------------------------------------------------------------
def test_networks_shapes_and_non_negative_generated_features():
    generator, critic = Generator(4, 6, 10, hidden=16), ConditionalCritic(10, 6, hidden=16)
    z, a = torch.randn(7, 4) * 10, torch.rand(7, 6)
    x = generator(z, a)
    assert x.shape == (7, 10) and (x >= 0).all()  # ReLU output, like pooled ResNet features
    assert critic(x, a).shape == (7, 1)
    first_layer = critic.net[0]  # the reference's initialisation: N(0, 0.02²) weights, zero biases
    assert first_layer.weight.std().item() == pytest.approx(0.02, rel=0.1) and first_layer.bias.abs().sum() == 0


def test_generate_uses_the_class_attributes_and_temperature(datamodule):
    model = make(datamodule)
    model.set_classes(datamodule.semantics, datamodule.seen_classes)
    classes = model.unseen_classes.repeat(3)
    assert model.noise_dim == datamodule.semantics.shape[1]  # z has the attribute dimension (paper)
    with torch.no_grad():
        x = model.generate(classes)
        prototype = model.generate(classes, temperature=0.0)  # z = 0: the same row for equal classes
    assert x.shape == (len(classes), datamodule.features.shape[1]) and (x >= 0).all()
    first, second = prototype.split(len(model.unseen_classes))[:2]
    assert torch.equal(first, second)


def test_seen_classifier_is_fitted_deterministically_on_seen_columns_and_stays_frozen(datamodule):
    model = make(datamodule)
    model.set_classes(datamodule.semantics, datamodule.seen_classes)
    x, y = datamodule.split("trainval")
    torch.manual_seed(1)
    model.fit_seen_classifier(x, y)
    other = make(datamodule)
    other.set_classes(datamodule.semantics, datamodule.seen_classes)
    torch.manual_seed(2)  # its own seeded stream: the global state does not matter
    other.fit_seen_classifier(x, y)
    assert torch.equal(model.seen_classifier.weight, other.seen_classifier.weight)
    assert model.seen_classifier_fitted and not any(p.requires_grad for p in model.seen_classifier.parameters())
    assert model.seen_classifier.weight[model.unseen_classes].abs().sum() == 0  # a seen-class classifier
    accuracy = (model.seen_logits(x).argmax(1) == torch.searchsorted(model.seen_classes, y)).float().mean()
    assert accuracy > 0.5  # it has learnt the seen classes (chance: 0.2; a long fit reaches ≈ 0.87)
    # A generator step sends gradients into the generator only, through the frozen classifier.
    model.zero_grad()
    terms = model.generator_step(y[:16], model.class_semantics[y[:16]])
    (0.01 * terms["classification"]).backward()
    assert all(p.grad is None for p in model.seen_classifier.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


# ---- training under a Trainer --------------------------------------------------------------------------------
def adam_steps(optimizer, module):
    return int(optimizer.state[next(module.parameters())]["step"])


@pytest.mark.parametrize("max_steps, critic_updates, generator_updates", [(12, 10, 2), (14, 12, 2)])
def test_max_steps_counts_optimiser_updates_in_cycles_of_five_critic_and_one_generator(
        datamodule, max_steps, critic_updates, generator_updates):
    L.seed_everything(0)
    model = make(datamodule)
    fit = trainer(max_steps)
    fit.fit(model, datamodule=datamodule)
    assert fit.global_step == max_steps == fit.fit_loop.epoch_loop.batch_progress.total.completed  # one batch a step
    generator_opt, critic_opt = fit.optimizers
    assert adam_steps(critic_opt, model.critic) == critic_updates
    assert adam_steps(generator_opt, model.generator) == generator_updates
    assert bool(model.seen_classifier_fitted)


def test_hyperparameter_names_do_not_clash_with_the_datamodule(datamodule):
    # With a logger, Lightning merges both sets of hparams and refuses a key with two values.
    assert not set(make(datamodule).hparams) & set(datamodule.hparams)


def test_gradient_clipping_is_refused_with_manual_optimisation(datamodule):
    # Why conf/_internal/budget/clswgan_*.yaml set trainer.gradient_clip_val: null.
    with pytest.raises(Exception, match="gradient clipping"):
        trainer(2, gradient_clip_val=10.0).fit(make(datamodule), datamodule=datamodule)


def _trained(steps):
    """(model, datamodule, trainer) after `steps` steps from seed 0 on the small data."""
    dm = ZSLDataModule(name="synthetic", source="synthetic", generator=SMALL_DATA, batch_size=32, batches_per_epoch=10)
    dm.setup()
    L.seed_everything(0)
    model = make(dm)
    fit = trainer(steps)
    fit.fit(model, datamodule=dm)
    return model, dm, fit


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model after 18 steps (3 generator iterations), saved as a checkpoint: shared by the tests below."""
    model, dm, fit = _trained(18)
    path = tmp_path_factory.mktemp("clswgan") / "model.ckpt"
    fit.save_checkpoint(path)
    return model, dm, path


def test_fit_then_evaluate_gives_finite_metrics(fitted):
    model, dm, _ = fitted
    metrics = evaluate_model(model, dm).metrics
    for key in ("softmax/zsl/T1", "softmax/gzsl/H", "zsl/T1", "gzsl/U", "gzsl/S", "gzsl/H"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_checkpoint_round_trip(fitted):
    model, _, path = fitted
    reloaded = CLSWGAN.load_from_checkpoint(path)  # weights_only loading: plain hparams
    assert torch.equal(reloaded.seen_mask, model.seen_mask) and bool(reloaded.seen_classifier_fitted)
    assert torch.equal(reloaded.seen_classifier.weight, model.seen_classifier.weight)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(5)
        a = model.generate(model.unseen_classes.repeat(4))
        torch.manual_seed(5)
        b = reloaded.generate(reloaded.unseen_classes.repeat(4))
    assert torch.equal(a, b)


def test_resumed_run_continues_the_cycle_and_keeps_its_seen_classifier(fitted, tmp_path):
    # 12 steps, a checkpoint, 6 more: the same weights as the fixture's uninterrupted 18 steps.
    model, _, _ = fitted
    _, dm, fit = _trained(12)
    fit.save_checkpoint(tmp_path / "step12.ckpt")
    L.seed_everything(7)
    resumed = make(dm)
    with mock.patch.object(CLSWGAN, "fit_seen_classifier", side_effect=AssertionError("refitted on resume")):
        trainer(18).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "step12.ckpt")
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
