"The browser page: headless Chromium against a server on 127.0.0.1 generates, with onnxruntime-web, exactly the tokens `generate` gives in Python."
import html, importlib.util, json, re, shutil, subprocess, threading
from pathlib import Path
from urllib.parse import urlencode
import pytest
import torch
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.int4_moe import Int4MoEConfig
from resnet_bk_compress.export import export_onnx
from resnet_bk_compress.generate import generate_ids, prompt_ids
from conftest import quantized_small, small_model

WEB = Path(__file__).resolve().parents[1] / 'web'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

def _serve_module():
    spec = importlib.util.spec_from_file_location('serve', WEB / 'serve.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "(base URL, models) with the page and two exported models served on 127.0.0.1."
    assert CHROMIUM, "headless Chromium is needed for this test: apt-get install chromium (.ci/run installs it)"
    assert (WEB / 'node_modules' / 'onnxruntime-web').is_dir(), "run `npm ci` in web/ (.ci/run does)"
    syn = synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)
    d = tmp_path_factory.mktemp('site')
    models = {'float': small_model(syn), 'int4': quantized_small(syn, small_model(syn), Int4MoEConfig(group_size=16, embedding_bits=4))}
    for name, m in models.items(): export_onnx(m, d / f'{name}.onnx', syn.vocab)
    server = _serve_module().server(d)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}/', models, syn.vocab
    server.shutdown()

def page_result(url: str) -> dict:
    "What the page wrote into #ids after generating (Chromium's --dump-dom, virtual time: the page's timings read 0)."
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--virtual-time-budget=120000',
                        '--dump-dom', url], capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="ids"[^>]*data-done="1"[^>]*>(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not finish: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))

def test_greedy_decoding_in_the_page_gives_pythons_tokens(site):
    base, models, vocab = site
    w = vocab.itos
    for name, m in models.items():
        for prompt in (f'{w[3]} {w[10]}', f'{w[5]}\n{w[7]} zebra'):  # a line end (an <eos>) and a word outside the vocabulary
            got = page_result(base + '?' + urlencode(dict(model=f'/model/{name}.onnx', prompt=prompt, n=40, greedy=1, autorun=1)))
            ids = prompt_ids(vocab, prompt)
            assert 'error' not in got, got
            assert got['prompt_ids'] == ids.tolist(), (name, prompt)
            assert got['new_ids'] == generate_ids(m, ids, 40, greedy=True, banned=vocab.unk_id)[len(ids):].tolist(), (name, prompt)

def test_a_seeded_draw_repeats_and_never_writes_unk(site):
    base, models, vocab = site
    url = base + '?' + urlencode(dict(model='/model/float.onnx', prompt=vocab.itos[3], n=30, seed=5, temperature=1.2, autorun=1))
    a, b = page_result(url), page_result(url)
    assert a['new_ids'] == b['new_ids'] and vocab.unk_id not in a['new_ids']
