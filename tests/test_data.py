"WikiText-2 loading and verification, errors on bad input, batch alignment, the synthetic corpus."
import lzma, math
from pathlib import Path
import pytest
import torch
from hypothesis import given, settings, strategies as st
from resnet_bk_compress.data import (load_wikitext2, load_corpus, eval_windows, train_batches, batches_per_epoch, synthetic_corpus,
                                     unigram_ppl, encode_file, read_text, Vocab, tokenize, zipf_probs)

@pytest.fixture(scope='module')
def wt2(wt2_dir): return load_wikitext2(wt2_dir)

def test_wikitext2_counts(wt2, wt2_dir):
    assert len(wt2.vocab) == 33278
    assert (len(wt2.train), len(wt2.valid), len(wt2.test)) == (2088628, 217646, 245569)
    assert wt2.meta['oov'] == {'train': 0, 'valid': 0, 'test': 0}
    assert wt2.meta['verified'] == (wt2_dir / 'SHA256SUMS').is_file()  # checked against the checksums wherever they exist
    assert wt2.vocab.itos[0] == 'the' and wt2.test[0] == wt2.vocab.eos_id

def test_wikitext2_unigram_floor(wt2):
    u = unigram_ppl(wt2.train, wt2.test, len(wt2.vocab))
    assert 800 < u < 1100

def test_checksum_mismatch_is_refused(tmp_path, wt2_dir):
    for s in ('train', 'valid', 'test'): (tmp_path / f'{s}.txt').write_text(lzma.open(wt2_dir / f'{s}.txt.xz', 'rt').read(2000) + '\n')
    (tmp_path / 'SHA256SUMS').write_text((wt2_dir / 'SHA256SUMS').read_text())
    with pytest.raises(ValueError, match='does not match its checksum'): load_corpus(tmp_path)

def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): load_corpus(tmp_path / 'missing')
    (tmp_path / 'train.tokens').write_text('a b\n'); (tmp_path / 'valid.tokens').write_text('a\n')
    with pytest.raises(FileNotFoundError, match="no 'test' split"): load_corpus(tmp_path)
    (tmp_path / 'test.tokens').write_text('')
    with pytest.raises(ValueError, match='is empty'): load_corpus(tmp_path)
    (tmp_path / 'test.tokens').write_bytes(b'caf\xe9\n')
    with pytest.raises(ValueError, match='not UTF-8'): load_corpus(tmp_path)
    (tmp_path / 'test.tokens').write_text('b a c\n')
    c = load_corpus(tmp_path)
    assert c.meta['oov']['test'] == 1 and len(c.test) == 4

def test_xz_and_wiki_prefixed_names(tmp_path):
    for s in ('train', 'valid', 'test'):
        with lzma.open(tmp_path / f'wiki.{s}.tokens.xz', 'wt') as f: f.write('x y z\n')
    assert len(load_corpus(tmp_path).train) == 4

@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 700), n_seq=st.integers(1, 70), bs=st.integers(1, 9))
def test_eval_windows_cover_every_prediction_once(n, n_seq, bs):
    s = torch.arange(n)
    xs, ys = zip(*eval_windows(s, n_seq, bs))
    assert all(x.shape == y.shape and x.shape[1] <= n_seq for x, y in zip(xs, ys))
    assert torch.equal(torch.cat([x.flatten() for x in xs]), s[:-1])
    assert torch.equal(torch.cat([y.flatten() for y in ys]), s[1:])

@settings(max_examples=40, deadline=None)
@given(n=st.integers(40, 900), n_seq=st.integers(1, 19), bs=st.integers(1, 7), seed=st.integers(0, 5))
def test_train_targets_are_next_tokens(n, n_seq, bs, seed):
    nb = 0
    for x, y in train_batches(torch.arange(n), n_seq, bs, seed):
        assert torch.equal(y, x + 1) and x.shape[1] == n_seq
        nb += 1
    assert nb <= batches_per_epoch(n, n_seq, bs)

def test_real_batches_aligned(wt2):
    x, y = next(train_batches(wt2.train, 128, 4, seed=0))
    assert torch.equal(x[:, 1:], y[:, :-1])
    # each window is a contiguous piece of the stream: find it and check the target is the next token
    start = (wt2.train.unfold(0, 128, 1) == x[0]).all(1).nonzero()[0, 0]
    assert torch.equal(wt2.train[start + 1:start + 129], y[0])

def test_synthetic_deterministic_and_exact():
    c1, c2 = synthetic_corpus(vocab_size=300, n_train=5000, n_eval=500), synthetic_corpus(vocab_size=300, n_train=5000, n_eval=500)
    assert torch.equal(c1.train, c2.train) and torch.equal(c1.test, c2.test)
    p = torch.tensor(zipf_probs(300, c1.meta['zipf_s']))
    assert math.isclose(c1.meta['entropy_rate'], float(-(p * p.log()).sum()), rel_tol=1e-12)
    assert c1.meta['best_ppl'] < unigram_ppl(c1.train, c1.test, len(c1.vocab))

def test_encode_file_unknown_words(tmp_path):
    v = Vocab.build(tokenize('the cat\n'))
    f = tmp_path / 'x.txt'; f.write_text('the dog\n')
    ids, oov = encode_file(f, v)
    assert oov == 1 and v.decode(ids) == ['the', '<unk>', '<eos>']

def test_huggingface_fallback(monkeypatch, tmp_path):
    "With no directory anywhere, load_wikitext2 reads the `datasets` copy (here a stand-in with its API and row layout)."
    import sys, types
    from resnet_bk_compress import data
    rows = {'train': [' = A = \n', '', ' the b c \n'], 'validation': [' the b \n'], 'test': [' c the \n']}
    fake = types.ModuleType('datasets')
    calls = []
    def load_dataset(name, config, split):
        calls.append((name, config, split)); return {'text': rows[split]}
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, 'datasets', fake)
    monkeypatch.delenv('RBK_WIKITEXT2', raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, 'WIKITEXT2_VOCAB', 7)  # the stand-in's vocabulary: = A the b c <eos> <unk>
    c = data.load_wikitext2()
    assert calls == [('wikitext', 'wikitext-2-v1', s) for s in ('train', 'validation', 'test')]
    assert c.vocab.decode(c.train) == ['=', 'A', '=', '<eos>', '<eos>', 'the', 'b', 'c', '<eos>'] and c.meta['source'] == 'huggingface'

def test_no_data_anywhere_says_what_to_do(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, 'datasets', None)  # import fails
    monkeypatch.delenv('RBK_WIKITEXT2', raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match='pass --data DIR, set RBK_WIKITEXT2'): load_wikitext2()
