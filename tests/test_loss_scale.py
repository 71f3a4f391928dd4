"""The loss terms keep their scale at any feature dimension D and any number of classes C with
scaling=normalised (the default), so one set of weights means the same from the 4-d toy to the
2048-d benchmarks; the paper's literal sums do not (which is why those weights failed at D = 2048)."""

import pytest
import torch

from izf.data import ZSLDataModule
from izf.model import losses
from izf.training.module import IZF

LOSS = {"semantic": 10.0, "negative": 1.0, "centralising": 1.0, "mmd_scales": [0.1, 0.2, 1.5, 3.0, 5.0, 10.0],
        "mmd_unbiased": False, "negative_margin": None}
NORMALISED = {"scaling": "normalised", "mmd_bandwidth": "median", "centre": "dataset"}
PAPER = {"scaling": "paper", "mmd_bandwidth": "fixed", "centre": "batch"}
SOFTMAX = {"n_gen": 10, "epochs": 1, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "generation_batch": 100}


def terms_at_init(feature_dim: int, seen: int, loss: dict) -> dict[str, float]:
    """Each loss term of a fresh (near-identity) flow on one batch of synthetic data, averaged over
    four batches and seeds so that sampling noise does not decide the comparison."""
    dm = ZSLDataModule(name="synthetic", source="synthetic", batch_size=256, batches_per_epoch=4,
                       generator={"seen": seen, "unseen": 4, "semantic_dim": 8, "feature_dim": feature_dim,
                                  "per_class": max(20, 1024 // seen)})
    dm.setup()
    totals: dict[str, float] = {}
    for seed, (x, y) in enumerate(dm.train_dataloader()):
        torch.manual_seed(seed)
        model = IZF(num_classes=len(dm.semantics), feature_dim=feature_dim, semantic_dim=8,
                    flow={"blocks": 2, "hidden": 32}, loss={**LOSS, **loss}, optimizer={"lr": 1e-3}, softmax=SOFTMAX)
        model.set_classes(dm.semantics, dm.seen_classes, dm.class_feature_means())
        with torch.no_grad():
            for name, value in model.loss_terms(x, y).items():
                totals[name] = totals.get(name, 0.0) + float(value) / 4
    return totals


@pytest.fixture(scope="module")
def normalised():
    return {(d, c): terms_at_init(d, c, NORMALISED) for d, c in ((32, 6), (1024, 6), (32, 48))}


@pytest.mark.parametrize("term", ["ml", "semantic", "negative", "centralising"])
def test_normalised_terms_keep_their_scale_across_dimension_and_classes(normalised, term):
    small, wide, many = normalised[(32, 6)][term], normalised[(1024, 6)][term], normalised[(32, 48)][term]
    for other in (wide, many):  # 32× the dimension, 8× the classes
        assert abs(other) <= 2.5 * abs(small) + 0.05, (term, small, wide, many)
        assert abs(small) <= 2.5 * abs(other) + 0.05, (term, small, wide, many)


def test_paper_scaling_grows_with_dimension_and_classes():
    # The same check fails for the paper's literal sums: this is what the normalisation fixes.
    small, wide, many = (terms_at_init(d, c, PAPER)["centralising"] for d, c in ((32, 6), (1024, 6), (32, 48)))
    assert wide > 3 * small and many > 3 * small


def test_fixed_kernel_scales_lose_the_signal_at_high_dimension():
    # The same per-dimension shift between two samples: with the paper's fixed scales MMD² all but
    # vanishes at D = 2048; relative to the median distance it stays put.
    def shifted(d):
        g = torch.Generator().manual_seed(0)
        return torch.rand(128, d, generator=g), torch.rand(128, d, generator=g) + 0.3
    scales = LOSS["mmd_scales"]
    low, high = shifted(16), shifted(2048)
    fixed = [losses.mmd2(*pair, scales).item() for pair in (low, high)]
    median = [losses.mmd2(*pair, scales, bandwidth="median").item() for pair in (low, high)]
    assert fixed[1] < 0.2 * fixed[0]
    assert 0.8 < median[1] / median[0] < 1.25


def test_median_bandwidth_is_scale_free():
    x, y = torch.rand(40, 8), torch.rand(30, 8) + 0.2
    a = losses.mmd2(x, y, [0.5, 2.0], bandwidth="median")
    b = losses.mmd2(7.0 * x, 7.0 * y, [0.5, 2.0], bandwidth="median")
    assert a.item() == pytest.approx(b.item(), rel=1e-4)
    assert 0 < a.item() <= 2.0  # kernels averaged over the scales: MMD² ≤ 2


def test_normalised_centralising_loss_by_hand():
    # Two classes present, off by 3 and 4 in D = 4 (√D = 2), one absent: (3/2 + 4/2) / 2 = 1.75.
    means = torch.zeros(3, 4)
    prototypes = torch.tensor([[3.0, 0, 0, 0], [0, 4.0, 0, 0], [100.0, 0, 0, 0]])
    present = torch.tensor([True, True, False])
    assert losses.centralising_loss(prototypes, means, present, normalised=True).item() == pytest.approx(1.75)
    assert losses.centralising_loss(prototypes[:2], means[:2], normalised=True).item() == pytest.approx(1.75)
