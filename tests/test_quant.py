"INT8 primitives and observers: round trips, dtypes, safe scales, straight-through gradients, clear errors."
import pytest
import torch
from hypothesis import given, settings, strategies as st
from resnet_bk_compress.quant import (PerTensor, PerChannel, PerGroup, qrange, choose_qparams, quantize_tensor, dequantize_tensor,
                                      fake_quantize, group_view, MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver,
                                      MSEObserver)

GRANS = [PerTensor(), PerChannel(0), PerChannel(-1), PerGroup(3), PerGroup(128)]

def _step(scale, x, gran):
    if isinstance(gran, PerGroup):
        return torch.broadcast_to(scale, group_view(x, gran.group_size).shape).reshape(*x.shape[:-1], -1)[..., :x.shape[-1]]
    return torch.broadcast_to(scale, x.shape)

@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=3), seed=st.integers(0, 2**20), sym=st.booleans(),
       gran=st.sampled_from(GRANS), amp=st.floats(1e-4, 1e4), bits=st.sampled_from([4, 8]))
def test_round_trip_within_half_a_step(shape, seed, sym, gran, amp, bits):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * amp
    s, z = choose_qparams(x, bits, sym, gran)
    q = quantize_tensor(x, s, z, bits, sym, gran)
    qmin, qmax = qrange(bits, sym)
    assert q.dtype == torch.int8 and q.shape == x.shape and q.min() >= qmin and q.max() <= qmax
    err = (dequantize_tensor(q, s, z, gran) - x).abs()
    assert (err <= _step(s, x, gran) / 2 * (1 + 1e-5) + 1e-30).all()
    assert torch.equal(fake_quantize(x, s, z, bits, sym, gran), dequantize_tensor(q, s, z, gran))

@pytest.mark.parametrize('gran', GRANS)
@pytest.mark.parametrize('sym', [True, False])
def test_zero_and_constant_tensors_get_safe_scales(gran, sym):
    for x in (torch.zeros(4, 6), torch.full((4, 6), 3.5), torch.full((4, 6), -2.0)):
        s, z = choose_qparams(x, 8, sym, gran)
        assert torch.isfinite(s).all() and (s > 0).all()
        assert torch.allclose(dequantize_tensor(quantize_tensor(x, s, z, 8, sym, gran), s, z, gran), x, atol=1e-6)

def test_symmetric_scale_is_absmax_over_127():
    x = torch.tensor([-3.0, 1.0, 2.5])
    s, z = choose_qparams(x)
    assert s.item() == pytest.approx(3.0 / 127) and z.item() == 0

@pytest.mark.parametrize('gran', GRANS)
def test_straight_through_gradient(gran):
    x = (torch.randn(5, 7) * 3).requires_grad_()
    s, z = choose_qparams(x.detach() * 0.5, 8, True, gran)  # a grid that covers only half the range: some values clip
    fake_quantize(x, s, z, 8, True, gran).sum().backward()
    inside = (x.detach().abs() <= _step(s, x.detach(), gran) * 127.5)
    assert torch.equal(x.grad, inside.float())

def test_bad_inputs():
    with pytest.raises(ValueError, match='NaN/inf'): choose_qparams(torch.tensor([0., float('nan')]))
    with pytest.raises(ValueError, match='NaN/inf'): quantize_tensor(torch.tensor([float('inf')]), torch.tensor(1.), torch.tensor(0))
    with pytest.raises(ValueError, match='bits must be'): qrange(1)
    with pytest.raises(ValueError, match='group_size'): PerGroup(-2)
    with pytest.raises(TypeError, match='granularity must be'): choose_qparams(torch.ones(2), granularity='per_tensor')

@pytest.mark.parametrize('cls', [MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver])
def test_observer_contract(cls):
    o = cls()
    with pytest.raises(RuntimeError, match='has seen no data'): o.qparams()
    with pytest.raises(ValueError, match='NaN/inf'): o(torch.tensor([1., float('nan')]))
    assert not o.calibrated
    for i in range(3): o(torch.randn(64, 8) * (i + 1))
    s, z = o.qparams()
    assert s.numel() == 1 and (s > 0).all()
    o2 = cls(); o2.load_state_dict(o.state_dict())
    if cls is not MSEObserver: assert torch.equal(o2.qparams()[0], s)  # the sample an MSE observer keeps is not state

def test_per_channel_observers_and_mse_never_worse_than_min_max():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 4096, generator=g) * torch.logspace(-2, 0, 16)[:, None]
    w[3] = torch.distributions.StudentT(1.5).sample((4096,))  # one heavy-tailed channel
    mm, mse = MinMaxObserver(granularity=PerChannel(0)), MSEObserver(granularity=PerChannel(0))
    mm(w); mse(w)
    err = lambda o: (fake_quantize(w, *o.qparams(), 8, True, PerChannel(0)) - w).pow(2).mean(1)
    assert mm.qparams()[0].shape == (16, 1)
    assert (err(mse) <= err(mm) * (1 + 1e-6)).all() and err(mse).sum() < 0.99 * err(mm).sum()

def test_observer_argument_checks():
    with pytest.raises(ValueError, match='observers support PerTensor'): MinMaxObserver(granularity=PerGroup(4))
    with pytest.raises(ValueError, match='percentile'): PercentileObserver(percentile=20)
    with pytest.raises(ValueError, match='averaging_constant'): MovingAverageMinMaxObserver(averaging_constant=0)
