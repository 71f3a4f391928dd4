import math

import pytest
import torch
from torch import nn

from izf.model.flow import (
    ActNorm,
    DoubleAffineCoupling,
    InvertibleFlow,
    InvertibleLayer,
    LUMixing,
    Permutation,
    mlp_subnet,
    soft_clamp,
)
from tests.conftest import DEVICES


def _flow(dim, blocks=3, hidden=16, init_std=0.3):
    # A large init_std makes the flow far from identity, so the checks are not trivial.
    return InvertibleFlow(dim, blocks=blocks, hidden=hidden, clamp=2.0, init_std=init_std).double()


@pytest.mark.parametrize("dim", [2, 5, 8])
def test_inverse_recovers_input(dim):
    flow = _flow(dim)
    x = torch.randn(64, dim, dtype=torch.float64) * 2
    z, _ = flow(x)
    assert (z - x).abs().max() > 0.1  # the flow does something
    assert torch.allclose(flow.inverse(z), x, atol=1e-5, rtol=0)
    assert torch.allclose(flow(flow.inverse(x))[0], x, atol=1e-5, rtol=0)


def test_inverse_in_float32_at_benchmark_width():
    flow = InvertibleFlow(2048, blocks=10, hidden=64)
    x = torch.rand(16, 2048)
    assert (flow.inverse(flow(x)[0]) - x).abs().max() < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [3, 6])
def test_log_det_equals_autograd_jacobian(dim, device):
    flow = _flow(dim).to(device)
    for x in torch.randn(4, dim, dtype=torch.float64, device=device):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x)
        _, log_det = flow(x[None])
        assert torch.allclose(log_det[0], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)


def test_coupling_log_det_is_sum_of_clamped_log_scales():
    block = DoubleAffineCoupling(4, mlp_subnet(8), clamp=2.0).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=1.0)
    x = torch.randn(5, 4, dtype=torch.float64)
    y, log_det = block(x)
    s2 = soft_clamp(block.net2(x[:, 2:])[:, :2], 2.0)
    s1 = soft_clamp(block.net1(y[:, :2])[:, :2], 2.0)
    assert torch.allclose(log_det, s1.sum(1) + s2.sum(1))


def test_soft_clamp_bounds_and_near_identity():
    s = torch.tensor([-1e6, -1e-3, 0.0, 1e-3, 1e6])
    out = soft_clamp(s, 2.0)
    assert out.abs().max() < 2.0 and out[-1] > 1.99
    assert torch.allclose(out[1:4], s[1:4] * 2 / math.pi, atol=1e-8)  # slope 2/π at 0


def test_permutation_is_fixed_and_saved():
    a, b = (InvertibleFlow(6, blocks=2, hidden=4, permutation_seed=3) for _ in range(2))
    assert all(torch.equal(pa.perm, pb.perm) for pa, pb in zip(a.layers[::2], b.layers[::2]))
    assert "layers.0.perm" in a.state_dict()
    perm = Permutation(5)
    x = torch.randn(2, 5)
    assert torch.equal(perm.inverse(perm(x)[0]), x) and perm(x)[1].abs().sum() == 0


def test_near_identity_init():
    flow = InvertibleFlow(8, blocks=4, hidden=32, init_std=0.01)
    x = torch.randn(32, 8)
    z, log_det = flow(x)
    perm = torch.arange(8)
    for layer in flow.layers[::2]:
        perm = perm[layer.perm]
    assert (z - x[:, perm]).abs().mean() < 0.05 and log_det.abs().max() < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_keeps_inverse_and_log_det_within_stated_tolerance(device):
    # Stated tolerance for trainer.precision=bf16-mixed: f⁻¹(f(x)) within 2e-2 of x for [0, 1]
    # features, log|det J| within 1e-3 per dimension of its float32 value (docs/performance.md).
    flow = InvertibleFlow(256, blocks=10, hidden=128, init_std=0.05).to(device)
    x = torch.rand(64, 256, device=device)
    z32, log_det32 = flow(x)
    assert (z32 - x).abs().mean() > 0.1  # far from identity
    with torch.autocast(device, dtype=torch.bfloat16):
        z, log_det = flow(x)
        x_back = flow.inverse(z)
    assert z.dtype == log_det.dtype == x_back.dtype == torch.float32
    assert (x_back - x).abs().max() < 2e-2
    assert ((log_det - log_det32).abs() / 256).max() < 1e-3


