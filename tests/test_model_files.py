"One file path for every model: fresh-process round trips of every kind, integrity (a fuzzed file never loads wrong), crash safety, settings checked first."
import json, random, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from safetensors import safe_open
from safetensors.torch import save_file
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, InputError
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.files import save_model, load_model, read_model_file, model_digest, ModelFileError
from resnet_bk_compress.model import run_command
from resnet_bk_compress.quant import Int8Config, Int8Embedding
from resnet_bk_compress.int4_moe import Int4MoEConfig, QuantizedEmbedding
from resnet_bk_compress.pipeline import CompressionPipeline
from conftest import every_kind, quantized_small, pruned_small, small_model

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)

@pytest.fixture(scope='module')
def files(syn, tmp_path_factory):
    d = tmp_path_factory.mktemp('kinds')
    x = syn.test[:32][None]
    out = {}
    for i, (name, (m, save)) in enumerate(every_kind(syn).items()):
        with torch.no_grad(): out[name] = (save(m, d / f'{i}.safetensors', syn.vocab), m(x))
    return out, x

def test_every_kind_loads_in_a_fresh_process_with_identical_logits(files, tmp_path):
    out, x = files
    torch.save(x, tmp_path / 'x.pt')
    code = ("import sys, torch; from resnet_bk_compress.files import load_model\n"  # nothing but the one loader is imported
            "x = torch.load(sys.argv[1]); torch.save([load_model(f)[0](x).detach() for f in sys.argv[3:]], sys.argv[2])")
    paths = [str(f) for f, _ in out.values()]
    subprocess.run([sys.executable, '-c', code, str(tmp_path / 'x.pt'), str(tmp_path / 'y.pt'), *paths], check=True, timeout=300)
    for (name, (_, want)), got in zip(out.items(), torch.load(tmp_path / 'y.pt')):
        assert torch.equal(got, want), name

def test_the_untied_factorized_head_is_quantized(syn):
    for config, kind in ((Int8Config(), Int8Embedding), (Int4MoEConfig(group_size=8, embedding_bits=4), QuantizedEmbedding)):
        m = quantized_small(syn, small_model(syn, embed_rank=8), config)
        assert type(m.head.own) is kind and type(m.tok_emb) is kind, config

def test_a_file_says_how_it_is_built(files):
    out, _ = files
    header, _ = read_model_file(out['pruned int4'][0])
    assert json.loads(header['structure']) == [['quant', 'resnet_bk_compress.quant'], ['pruned', 'resnet_bk_compress.pruning']]
    header, _ = read_model_file(out['codebook table, 4-bit biases, compressed'][0])
    assert [k for k, _ in json.loads(header['structure'])] == ['table', 'quant', 'bias']
    assert json.loads(read_model_file(out['float'][0])[0]['structure']) == []

def _rewrite(src, dst, edit):
    "Copy a model file with its header entries changed by edit(header) (tensors untouched)."
    with safe_open(str(src), framework='pt') as f: header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(header); save_file(tensors, str(dst), metadata=header)
    return dst

def test_files_of_format_version_1_still_load(files, tmp_path):
    out, x = files
    def to_v1(h):  # what version 1 wrote: no checksum, no structure list; one 'table' entry held the table and the bias width
        h['format_version'] = '1'; del h['checksum']; kinds = [k for k, _ in json.loads(h.pop('structure'))]
        if 'bias' in kinds: h['table'] = json.dumps({**json.loads(h['table']), 'bias_bits': 4}); del h['bias']
    for name, (f, want) in out.items():
        with torch.no_grad(): assert torch.equal(load_model(_rewrite(f, tmp_path / 'v1.safetensors', to_v1))[0](x), want), name

