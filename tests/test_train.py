"Chunked loss against full logits, evaluation counts, determinism, model files and the command line."
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from conftest import sealed
from resnet_bk_compress.data import synthetic_corpus, unigram_ppl
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.files import save_model, load_model, read_model_file, file_bytes, atomic_write, ModelFileError
from resnet_bk_compress.train import chunked_cross_entropy, evaluate, fit, lm_loss

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=200, n_train=20_000, n_eval=3_000, locality=200)

@pytest.fixture(scope='module')
def small_cfg(syn): return ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=2, n_seq=32)

@pytest.mark.parametrize('T,chunk', [(1, 4), (37, 8), (64, 64), (100, 1000)])
def test_chunked_ce_matches_full_logits(T, chunk):
    h = torch.randn(T, 12, requires_grad=True); head = nn.Linear(12, 77); t = torch.randint(0, 77, (T,))
    loss = chunked_cross_entropy(h, head.weight, head.bias, t, chunk); (loss * 3).backward()
    got = [h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    h.grad = None; head.zero_grad()
    ref = nn.functional.cross_entropy(head(h), t); (ref * 3).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, (h.grad, head.weight.grad, head.bias.grad)): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

def test_chunked_ce_no_grad_path():
    h, w, b, t = torch.randn(10, 4), torch.randn(9, 4), torch.randn(9), torch.randint(0, 9, (10,))
    torch.testing.assert_close(chunked_cross_entropy(h, w, b, t, 3), nn.functional.cross_entropy(h @ w.T + b, t))

def test_evaluate_counts_every_prediction(syn, small_cfg):
    m = ResNetBKLM(small_cfg)
    r = evaluate(m, syn.test[:1001], batch_size=5)
    assert r['tokens'] == 1000
    # same number from full logits, window by window
    m.eval(); tot = 0.
    with torch.no_grad():
        for i in range(0, 1000, 32):
            x, y = syn.test[i:min(i + 32, 1000)][None], syn.test[i + 1:min(i + 33, 1001)][None]
            tot += nn.functional.cross_entropy(m(x)[0], y[0], reduction='sum').item()
    assert abs(r['loss'] - tot / 1000) < 1e-5

def test_fit_learns_and_is_deterministic(syn, small_cfg):
    def run():
        torch.manual_seed(1); m = ResNetBKLM(small_cfg)
        h = fit(m, syn, epochs=2, batch_size=16, lr=5e-3, seed=1, progress=False)
        return m, h
    (m1, h1), (m2, h2) = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    ppl = evaluate(m1, syn.test)['ppl']
    assert ppl < 0.9 * unigram_ppl(syn.train, syn.test, len(syn.vocab)), ppl
    assert h1[-1]['valid_ppl'] < h1[0]['valid_ppl'] and h1[0]['tokens_per_s'] > 0

def test_fit_aux_loss_reaches_router(syn, small_cfg):
    m = ResNetBKLM(small_cfg)
    x, y = syn.train[:33 * 4].view(4, 33)[:, :-1], syn.train[1:33 * 4 + 1].view(4, 33)[:, :-1]
    ce, aux = lm_loss(m, x, y); aux.backward()
    assert m.blocks[0].moe.gate.weight.grad.abs().sum() > 0

def test_model_file_round_trip_and_bytes(tmp_path, syn, small_cfg):
    m = ResNetBKLM(small_cfg).eval()
    p = save_model(m, tmp_path / 'm.safetensors', syn.vocab, {'a': 1})
    m2, v2, meta = load_model(p)
    x = syn.test[None, :32]
    with torch.no_grad(): assert torch.equal(m(x), m2(x))
    assert v2.itos == syn.vocab.itos and meta == {'a': 1} and file_bytes(p) == os.path.getsize(p)
    assert file_bytes(p) >= 4 * sum(t.numel() for t in m.state_dict().values())