@pytest.mark.parametrize("mixing,actnorm", [("lu", False), ("permutation", True), ("lu", True)])
def test_lu_mixing_and_actnorm_are_exact(mixing, actnorm):
    flow = InvertibleFlow(5, blocks=3, hidden=16, init_std=0.3, mixing=mixing, actnorm=actnorm).double()
    x = torch.randn(64, 5, dtype=torch.float64) * 3 + 1
    flow(x)  # ActNorm initialises from the first training batch
    if actnorm:
        first = flow.layers[0]
        assert torch.allclose(first(x)[0].mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-10)
        for p in first.parameters():  # not an identity any more: the checks below are not trivial
            assert p.abs().max() > 0.01
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-8)
    for row in x[:3]:
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], row)
        assert torch.allclose(flow(row[None])[1][0], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)


def test_actnorm_state_is_saved_and_unknown_mixing_is_refused():
    flow = InvertibleFlow(4, blocks=1, hidden=4, actnorm=True)
    flow(torch.rand(8, 4))
    fresh = InvertibleFlow(4, blocks=1, hidden=4, actnorm=True)
    fresh.load_state_dict(flow.state_dict())
    assert bool(fresh.layers[0].initialised) and torch.equal(fresh.layers[0].bias, flow.layers[0].bias)
    with pytest.raises(ValueError, match="mixing must be one of"):
        InvertibleFlow(4, blocks=1, hidden=4, mixing="shuffle")


def test_actnorm_initialised_from_a_sample_standardises_each_block_input_once():
    flow = InvertibleFlow(6, blocks=3, hidden=8, init_std=0.3, actnorm=True).double()
    sample = torch.rand(200, 6, dtype=torch.float64) * 5 + 2
    flow.initialise_actnorm(sample)
    h = sample
    for layer in flow.layers:
        if isinstance(layer, ActNorm):  # what reaches it, standardised
            out = layer(h)[0]
            assert torch.allclose(out.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-10)
            assert torch.allclose(out.std(0), torch.ones(6, dtype=torch.float64), atol=1e-10)
        h, _ = layer(h)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    flow.train()(torch.randn(16, 6, dtype=torch.float64))  # a first training batch no longer re-initialises
    flow.initialise_actnorm(torch.randn(16, 6, dtype=torch.float64))  # nor does a second sample
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


@pytest.mark.parametrize("layer", [Permutation(6), LUMixing(6), ActNorm(6),
                                   DoubleAffineCoupling(6, mlp_subnet(8), clamp=2.0)])
def test_every_layer_keeps_the_contract(layer):
    """forward -> (y, per-row log|det J|) equal to autograd's, inverse undoes forward."""
    assert isinstance(layer, InvertibleLayer)
    layer = layer.double()
    for p in layer.parameters():  # away from the identity, so the checks mean something
        nn.init.normal_(p, std=0.3)
    x = torch.randn(5, 6, dtype=torch.float64)
    y, log_det = layer(x)
    assert y.shape == x.shape and log_det.shape == (5,)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], x[0])
    assert torch.allclose(log_det[0], torch.linalg.slogdet(jacobian).logabsdet, atol=1e-10)


def test_a_custom_subnet_factory_builds_every_coupling():
    built = []

    def deeper(in_dim, out_dim):
        net = nn.Sequential(nn.Linear(in_dim, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, out_dim))
        built.append(net)
        return net
    flow = InvertibleFlow(5, blocks=2, subnet=deeper, init_std=0.3).double()
    assert len(built) == 4  # two subnets per coupling
    assert all(any(m is net for m in flow.modules()) for net in built)
    x = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(flow.inverse(flow(x)[0]), x, atol=1e-10)
