"bench/peers_wt2.py on a small model: every peer's adapter quantizes, writes, loads back and measures; the measuring helpers are right."
import json, subprocess, sys
from pathlib import Path
import pytest
from conftest import train_small
from resnet_bk_compress.data import synthetic_corpus, pack_words
from resnet_bk_compress.files import file_bytes, save_model
from resnet_bk_compress.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import peers_wt2 as P  # imports no peer: each adapter imports its library when it runs

@pytest.fixture(scope='module')
def corpus(): return synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000, locality=300)

@pytest.fixture(scope='module')
def model(corpus): return train_small(corpus, 30, d_model=64)  # width 64: the bench's group size divides it, as on the teacher

def test_forward_ppl_is_the_library_perplexity(corpus, model):
    ours, theirs = evaluate(model, corpus.test)['ppl'], P.forward_ppl(model, corpus.test, model.cfg.n_seq)['test_ppl']
    assert abs(ours - theirs) < 1e-4 * ours

@pytest.mark.parametrize('compress', [False, True])
def test_without_word_list_takes_out_exactly_the_word_list(corpus, model, tmp_path, compress):
    f = save_model(model, tmp_path / 'm.safetensors', corpus.vocab, compress_vocab=compress)
    as_json = json.dumps(json.dumps(corpus.vocab.itos, ensure_ascii=False), ensure_ascii=False)  # a JSON string inside the JSON header: escaped twice
    words = len(pack_words(corpus.vocab.itos)) if compress else len(as_json.encode())
    gone = file_bytes(f) - P.without_word_list(f)
    assert words <= gone < words + 160  # the word list and its header entry (name, dtype, offsets)

def test_scopes(model):
    experts = P.candidates(model, 'experts')
    assert len(experts) == model.cfg.n_layers * model.cfg.num_experts * 2 and all('.moe.experts.' in n for n in experts)
    assert {'tok_emb', 'pos_emb'} <= set(P.candidates(model, 'linear+embedding')) and 'tok_emb' not in P.candidates(model, 'linear')
    assert 'head' in P.candidates(model, 'linear') and not any(n.endswith('gate') for n in experts)

def test_smallest_within_and_the_plot(tmp_path):
    rows = [dict(file_bytes_with_word_list=b, test_ppl=p, setting=str(b), file_bytes=b) for b, p in ((10, 200.), (5, 112.), (3, 130.))] + [dict(error='x')]
    assert P.smallest_within(rows, 115.)['file_bytes'] == 5 and P.smallest_within(rows, 100.) is None
    res = dict(teacher=dict(test_ppl=100., unigram_test_ppl=900.), peers={'a': rows},
               ours=[dict(setting='pipeline 32x (frontier run)', file_bytes_with_word_list=4, test_ppl=110.), dict(setting='INT8', file_bytes_with_word_list=8, test_ppl=101.)])
    P.plot(res, tmp_path / 'p.png')
    assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'

# Each peer runs in a fresh process: a peer library that patches torch on import cannot reach the other tests.
RUN = """
import sys, json, torch
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import peers_wt2 as P
from conftest import train_small
from resnet_bk_compress.data import synthetic_corpus, eval_windows
corpus = synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000, locality=300)
m = train_small(corpus, 30, d_model=64)
held = [x for x, _ in list(eval_windows(corpus.valid, 32, 8))[:1]]
settings = [s for s in P.SETTINGS[sys.argv[3]] + P.EQUAL[sys.argv[3]] if s['api'] != 'Int4WeightOnlyConfig']  # the equal-footing scopes too
rows = [P.run_peer(P.PEERS[sys.argv[3]], {**s, '_example': held[0][:1]}, m, corpus, 1000, held, None) for s in settings]
print('ROWS' + json.dumps(dict(float=P.forward_ppl(m, corpus.test, 32)['test_ppl'], rows=rows)))
"""

def peer_rows(name):
    r = subprocess.run([sys.executable, '-c', RUN, str(ROOT / 'bench'), str(ROOT / 'tests'), name], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split('ROWS', 1)[1])

@pytest.mark.parametrize('name', list(P.PEERS))
def test_peer_quantizes_writes_and_loads_back(name):
    res = peer_rows(name)
    ref, rows = res['float'], res['rows']
    for r in rows:
        assert 'error' not in r, r  # every setting the bench runs (torchao's Int4WeightOnlyConfig aside: no CPU kernel) works here
        assert r['quantized'] and r['file_bytes'] > 0 and r['file_bytes_with_word_list'] == r['file_bytes'] + 1000
        assert r['version'] and r['eval_tokens_per_s'] > 0
        if r['bits'] == 8: assert abs(r['test_ppl'] - ref) < 0.03 * ref and r['logit_rel_error'] < 0.05, r
        if r.get('group_size') and name != 'optimum-quanto' and r['scope'] != 'experts':  # the BK feature maps (in_features 2) take no group of 32 or 64: listed, not hidden
            assert any(n.endswith('bk_proj') for n in r['skipped']), r
    assert any(r['bits'] == 8 for r in rows) and any(r['bits'] < 8 for r in rows)
    assert any(r['scope'] == 'experts' and r['quantized'] and all(P.EXPERTS.search(n) for n in r['quantized']) for r in rows)  # the equal-footing scope
