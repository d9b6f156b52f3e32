"A model file is a safe input: crafted headers (checksum recomputed) load correctly or end in ModelFileError, fast and within a memory limit."

import contextlib, json, re, resource, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from hypothesis import event, given, settings, strategies as st, HealthCheck
from safetensors import safe_open
from safetensors.torch import save_file
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.files import load_model, model_digest, ModelFileError, float_model_bytes
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from conftest import every_kind

EXTRA_MEMORY = 1 << 30  # what loading one crafted file may take beyond the test process's own


@contextlib.contextmanager
def memory_limit(extra: int = EXTRA_MEMORY):
    "Cap this process's address space at its present size plus `extra`: a loader that asks for more fails here, not the machine."
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = next(
        int(l.split()[1]) * 1024 for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmSize')
    )
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope='module')
def coded(tmp_path_factory):
    "(header, tensors as stored) of a compressed file whose table codes are entropy-coded (skewed, as k-means makes them)."
    from conftest import small_model, quantized_small
    from resnet_bk_compress.int4_moe import Int4MoEConfig
    from resnet_bk_compress.tables import CodebookTable, quantize_bias_
    from resnet_bk_compress.files import save_compressed

    syn = synthetic_corpus(vocab_size=1000, n_train=20_000, n_eval=2_000)
    m = small_model(syn, tie_embeddings=True)
    m.tok_emb = CodebookTable.from_table(m.tok_emb.weight.detach(), 40, 1, 256)
    g = torch.Generator().manual_seed(0)
    m.tok_emb.codes.copy_(
        torch.multinomial(
            torch.tensor([0.5] * 8 + [0.5 / 248] * 248), m.tok_emb.codes.numel(), replacement=True, generator=g
        ).reshape(m.tok_emb.codes.shape)
    )
    m = quantize_bias_(quantized_small(syn, m, Int4MoEConfig(group_size=16, embedding_bits=4)))
    p = save_compressed(m, tmp_path_factory.mktemp('coded') / 'c.safetensors', syn.vocab)
    with safe_open(str(p), framework='pt') as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert 'tok_emb.codes' in json.loads(header['coded'])
    load_model(p)  # the untouched file loads
    return header, tensors


class Stored(dict):
    "name -> (header, tensors as stored); short to print when hypothesis reports a failing example."

    def __repr__(self):
        return f'Stored({sorted(self)})'


@pytest.fixture(scope='module')
def stored(tmp_path_factory, coded):
    "name -> (header, tensors as stored) of a small file of every kind the library writes, and one entropy-coded."
    syn = synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)
    d, out = tmp_path_factory.mktemp('kinds'), Stored()
    for i, (name, (m, save)) in enumerate(every_kind(syn).items()):
        p = save(m, d / f'{i}.safetensors', syn.vocab)
        with safe_open(str(p), framework='pt') as f:
            out[name] = (f.metadata(), {k: f.get_tensor(k) for k in f.keys()})
    out['entropy-coded table'] = coded
    return out


def sealed_file(path, header, tensors) -> Path:
    "The file a crafter writes: any header, its checksum recomputed, so that it passes the integrity check."
    save_file(tensors, str(path), metadata={**header, 'checksum': model_digest(header, tensors)})
    return path


def deep(n: int) -> str:
    return '[' * n + ']' * n


# values a crafted header puts where a number, a shape, a name or an object belongs
HUGE = st.sampled_from([0, -1, 1, 2, 3, 7, 10**3, 10**5, 10**6, 10**9, 10**12, 2**31, 2**63, 10**30])
JUNK = st.one_of(
    HUGE,
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(HUGE, max_size=4),
    st.dictionaries(st.text(max_size=5), HUGE, max_size=3),
)


