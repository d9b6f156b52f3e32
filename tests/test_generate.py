"Generation: the incremental decoder is the model (every kind, loaded from its file), greedy decoding is deterministic, the command line."
import subprocess, sys
import pytest
import torch
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.files import load_model, save_model
from resnet_bk_compress.quant import PerChannel
from resnet_bk_compress.complex_quant import ComplexInt8Config
from resnet_bk_compress.generate import incremental_logits, generate, generate_ids, position_nll
from conftest import every_kind, quantized_small, small_model

def rbk_generate(*args):
    "The command line in a new process: (return code, stdout, stderr)."
    r = subprocess.run([sys.executable, '-c', 'import sys; from resnet_bk_compress.generate import rbk_generate; rbk_generate(sys.argv[1:])', *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    return r

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)

@pytest.fixture(scope='module')
def files(syn, tmp_path_factory):
    d = tmp_path_factory.mktemp('gen')
    kinds = every_kind(syn)
    kinds['complex int8, a grid per position'] = (quantized_small(syn, small_model(syn), ComplexInt8Config(bk_granularity=PerChannel(-1))), save_model)
    return {name: save(m, d / f'{i}.safetensors', syn.vocab) for i, (name, (m, save)) in enumerate(kinds.items())}

def test_the_incremental_decoder_gives_the_full_forwards_logits_for_every_kind(files, syn):
    x = torch.stack([syn.test[:32], syn.test[500:532]])  # n_seq = 32: every position of a full window
    for name, f in files.items():
        m, _, _ = load_model(f)
        with torch.no_grad(): full = m(x)
        inc = incremental_logits(m, x)
        err = (inc - full).abs().max().item()
        assert err <= 1e-5, f"{name}: incremental logits differ from the full forward's by {err:.2e}"

def test_greedy_decoding_is_deterministic_and_the_command_line_prints_it(files, syn):
    f = files['codebook table, 4-bit biases, compressed']
    m, vocab, _ = load_model(f)
    prompt = ' '.join(syn.vocab.decode(syn.test[:6]))
    text = generate(m, vocab, prompt, 60, greedy=True)  # past n_seq = 32: the position is held
    assert text == generate(m, vocab, prompt, 60, greedy=True) and '<unk>' not in text
    run = lambda *a: rbk_generate(f, *a)
    r = run('--prompt', prompt, '--max-new-tokens', '60', '--greedy')
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + ' ' + text + '\n'
    s1, s2 = run('--max-new-tokens', '20', '--seed', '7'), run('--max-new-tokens', '20', '--seed', '7')
    assert s1.returncode == 0 and s1.stdout == s2.stdout

def test_bad_settings_are_one_line_errors(files, tmp_path):
    f = files['float']
    for args, says in ((['--temperature', '0'], '--greedy'), (['--top-p', '1.5'], 'top_p'), (['--top-k', '0'], 'top_k'),
                       (['--max-new-tokens', '-1'], 'max_new_tokens')):
        r = rbk_generate(f, *args)
        assert r.returncode == 2 and says in r.stderr and 'Traceback' not in r.stderr, (args, r.stderr)
    r = rbk_generate(tmp_path / 'none.safetensors')
    assert r.returncode == 2 and 'none.safetensors' in r.stderr and 'Traceback' not in r.stderr
    r = rbk_generate(f, '--prompt', 'zebra w1')
    assert r.returncode == 0 and 'zebra' in r.stderr

def test_past_n_seq_hold_and_window(files, syn):
    m, _, _ = load_model(files['int8'])
    hold, window = position_nll(m, syn.valid, 80, 8, 'hold'), position_nll(m, syn.valid, 80, 8, 'window')
    assert hold.shape == window.shape == (80,)
    assert torch.allclose(hold[:32], window[:32], atol=1e-4)  # the same computation within n_seq
    a = generate_ids(m, syn.test[:40], 30, greedy=True, past_n_seq='window')  # a prompt longer than n_seq
    assert a.shape == (70,) and torch.equal(a[:40], syn.test[:40])
