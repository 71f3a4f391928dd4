import pytest
import torch

from izf.model import losses


def test_likelihood_loss_by_hand():
    z = torch.tensor([[1.0, 2.0], [0.0, 2.0]])  # ½‖z‖² = 2.5 and 2.0 -> mean 2.25
    log_det = torch.tensor([1.0, 3.0])  # mean 2
    assert losses.likelihood_loss(z, log_det, dim=5).item() == pytest.approx((2.25 - 2.0) / 5)


def test_semantic_loss_by_hand():
    c_hat = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    c = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert losses.semantic_loss(c_hat, c).item() == pytest.approx((1 + 0 + 0 + 4) / 4)


def test_mmd_single_scale_by_hand():
    # 1-D points x = {0}, y = {1}, one scale s = 1: k(a,a) = 1, k(0,1) = 1/2.
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    assert losses.mmd2(x, y, [1.0]).item() == pytest.approx(1 + 1 - 2 * 0.5)
    # two scales add kernels: s=1 and s=3 -> k(0,1) = 1/2 + 3/4, k(a,a) = 2
    assert losses.mmd2(x, y, [1.0, 3.0]).item() == pytest.approx(2 + 2 - 2 * 1.25)


def test_mmd_biased_and_unbiased_by_hand():
    x = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[1.0], [1.0]])
    k = lambda d2: 1.0 / (1.0 + d2)  # noqa: E731
    kxx_full = (2 * k(0) + 2 * k(4)) / 4
    kyy_full = 1.0
    kxy = k(1)
    assert losses.mmd2(x, y, [1.0]).item() == pytest.approx(kxx_full + kyy_full - 2 * kxy)
    assert losses.mmd2(x, y, [1.0], unbiased=True).item() == pytest.approx(k(4) + 1.0 - 2 * kxy)


def test_mmd_is_zero_for_identical_samples_and_grows_with_distance():
    x = torch.randn(32, 4)
    assert losses.mmd2(x, x.clone(), [0.1, 1.0, 10.0]).abs().item() < 1e-5
    near = losses.mmd2(x, x + 0.1, [0.1, 1.0, 10.0])
    far = losses.mmd2(x, x + 3.0, [0.1, 1.0, 10.0])
    assert 0 < near < far
    assert losses.negative_sample_loss(x, x + 3.0, [0.1, 1.0, 10.0]) == -far


def test_centralising_loss_and_class_means_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([3, 3, 1])
    means, present = losses.class_means(x, y, torch.tensor([0, 1, 3]))  # class 0: no samples
    assert present.tolist() == [False, True, True]
    assert means[1:].tolist() == [[5.0, 5.0], [1.0, 0.0]]
    prototypes = torch.tensor([[9.0, 9.0], [5.0, 8.0], [1.0, 0.0]])  # class 0 far off but absent
    assert losses.centralising_loss(prototypes, means, present).item() == pytest.approx(3.0)
    prototypes = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 4.0]])  # off by 5 and by 5
    assert losses.centralising_loss(prototypes, means, present).item() == pytest.approx(10.0)
    assert losses.centralising_loss(prototypes[1:], means[1:]).item() == pytest.approx(10.0)
