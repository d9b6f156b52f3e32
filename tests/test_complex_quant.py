"Complex quantization: round trips, gradients for complex inputs, errors, files, and the quantized BK-Core in a model."
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st
from resnet_bk_compress.model import BKCore, ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.data import synthetic_corpus, train_batches
from resnet_bk_compress.files import save_model, load_model, read_model_file
from resnet_bk_compress.train import evaluate
from resnet_bk_compress.quant import (PerTensor, PerChannel, calibrating, quantize_, Int8Config,
                                      QuantConfig, qrange)
from resnet_bk_compress.complex_quant import ComplexQuantizer, PerChannelQuantizedBKCore, ComplexInt8Config, SCHEMES
from resnet_bk_compress.quant import sqnr
from conftest import fresh_process_logits

GRANS = [PerTensor(), PerChannel(-1), PerChannel(0), PerChannel(1)]

def _calibrated(x, **kw):
    q = ComplexQuantizer(**kw)
    with calibrating(nn.Sequential(q)): q(x)
    return q.eval()

@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=3), seed=st.integers(0, 2**20), scheme=st.sampled_from(SCHEMES),
       gran=st.sampled_from(GRANS), bits=st.sampled_from([4, 8]), amp=st.floats(1e-3, 1e3))
def test_round_trip_and_fake_quant_agree(shape, seed, scheme, gran, bits, amp):
    g = torch.Generator().manual_seed(seed)
    x = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) * amp
    q = _calibrated(x, bits=bits, granularity=gran, scheme=scheme)
    qa, qb = q.quantize(x)
    qmin, qmax = qrange(bits, q.symmetric)
    assert qa.dtype == qb.dtype == torch.int8 and qa.shape == qb.shape == x.shape
    assert qa.min() >= qmin and qa.max() <= qmax and qb.min() >= qmin and qb.max() <= qmax
    xq = q.dequantize(qa, qb)
    assert xq.dtype == torch.complex64 and torch.equal(q(x), xq)
    if scheme != 'polar':  # calibrated on x itself: nothing is clipped, every component within half a step
        s = q.scale if isinstance(gran, PerTensor) else q.scale.expand(2, *x.shape)
        if isinstance(gran, PerTensor): s = s.reshape(2, *[1] * x.dim())
        assert ((xq.real - x.real).abs() <= s[0] / 2 * (1 + 1e-5) + 1e-30).all()
        assert ((xq.imag - x.imag).abs() <= s[1] / 2 * (1 + 1e-5) + 1e-30).all()

def test_sqnr_grows_about_6db_per_bit():
    x = torch.randn(64, 128, dtype=torch.complex64)
    s4, s8 = (sqnr(x, _calibrated(x, bits=b)(x)) for b in (4, 8))
    assert 20 < s8 - s4 < 28

@pytest.mark.parametrize('scheme', SCHEMES)
def test_straight_through_gradient_reaches_both_parts(scheme):
    torch.manual_seed(0)
    x0 = BKCore().resolvent((torch.randn(8, 32) * 1.5).clamp(-3, 3))
    q = _calibrated(x0, scheme=scheme)
    x = x0.clone().requires_grad_()
    w = torch.randn_like(x0)
    (q(x) * w).real.sum().backward()
    assert torch.isfinite(torch.view_as_real(x.grad)).all()
    # for a smooth loss the estimator is the identity inside the grid: compare with the gradient of the loss at x itself
    ref = x0.clone().requires_grad_(); (ref * w).real.sum().backward()
    tol = 1e-5 if scheme != 'polar' else 0.05  # polar: the chain rule runs through |x| and angle at the rounded point
    assert (x.grad - ref.grad).abs().max() < tol
    assert x.grad.real.abs().sum() > 0 and x.grad.imag.abs().sum() > 0

def test_clipped_components_get_no_gradient():
    x0 = torch.complex(torch.rand(4, 8), torch.rand(4, 8))
    q = _calibrated(x0)
    x = (x0 + 2).requires_grad_()  # real parts beyond every calibrated maximum
    q(x).real.sum().backward()
    assert x.grad.real.abs().max() == 0

