"BK-Core against the dense inverse, stability, exact gradients, MoE routing and the causality of the LM."
import pytest
import torch
from resnet_bk_compress.model import (ResNetBKConfig, ResNetBKLM, MoE, BKCore, causal_resolvent, causal_resolvent_loop,
                                      two_sided_resolvent, dense_resolvent, logit_change, num_params)

def random_tridiagonal(B, N, seed=0, dtype=torch.float64):
    "Random diagonal around H0's -2 and random positive off-diagonals (b != c), so the index of each matters."
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, N, generator=g, dtype=dtype) * 1.5 - 2
    b = torch.rand(B, N - 1, generator=g, dtype=dtype) + 0.5
    c = torch.rand(B, N - 1, generator=g, dtype=dtype) + 0.5
    return a, b, c

@pytest.mark.parametrize('N', [8, 128, 1024])
def test_causal_matches_dense_inverse(N):
    a, b, c = random_tridiagonal(2, N, seed=N)
    pos = None if N <= 128 else sorted({*range(0, N, 97), N - 1})
    ref = dense_resolvent(a, b, c, causal=True, positions=pos)
    cols = slice(None) if pos is None else pos
    for dtype, tol in ((torch.complex128, 1e-10), (torch.complex64, 2e-5)):
        G = causal_resolvent(a if dtype == torch.complex128 else a.float(), b if dtype == torch.complex128 else b.float(),
                             c if dtype == torch.complex128 else c.float(), dtype=dtype)
        err = ((G.to(torch.complex128)[:, cols] - ref[:, cols]).abs() / ref[:, cols].abs()).max().item()
        assert err < tol, (dtype, err)

@pytest.mark.parametrize('N', [8, 128, 1024])
def test_two_sided_matches_dense_inverse(N):
    a, b, c = random_tridiagonal(2, N, seed=N + 1)
    ref = dense_resolvent(a, b, c)
    G = two_sided_resolvent(a, b, c, dtype=torch.complex128)
    assert ((G - ref).abs() / ref.abs()).max().item() < 1e-10

def test_off_diagonal_index_matters():
    "Swapping b and c changes nothing only when they are symmetric; a wrong index would still pass on H0."
    a, b, c = random_tridiagonal(1, 16, seed=3)
    ref = dense_resolvent(a, b, c, causal=True)
    G = causal_resolvent(a, b, c, dtype=torch.complex128)
    shifted = causal_resolvent(a, b.roll(1, -1), c.roll(1, -1), dtype=torch.complex128)
    assert torch.allclose(G, ref, atol=1e-12) and not torch.allclose(shifted, ref, atol=1e-3)

def test_loop_matches_scan():
    a, b, c = random_tridiagonal(3, 300, seed=5)
    torch.testing.assert_close(causal_resolvent(a, b, c, dtype=torch.complex128),
                               causal_resolvent_loop(a, b, c, dtype=torch.complex128), rtol=1e-12, atol=1e-12)

def test_stable_at_4096():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 4096, generator=g) - 2
    ref = causal_resolvent_loop(a.double(), dtype=torch.complex128)
    G = causal_resolvent(a)  # complex64
    assert G.dtype == torch.complex64 and torch.isfinite(torch.view_as_real(G)).all()
    assert ((G.to(torch.complex128) - ref).abs() / ref.abs()).max() < 2e-6
    S = two_sided_resolvent(a)
    S_ref = two_sided_resolvent(a.double(), dtype=torch.complex128)
    assert torch.isfinite(torch.view_as_real(S)).all()
    assert ((S.to(torch.complex128) - S_ref).abs() / S_ref.abs()).max() < 2e-6
    dense = dense_resolvent(a[:1].double())  # one full 4096 x 4096 inverse
    assert ((S_ref[:1] - dense).abs() / dense.abs()).max() < 1e-9

def test_gradcheck_complex128():
    a, b, c = (t.requires_grad_() for t in random_tridiagonal(2, 9, seed=7))
    for f in (causal_resolvent, two_sided_resolvent):
        assert torch.autograd.gradcheck(lambda a, b, c: f(a, b, c, dtype=torch.complex128), (a, b, c))