def mutate(data, header: dict) -> dict:
    "One crafted change to a header: a config field, a kind's entry, a coded/sparse/packed declaration, the word list or raw JSON."
    h = dict(header)
    json_keys = sorted(k for k in h if k not in ('format', 'format_version', 'checksum'))
    what = data.draw(st.sampled_from(['config', 'kind', 'declared', 'vocab', 'raw']))
    if what == 'config':
        cfg = json.loads(h['config'])
        k = data.draw(st.sampled_from(sorted(cfg)))
        cfg[k] = data.draw(
            st.one_of(HUGE, JUNK, st.builds(lambda v, f: v * f if isinstance(v, int) else f, st.just(cfg[k]), HUGE))
        )
        h['config'] = json.dumps(cfg)
    elif what == 'kind' and (kinds := [k for k, _ in json.loads(h.get('structure', '[]'))]):
        k = data.draw(st.sampled_from(kinds))
        entry = json.loads(h[k])
        if isinstance(entry, dict) and entry and data.draw(st.booleans()):
            f = data.draw(st.sampled_from(sorted(entry)))
            entry[f] = data.draw(JUNK)
        else:
            entry = data.draw(JUNK)
        h[k] = json.dumps(entry)
    elif what == 'declared' and (keys := [k for k in ('coded', 'sparse', 'small') if k in h and json.loads(h[k])]):
        k = data.draw(st.sampled_from(keys))
        entry = json.loads(h[k])
        name = data.draw(st.sampled_from(sorted(entry)))
        v = entry[name]
        if k == 'coded':  # [dtype, shape, alphabet]
            i = data.draw(st.integers(0, 2))
            v[i] = data.draw(
                st.one_of(
                    JUNK,
                    st.sampled_from(['uint8', 'int8', 'int64', 'float32', 'bogus', 16, 256]),
                    st.builds(lambda s, f: [x * f for x in s], st.just(v[1]), HUGE),
                )
            )
        elif k == 'sparse':  # shape
            entry[name] = data.draw(st.one_of(JUNK, st.builds(lambda s, f: [x * f for x in s], st.just(v), HUGE)))
        else:  # dtype -> [[name, shape], ...]
            j = data.draw(st.integers(0, len(v) - 1))
            v[j][1] = data.draw(st.one_of(JUNK, st.builds(lambda s, f: [x * f for x in s], st.just(v[j][1]), HUGE)))
            if data.draw(st.booleans()):
                entry[data.draw(st.sampled_from(['int64', 'float64', 'bogus']))] = v
        h[k] = json.dumps(entry)
    elif what == 'vocab':
        if 'vocab' in h:
            words = json.loads(h['vocab'])
            h['vocab'] = json.dumps(
                data.draw(
                    st.sampled_from([words[:-1], words + ['extra'], words[:-1] + [words[0]], [1, 2, 3], 'words', None])
                )
            )
        else:
            h['vocab_codec'] = json.dumps(data.draw(st.one_of(st.sampled_from(['xz', 'words', 'ppmd']), JUNK)))
    else:
        k = data.draw(st.sampled_from(json_keys))
        h[k] = data.draw(
            st.sampled_from(
                [
                    deep(50),
                    deep(10_000),
                    deep(100_000),
                    '{',
                    '',
                    'null',
                    '1e999',
                    json.dumps([0] * 100_000),
                    json.dumps('x' * 100_000),
                    '9' * 5000,
                ]
            )
        )
    return h


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_crafted_header_loads_or_is_refused_cleanly(stored, tmp_path, data):
    "Each variant loads a model that runs, or ends in ModelFileError naming the file, in bounded time and memory."
    name = data.draw(st.sampled_from(sorted(stored)))
    header, tensors = stored[name]
    path = sealed_file(tmp_path / 'crafted.safetensors', mutate(data, header), tensors)
    t0 = time.perf_counter()
    with memory_limit():
        try:
            m, vocab, _ = load_model(path)
        except ModelFileError as e:
            assert 'crafted.safetensors' in str(e), e
            event(str(e).split('crafted.safetensors')[1][:40])  # pytest --hypothesis-show-statistics: what refused it
        else:
            event('loaded')
            with torch.no_grad():
                assert m(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == m.cfg.vocab_size == len(vocab)
    # a hang detector, not a speed target: bench/safe_files.py measures the time (well under a second)
    assert time.perf_counter() - t0 < 10, name


@pytest.mark.parametrize(
    'change,msg',
    [
        (dict(d_model=100_000), 'd_model=100,000 is outside [1, 32,768]'),
        (dict(n_layers=10_000), 'n_layers=10,000 is outside [1, 1,024]'),
        (dict(num_experts=100_000), 'num_experts=100,000 is outside'),
        (dict(vocab_size=10**9), 'vocab_size=1,000,000,000 is outside'),
        (dict(n_seq=10**8), 'n_seq=100,000,000 is outside'),
        (dict(d_model=4096, n_layers=64), 'more than a file of'),
    ],
)
def test_the_issue_variants_are_refused_before_allocating(stored, tmp_path, change, msg):
    header, tensors = stored['codebook table, 4-bit biases, compressed']
    h = {**header, 'config': json.dumps({**json.loads(header['config']), **change})}
    with memory_limit(256 << 20), pytest.raises(ModelFileError, match=re.escape(msg)):
        load_model(sealed_file(tmp_path / 'crafted.safetensors', h, tensors))


def test_a_coded_tensor_must_be_one_the_model_holds_at_its_shape(coded, tmp_path):
    "The rANS stream bounds nothing (four bytes code any number of one symbol): the declared shape is checked first."
    header, tensors = coded
    c = json.loads(header['coded'])
    dt, shape, alphabet = c['tok_emb.codes']
    for factor in (2, 10**5, 10**9):
        h = {**header, 'coded': json.dumps({**c, 'tok_emb.codes': [dt, [shape[0] * factor, *shape[1:]], alphabet]})}
        with memory_limit(256 << 20), pytest.raises(ModelFileError, match=re.escape("'tok_emb.codes' is declared")):
            load_model(sealed_file(tmp_path / 'crafted.safetensors', h, tensors))
    h = {**header, 'coded': json.dumps({**c, 'extra': [dt, [10**9], alphabet]})}
    tensors = {**tensors, 'extra@rans': tensors['tok_emb.codes@rans'].clone()}  # a tensor the model does not hold
    with memory_limit(256 << 20), pytest.raises(ModelFileError, match='256x at most'):
        load_model(sealed_file(tmp_path / 'crafted.safetensors', h, tensors))


def test_float_model_bytes_counts_what_building_allocates():
    for cfg in (
        ResNetBKConfig(vocab_size=300, d_model=16, n_layers=3, num_experts=8, top_k=2),
        ResNetBKConfig(vocab_size=50, d_model=24, n_layers=1, num_experts=1, embed_rank=8),
        ResNetBKConfig(vocab_size=70, d_model=8, tie_embeddings=True),
    ):
        m = ResNetBKLM(cfg)
        assert float_model_bytes(cfg) == sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


CLIS = {
    'rbk-eval': ('resnet_bk_compress.train', 'rbk_eval', ['{f}', '--data', 'synthetic']),
    'rbk-generate': ('resnet_bk_compress.generate', 'rbk_generate', ['{f}', '--prompt', 'w1', '--max-new-tokens', '3']),
    'rbk-export': ('resnet_bk_compress.export', 'rbk_export', ['{f}', '--onnx', 'out/m.onnx']),
    'rbk-compress': (
        'resnet_bk_compress.cli',
        'rbk_compress',
        ['--teacher', '{f}', '--out', 'out', '--minutes', '1'],
    ),
}


@pytest.mark.parametrize('cli', sorted(CLIS))
def test_command_lines_refuse_a_crafted_file_in_one_line(stored, tmp_path, cli):
    header, tensors = stored['int4 experts']
    h = {**header, 'config': json.dumps({**json.loads(header['config']), 'n_layers': 10_000})}
    f = sealed_file(tmp_path / 'crafted.safetensors', h, tensors)
    mod, fn, args = CLIS[cli]
    r = subprocess.run(
        [
            sys.executable,
            '-c',
            f'import sys; from {mod} import {fn}; {fn}(sys.argv[1:])',
            *[a.format(f=f) for a in args],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert 'crafted.safetensors' in lines[0] and 'n_layers=10,000 is outside' in lines[0], lines
    assert not (tmp_path / 'out').exists()