def test_errors():
    x = torch.randn(2, 8, dtype=torch.complex64)
    q = _calibrated(x)
    with pytest.raises(TypeError, match='expects a complex tensor, got torch.float32'): q(x.real)
    with pytest.raises(TypeError, match='expects a complex tensor'): q.quantize(x.real)
    with pytest.raises(TypeError, match='expects a complex tensor'): _calibrated(x.real)
    with pytest.raises(RuntimeError, match='never calibrated'): ComplexQuantizer()(x)
    with pytest.raises(RuntimeError, match='never calibrated'): ComplexQuantizer().quantize(x)
    bad = x.clone(); bad[0, 1] = complex(float('nan'), 0)
    with pytest.raises(ValueError, match='NaN/inf'): q(bad)
    with pytest.raises(ValueError, match='NaN/inf'): _calibrated(bad)
    with pytest.raises(ValueError, match='channel axis 2 does not exist'): _calibrated(x, granularity=PerChannel(2))
    with pytest.raises(ValueError, match='calibrated on 8'): q(torch.randn(2, 9, dtype=torch.complex64))
    with pytest.raises(ValueError, match='bits must be'): ComplexQuantizer(bits=9)
    with pytest.raises(ValueError, match="'polar' is always asymmetric"): ComplexQuantizer(scheme='polar', symmetric=True)
    with pytest.raises(ValueError, match='observer must be one of'): ComplexQuantizer(observer='histogram')

def test_shorter_windows_use_the_first_scales():
    x = torch.randn(4, 16, dtype=torch.complex64)
    q = _calibrated(x)
    assert torch.equal(q(x[:, :5]), q(x)[:, :5])

def test_quantizer_state_survives_a_file(tmp_path):
    torch.manual_seed(0)
    syn = synthetic_corpus(vocab_size=100, n_train=2000, n_eval=200)
    m = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=1, n_seq=16, num_experts=2))
    G = m.blocks[0].bk.resolvent(torch.randn(3, 16))
    m.register_buffer('G', G)  # a complex tensor in a state dict
    header, tensors = read_model_file(save_model(m, tmp_path / 'c.safetensors', syn.vocab))
    assert tensors['G'].dtype == torch.complex64 and torch.equal(tensors['G'], G)

@pytest.fixture(scope='module')
def small():
    torch.manual_seed(0)
    syn = synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)
    m = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=2, n_seq=32, num_experts=2)).eval()
    return syn, m

def _prepared(syn, m, cfg):
    q = ResNetBKLM(m.cfg); q.load_state_dict(m.state_dict()); quantize_(q, cfg); q.eval()
    with calibrating(q), torch.no_grad():
        for x, _ in list(train_batches(syn.train, 32, 8, seed=1))[:4]: q(x)
    return q

@pytest.mark.parametrize('scheme', SCHEMES)
def test_model_flow_convert_save_load_in_fresh_process(small, scheme, tmp_path):
    syn, m = small
    cfg = ComplexInt8Config(bk_scheme=scheme)
    q = _prepared(syn, m, cfg)
    assert all(isinstance(b.bk, PerChannelQuantizedBKCore) for b in q.blocks)
    x = syn.test[:32][None]
    with torch.no_grad(): fake = q(x)
    quantize_(q, cfg, 'convert')
    with torch.no_grad(): real = q(x)
    assert torch.allclose(real, fake, atol=1e-4)
    f = save_model(q, tmp_path / 'q.safetensors', syn.vocab)
    got = fresh_process_logits('resnet_bk_compress.files.load_model', f, x, tmp_path,
                               check="assert 'resnet_bk_compress.complex_quant' in sys.modules; ")
    assert torch.equal(got, real)
    # the same weights at other addresses: the batched GEMM may sum in another order (float32 noise, ~1e-6 measured)
    assert evaluate(q, syn.test)['ppl'] == pytest.approx(evaluate(load_model(f)[0], syn.test)['ppl'], rel=1e-5)

def test_qat_trains_through_the_complex_quantizer(small):
    syn, m = small
    q = _prepared(syn, m, ComplexInt8Config(linear=False, embedding=False))
    q.train()
    x, y = next(iter(train_batches(syn.train, 32, 8, seed=3)))
    torch.nn.functional.cross_entropy(q(x).flatten(0, 1), y.flatten()).backward()
    assert q.blocks[0].v_proj.weight.grad.abs().sum() > 0  # the gradient crossed the quantized resolvent

def test_config_round_trip_and_validation():
    cfg = ComplexInt8Config(bk_bits=4, bk_granularity=PerTensor(), bk_scheme='polar')
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match='scheme must be one of'): ComplexInt8Config(bk_scheme='cartesian')
    with pytest.raises(ValueError, match='leave bk_core=True'): ComplexInt8Config(bk_core=False)
    with pytest.raises(ValueError, match='already quantized'): quantize_(quantize_(ResNetBKLM(ResNetBKConfig(vocab_size=50, d_model=8, n_layers=1, n_seq=8)), cfg), cfg)