def test_model_file_errors(tmp_path, syn, small_cfg):
    p = save_model(ResNetBKLM(small_cfg), tmp_path / 'm.safetensors', syn.vocab)
    raw = p.read_bytes()
    for cut in (10, len(raw) // 3, len(raw) - 1):
        (tmp_path / 'cut.safetensors').write_bytes(raw[:cut])
        with pytest.raises(ModelFileError, match='cut.safetensors'): load_model(tmp_path / 'cut.safetensors')
    (tmp_path / 'junk.safetensors').write_bytes(b'\x00' * 100)
    with pytest.raises(ModelFileError, match='junk.safetensors'): load_model(tmp_path / 'junk.safetensors')
    header, tensors = read_model_file(p)  # tensors decoded: re-saved below as plain tensors, so the header lists no sparse ones
    header = {**header, 'sparse': '{}'}
    save_file(tensors, str(tmp_path / 'v9.safetensors'), metadata=sealed({**header, 'format_version': '9'}, tensors))
    with pytest.raises(ModelFileError, match="format version '9'"): load_model(tmp_path / 'v9.safetensors')
    header = sealed(header, tensors)
    t2 = dict(tensors); t2.pop('blocks.1.v_proj.weight')
    save_file(t2, str(tmp_path / 'hole.safetensors'), metadata=sealed(header, t2))
    with pytest.raises(ModelFileError, match='blocks.1.v_proj.weight'): load_model(tmp_path / 'hole.safetensors')
    t3 = dict(tensors); t3['head.bias'] = torch.zeros(5)
    save_file(t3, str(tmp_path / 'shape.safetensors'), metadata=sealed(header, t3))
    with pytest.raises(ModelFileError, match='head.bias'): load_model(tmp_path / 'shape.safetensors')
    with pytest.raises(FileNotFoundError, match='nowhere.safetensors'): load_model(tmp_path / 'nowhere.safetensors')
    save_file(tensors, str(tmp_path / 'unsealed.safetensors'), metadata=header | {'meta': '{"note": "changed"}'})  # any change, even to the metadata
    with pytest.raises(ModelFileError, match='does not match its checksum'): load_model(tmp_path / 'unsealed.safetensors')
    with pytest.raises(ValueError, match='vocabulary has'): save_model(ResNetBKLM(small_cfg), tmp_path / 'x.safetensors', synthetic_corpus(vocab_size=10, n_train=50, n_eval=5).vocab)

def test_atomic_write_keeps_old_file(tmp_path):
    p = tmp_path / 'f.bin'; p.write_bytes(b'good')
    def fail(tmp): Path(tmp).write_bytes(b'ha'); raise OSError('disk full')
    with pytest.raises(OSError): atomic_write(p, fail)
    assert p.read_bytes() == b'good' and [x.name for x in tmp_path.iterdir()] == ['f.bin']

def _cli(*args, cwd):
    return subprocess.run([sys.executable, '-c', 'import sys; from resnet_bk_compress.train import rbk_train, rbk_eval; '
                           f'{{"train": rbk_train, "eval": rbk_eval}}[sys.argv[1]](sys.argv[2:])', *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)

def test_cli_train_and_eval(tmp_path):
    r = _cli('train', '--data', 'synthetic', '--out', 'm.safetensors', '--max-steps', '4', '--d-model', '16', '--n-layers', '1',
             '--no-progress', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    metrics = json.loads((tmp_path / 'm.json').read_text())
    assert out['file_bytes'] == (tmp_path / 'm.safetensors').stat().st_size == metrics['file_bytes']
    r = _cli('eval', 'm.safetensors', '--data', 'synthetic', '--split', 'valid', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {'ppl', 'tokens', 'unigram_ppl'} <= set(res) and res['tokens'] == 19_999
    assert abs(res['ppl'] - metrics['valid']['ppl']) < 1e-6 * res['ppl']
    (tmp_path / 't.txt').write_text('w0 w1 nonsense\n')
    res = json.loads(_cli('eval', 'm.safetensors', '--text', 't.txt', cwd=tmp_path).stdout)
    assert res['tokens'] == 3 and res['oov'] == 1
    assert abs(res['unigram_ppl'] - 4.0) < 1e-9  # in-sample MLE over 4 distinct tokens: p = 1/4 each

def test_cli_wikitext2_eval(tmp_path, wt2_dir):
    "An untrained reference-width model on the real test split: the counts and the unigram floor are the benchmark's."
    from resnet_bk_compress.data import load_wikitext2
    c = load_wikitext2(wt2_dir)
    m = ResNetBKLM(ResNetBKConfig(vocab_size=len(c.vocab), d_model=8, n_layers=1))
    save_model(m, tmp_path / 'u.safetensors', c.vocab)
    r = _cli('eval', 'u.safetensors', '--data', str(wt2_dir), '--split', 'test', '--batch-size', '64', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res['tokens'] == 245_568 and res['oov'] == 0 and 800 < res['unigram_ppl'] < 1100

@pytest.mark.parametrize('args,msg', [
    (('eval', 'missing.safetensors', '--data', 'synthetic'), "model file 'missing.safetensors' does not exist"),
    (('eval', 'bad.safetensors', '--data', 'synthetic'), 'not a readable safetensors file'),
    (('train', '--data', 'no_such_dir', '--out', 'x.safetensors'), "corpus directory 'no_such_dir' does not exist"),
    (('train', '--data', 'synthetic', '--out', 'x.pt'), 'model files end in .safetensors'),
    (('train', '--data', 'synthetic', '--out', 'x.safetensors', '--top-k', '9'), 'top_k=9 exceeds num_experts=4'),
])
def test_cli_bad_input(tmp_path, args, msg):
    (tmp_path / 'bad.safetensors').write_bytes(b'not a model')
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'x.safetensors').exists()

def test_chunked_ce_skips_gradients_under_no_grad(monkeypatch):
    "Evaluation must not pay for gradients: under no_grad the backward products are never computed."
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, 'mm', lambda *a, **k: calls.append(1) or real_mm(*a, **k))
    head = nn.Linear(4, 9)
    h, t = torch.randn(10, 4, requires_grad=True), torch.randint(0, 9, (10,))
    with torch.no_grad(): chunked_cross_entropy(h, head.weight, head.bias, t, 3)
    assert calls == []
    chunked_cross_entropy(h, head.weight, head.bias, t, 3)
    assert len(calls) == 4  # one grad-of-h product per chunk

def test_keep_best_survives_a_resume(syn, small_cfg, tmp_path):
    "A run killed after its best epoch and resumed from its checkpoint ends with that epoch's weights."
    from resnet_bk_compress.train import LMObjective
    per_epoch = len(syn.train) // small_cfg.n_seq // 32

    class Worsens(LMObjective):  # learns for 2 epochs, then climbs the loss: the best epoch is the second, for sure
        def __init__(self, model):
            super().__init__(model)
            self.register_buffer('calls', torch.zeros((), dtype=torch.long))  # in the checkpoint with the weights
        def forward(self, *a):
            self.calls += 1
            loss, logs = super().forward(*a)
            return (loss if self.calls <= 2 * per_epoch else -loss), logs

    class Killed(Worsens):  # and dies in the fourth epoch, after the third one's checkpoint
        def forward(self, *a):
            if self.calls == 3 * per_epoch + 2: raise KeyboardInterrupt('killed')
            return super().forward(*a)

    kw = dict(epochs=5, batch_size=32, lr=5e-3, progress=False, keep_best=True)
    torch.manual_seed(0); whole = ResNetBKLM(small_cfg)
    curve = [r['valid_ppl'] for r in fit(whole, syn, objective=Worsens(whole), **kw)]
    assert curve.index(min(curve)) == 1 and curve[-1] > curve[1], curve
    ck = tmp_path / 'ck.pt'
    torch.manual_seed(0); part = ResNetBKLM(small_cfg)
    with pytest.raises(KeyboardInterrupt): fit(part, syn, objective=Killed(part), checkpoint=ck, **kw)
    assert torch.load(ck, weights_only=True)['state']['best_ppl'] == min(curve)
    torch.manual_seed(1); resumed = ResNetBKLM(small_cfg)  # other weights: everything must come from the checkpoint
    assert [r['valid_ppl'] for r in fit(resumed, syn, objective=Worsens(resumed), checkpoint=ck, **kw)] == curve
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    assert abs(evaluate(resumed, syn.valid)['ppl'] - min(curve)) < 1e-6 * min(curve)
    with pytest.raises(ValueError, match='keep_best needs an eval_split'):
        fit(resumed, syn, **{**kw, 'eval_split': None})
