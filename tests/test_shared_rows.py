"""The shared-row losses (00b_train, 05_distill): for a head tied to a codebook table with one code a word, the losses computed from
S = n_dense + K scores must be today's losses over all V words, values and every gradient, for every kind of table and every loss
the student trains with: hard targets, cached top-k and live teachers, any temperature and weight, float and under QAT."""
import copy
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from resnet_bk_compress.data import synthetic_corpus, train_batches
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.train import dense_head_loss, evaluate, lm_loss, head_shared_rows
from resnet_bk_compress.tables import CodebookTable
from resnet_bk_compress.distill import DistillationObjective, TeacherTargets
from resnet_bk_compress.quant import quantize_, calibrating
from resnet_bk_compress.int4_moe import Int4MoEConfig
from conftest import train_small

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=300, n_train=12_000, n_eval=1_500)

@pytest.fixture(scope='module')
def teacher(syn): return train_small(syn, 10, bk_dtype='complex128').double()  # float64 throughout: the comparison is exact

def student(syn, n_dense: int, K: int, M: int = 1, seed: int = 0, double: bool = True) -> ResNetBKLM:
    "A random width-16 student tied to a random codebook table (biases random too, so that rows' groups differ)."
    torch.manual_seed(seed)
    m = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=1, n_seq=32, num_experts=2, tie_embeddings=True,
                                  dropout=0., bk_dtype='complex128' if double else 'complex64'))
    m.tok_emb = CodebookTable(len(syn.vocab), 16, n_dense, M, K)
    if double: m.double()
    with torch.no_grad():
        m.tok_emb.dense.normal_(0, .1); m.tok_emb.codebooks.normal_(0, .1); m.tok_emb.codes.random_(0, K); m.head.bias.normal_(0, 1)
    return m

def loss_and_grads(fn, model):
    model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

def assert_same(fast, full, tol=1e-5):
    (lf, gf), (ld, gd) = fast, full
    assert abs(lf - ld) <= tol * abs(ld), (lf, ld)
    assert gf.keys() == gd.keys()
    for k in gd:
        if gd[k].numel(): assert (gf[k] - gd[k]).abs().max() <= tol * max(gd[k].abs().max(), 1e-3), k

def both(fn, model):
    with dense_head_loss(): full = loss_and_grads(fn, model)
    return loss_and_grads(fn, model), full

SETTINGS = dict(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

@settings(**SETTINGS)
@given(n_dense=st.sampled_from([0, 7, 150, 301]), K=st.sampled_from([2, 16, 64]), T=st.sampled_from([0.5, 1., 2.]),
       alpha=st.sampled_from([0., 0.3, 1.]), k=st.sampled_from([1, 8, 64, 302]), live=st.booleans(), qat=st.booleans())
def test_distillation_loss_equals_the_dense_one(syn, teacher, n_dense, K, T, alpha, k, live, qat):
    m = student(syn, n_dense, K)
    if qat: m.tok_emb.prepare_quant(Int4MoEConfig(group_size=16, embedding_bits=4))  # fake-quantized rows and codewords, as in QAT
    cached = None if live else TeacherTargets(teacher, syn.train[:2_000], k=min(k, len(syn.vocab)), T=T, features=False)
    obj = DistillationObjective(m, teacher, alpha=alpha, T=T, beta=0., targets=cached)
    x, y = next(iter(train_batches(syn.train[:2_000], 32, 4, offset=0)))
    starts = torch.arange(4) * 32
    assert head_shared_rows(m.head, torch.zeros(1, 16)) is not None
    assert_same(*both(lambda: obj(x, y, starts)[0], m))

@pytest.mark.parametrize('n_dense,K', [(0, 16), (40, 16), (301, 8)])
def test_hard_loss_and_evaluation(syn, n_dense, K):
    m = student(syn, n_dense, K)
    x, y = next(iter(train_batches(syn.train, 32, 4)))
    assert_same(*both(lambda: lm_loss(m, x, y)[0], m))
    q = student(syn, n_dense, K, double=False); cfg = Int4MoEConfig(group_size=16, embedding_bits=4)
    quantize_(q, cfg)
    with calibrating(q), torch.no_grad(): q(x)
    quantize_(q.eval(), cfg, 'convert')  # the stored table: evaluate scores it from its rows too
    fast = evaluate(q, syn.test)['ppl']
    with dense_head_loss(): full = evaluate(q, syn.test)['ppl']
    assert fast == pytest.approx(full, rel=1e-5)

def test_tables_without_shared_rows_fall_back(syn):
    "Several codes a word, or codes still being learned: no shared rows, and the dense loss runs."
    two = student(syn, 20, 16, M=2)
    learning = student(syn, 20, 16); learning.tok_emb.learn_codes_()
    for m in (two, learning):
        assert head_shared_rows(m.head, torch.zeros(1, 16)) is None
        x, y = next(iter(train_batches(syn.train, 32, 4)))
        assert lm_loss(m, x, y)[0].item() > 0