def test_damaged_structure_entries_are_named(files, tmp_path):
    "Entries that pass the checksum (written so) but cannot be built: ModelFileError naming the file and the entry."
    f = files[0]['pruned int4'][0]
    with safe_open(str(f), framework='pt') as g: tensors = {k: g.get_tensor(k) for k in g.keys()}
    for edit, msg in [(dict(structure='[["quant", "os"]]'), "malformed 'structure'"),
                      (dict(structure='[["tiles", "resnet_bk_compress.tables"]]', tiles='{}'), "kinds ['tiles']"),
                      (dict(pruned='{"kept": [[0]]}'), "'pruned' entry")]:
        def change(h, edit=edit): h.update(edit); h['checksum'] = model_digest(h, tensors)
        bad = _rewrite(f, tmp_path / 'bad.safetensors', change)
        with pytest.raises(ModelFileError, match=re.escape(msg)) as e: load_model(bad)
        assert 'bad.safetensors' in str(e.value)

@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_damaged_file_is_refused_or_loads_the_same_model(files, tmp_path, data):
    "A flipped byte or a cut anywhere, in files of every kind: ModelFileError naming the file, or (a harmless byte such as header padding) the same logits."
    out, x = files
    name = data.draw(st.sampled_from(sorted(out)))
    src, want = out[name]
    blob = bytearray(Path(src).read_bytes())
    if data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(blob) - 1)); blob[i] ^= data.draw(st.integers(1, 255))
    else: blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    bad = tmp_path / 'damaged.safetensors'; bad.write_bytes(bytes(blob))
    try: m = load_model(bad)[0]
    except ModelFileError as e: assert 'damaged.safetensors' in str(e), e
    else:
        with torch.no_grad(): assert torch.equal(m(x), want), name

WRITER = """
import sys, torch
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.data import Vocab
from resnet_bk_compress.files import save_model
torch.manual_seed(1)
m = ResNetBKLM(ResNetBKConfig(vocab_size=30_000, d_model=64, n_layers=1))
vocab = Vocab([f'w{i}' for i in range(29_998)])
print('ready', flush=True)
while True: save_model(m, sys.argv[1], vocab)
"""