def test_bkcore_gradient_reaches_potential():
    v = torch.randn(2, 32, requires_grad=True)
    BKCore()(v).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0

def test_moe_routing_and_counts():
    moe = MoE(8, num_experts=4, top_k=1, dropout=0.).eval()
    x = torch.randn(5, 7, 8)
    y = moe(x)
    assert y.shape == x.shape and moe.token_counts.sum() == 35
    probs, idx, w = moe.route(x.reshape(-1, 8))
    ref = torch.stack([moe.experts[i](t) * probs[j, i] for j, (t, i) in enumerate(zip(x.reshape(-1, 8), idx[:, 0].tolist()))])
    torch.testing.assert_close(y.reshape(-1, 8), ref, rtol=1e-5, atol=1e-6)
    moe.reset_usage(); assert moe.token_counts.sum() == 0

def test_router_learns():
    moe = MoE(8, num_experts=4, top_k=1, dropout=0.)
    (moe(torch.randn(16, 8)).pow(2).sum() + moe.aux_loss).backward()
    assert moe.gate.weight.grad.abs().sum() > 0

def test_dense_mode_is_softmax_mixture():
    moe = MoE(6, num_experts=3, top_k=3, dropout=0.).eval()
    x = torch.randn(4, 6)
    probs, _, _ = moe.route(x)
    ref = sum(moe.experts[i](x) * probs[:, i:i + 1] for i in range(3))
    torch.testing.assert_close(moe(x), ref, rtol=1e-5, atol=1e-6)
    assert moe.token_counts.sum() == 12

def test_balancing_loss_values():
    moe = MoE(4, num_experts=4, top_k=1, dropout=0.)
    with torch.no_grad(): moe.gate.weight.zero_(); moe.gate.bias.copy_(torch.tensor([10., 0, 0, 0]))
    moe(torch.randn(32, 4))
    assert abs(moe.aux_loss.item() - 4.0) < 1e-2  # collapsed router: E * 1 * ~1

def test_reference_sizes():
    assert abs(num_params(ResNetBKLM(ResNetBKConfig())) / 1e6 - 4.15) < 0.01
    assert abs(num_params(ResNetBKLM(ResNetBKConfig(vocab_size=33278))) / 1e6 - 4.57) < 0.01

@pytest.mark.parametrize('t', [1, 17, 30])
def test_lm_is_causal(t):
    cfg = ResNetBKConfig(vocab_size=40, d_model=16, n_layers=3, n_seq=32, num_experts=3, dropout=0.)
    lm = ResNetBKLM(cfg).eval()
    for blk in lm.blocks: torch.nn.init.normal_(blk.v_proj.weight, std=1.)
    idx = torch.randint(0, 40, (3, 32))
    d = logit_change(lm, idx, t)
    assert d[:t].max() <= 1e-6, d[:t].max()
    assert d[t] > 0

def test_two_sided_lm_is_not_causal():
    cfg = ResNetBKConfig(vocab_size=40, d_model=16, n_layers=2, n_seq=32, dropout=0., causal=False)
    lm = ResNetBKLM(cfg).eval()
    for blk in lm.blocks: torch.nn.init.normal_(blk.v_proj.weight, std=1.)
    d = logit_change(lm, torch.randint(0, 40, (1, 32)), 20)
    assert d[19] > 1e-6

@pytest.mark.parametrize('kw,msg', [(dict(top_k=0), 'top_k must be a positive integer'), (dict(dropout=1.0), 'dropout'),
                                    (dict(z=1 - 1j), 'positive imaginary part'), (dict(bk_dtype='complex32'), 'bk_dtype'),
                                    (dict(n_seq=2.5), 'n_seq must be a positive integer'),
                                    (dict(feature_clamp=3.402823466385289e+38), r'feature_clamp must be a number in \(0, 3.403e\+38\]')])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg): ResNetBKConfig(**kw)