def test_a_save_killed_at_any_moment_leaves_a_good_file(tmp_path):
    "SIGKILL a process that keeps writing a 16 MB model over a good file: the file always loads, as the old model or the new one, whole."
    from resnet_bk_compress.data import Vocab
    path = tmp_path / 'model.safetensors'
    torch.manual_seed(0)
    old = ResNetBKLM(ResNetBKConfig(vocab_size=30_000, d_model=64, n_layers=1)).eval()
    save_model(old, path, Vocab([f'w{i}' for i in range(29_998)]))
    torch.manual_seed(1); new = ResNetBKLM(ResNetBKConfig(vocab_size=30_000, d_model=64, n_layers=1)).eval()
    x = torch.arange(16)[None]
    with torch.no_grad(): want = {'old': old(x), 'new': new(x)}
    rnd, seen = random.Random(0), set()
    for _ in range(4):
        p = subprocess.Popen([sys.executable, '-c', WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == 'ready'
        time.sleep(rnd.uniform(0.05, 1.5))
        p.send_signal(signal.SIGKILL); p.wait()
        with torch.no_grad(): got = load_model(path)[0](x)
        which = [k for k, v in want.items() if torch.equal(got, v)]
        assert len(which) == 1; seen.add(which[0])
    # what a killed writer leaves behind (its temporary file) is removed by the next save once that process is gone
    save_model(old, path, Vocab([f'w{i}' for i in range(29_998)]))
    assert sorted(f.name for f in tmp_path.iterdir()) == ['model.safetensors']

def test_settings_are_checked_before_the_run_directory_is_touched(syn, tmp_path):
    t = small_model(syn)
    for kw, msg in [(dict(student=dict(d_model=8, n_layer=1)), "unknown student settings ['n_layer']"),
                    (dict(student=dict(d_model=-8)), 'd_model must be a positive integer'),
                    (dict(distill=dict(alpha=2.)), 'alpha=2.0'),
                    (dict(distill=dict(targets='topk', k=0)), 'k=0'),
                    (dict(distill=dict(T=0)), 'T=0')]:
        with pytest.raises(InputError, match=msg.replace('[', r'\[').replace(']', r'\]')): CompressionPipeline(t, syn.vocab, **kw)
    assert not list(tmp_path.iterdir())

def test_the_command_line_keeps_tracebacks_for_bugs():
    def bug(argv): raise ValueError('an internal error')
    def bad_input(argv): raise InputError('a bad setting')
    with pytest.raises(ValueError, match='internal'): run_command(bug, [], 'x')  # a bug is not turned into a one-line usage error
    with pytest.raises(SystemExit) as e: run_command(bad_input, [], 'x')
    assert e.value.code == 2

def test_one_source_of_run_defaults():
    "run_pipeline, rbk-compress and bench/pipeline_wt2.py take their epochs from RUN_EPOCHS (they disagreed: 5/3/3 against 2/0.5/0.5)."
    import inspect
    from resnet_bk_compress.settings import RUN_EPOCHS
    from resnet_bk_compress.cli import _compress_args
    sig = inspect.signature(CompressionPipeline.run_pipeline).parameters
    assert {k: sig[k].default for k in RUN_EPOCHS} == RUN_EPOCHS
    assert {k: getattr(_compress_args([]), k) for k in RUN_EPOCHS} == RUN_EPOCHS
    bench = (Path(__file__).parents[1] / 'bench' / 'pipeline_wt2.py').read_text()
    assert 'RUN_EPOCHS.items()' in bench and 'add_argument(\'--distillation-epochs\'' not in bench

def test_peak_memory_units(monkeypatch):
    "ru_maxrss counts kilobytes on Linux and bytes on macOS."
    import resource
    from resnet_bk_compress import pipeline
    monkeypatch.setattr(resource, 'getrusage', lambda who: type('R', (), {'ru_maxrss': 2 ** 30})())
    monkeypatch.setattr(sys, 'platform', 'darwin'); assert pipeline._peak_mb() == 1024
    monkeypatch.setattr(sys, 'platform', 'linux'); assert pipeline._peak_mb() == 2 ** 20

def test_quantizing_a_pruned_model_keeps_its_original_expert_indices(syn):
    m = pruned_small(syn, small_model(syn), keep=2)
    kept = [b.moe.kept for b in m.blocks]
    q = quantized_small(syn, m, Int4MoEConfig(group_size=16))
    assert [b.moe.kept for b in q.blocks] == kept  # the file records these, not 0..n-1

def test_loading_imports_only_the_modules_files_kinds_names(files, tmp_path):
    "A file of any version loads with no module imported but those KINDS names for its layers (and what they import)."
    from resnet_bk_compress.files import KINDS, register_structure
    out, _ = files
    def to_v1(h):
        h['format_version'] = '1'; del h['checksum']; kinds = [k for k, _ in json.loads(h.pop('structure'))]
        if 'bias' in kinds: h['table'] = json.dumps({**json.loads(h['table']), 'bias_bits': 4}); del h['bias']
    v1 = _rewrite(out['codebook table, 4-bit biases, compressed'][0], tmp_path / 'v1.safetensors', to_v1)
    for f in (out['pruned int4'][0], v1):
        code = ("import sys; from resnet_bk_compress.files import load_model; load_model(sys.argv[1]); "
                "print(sorted(m for m in sys.modules if m.startswith('resnet_bk_compress.')))")
        loaded = json.loads(subprocess.run([sys.executable, '-c', code, str(f)], capture_output=True, text=True, check=True,
                                           timeout=300).stdout.replace("'", '"'))
        assert set(loaded) <= {'resnet_bk_compress.' + m for m in ('files', 'coding', 'model', 'data', 'quant', 'int4_moe', 'tables',
                                                                   'pruning', 'train')}, loaded
        assert not {'resnet_bk_compress.pipeline', 'resnet_bk_compress.export', 'resnet_bk_compress.generate'} & set(loaded), loaded
    with pytest.raises(ValueError, match='not in files.KINDS'): register_structure('tiles', len, len, order=50)
    assert set(KINDS.values()) == {'resnet_bk_compress.tables', 'resnet_bk_compress.quant', 'resnet_bk_compress.pruning'}
