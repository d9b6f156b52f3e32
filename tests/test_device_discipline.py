"""Device discipline, checked on a CPU: with `meta` as PyTorch's default device, a tensor or a layer that a library path makes
without naming its device lands on `meta`, and the first operation that mixes it with the model's CPU tensors raises. On a GPU
the same line makes a CPU tensor beside CUDA ones: the crash an H200 run hit in the quantize stage (GroupWiseQuantizer.qparams).
Every path that trains, quantizes, prunes, plans, scores, generates or exports runs here under `meta`, and must give what it
gives without it."""
import copy, json
from collections import Counter
from contextlib import contextmanager, nullcontext
import pytest
import torch
from resnet_bk_compress.data import synthetic_corpus, train_batches
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.files import save_model, load_model
from resnet_bk_compress.train import evaluate, fit
from resnet_bk_compress.quant import Int8Config, quantize_, calibrating
from resnet_bk_compress.complex_quant import ComplexInt8Config
from resnet_bk_compress.int4_moe import GroupWiseQuantizer, Int4MoEConfig
from resnet_bk_compress.pruning import MagnitudePruner, expert_stats, prune_experts_
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.checks import pipeline_check
from resnet_bk_compress.files import load_compressed
from conftest import train_small

@contextmanager
def meta_default():
    "PyTorch's default device set to `meta` inside the block: a tensor made without a device cannot reach the model's."
    with torch.device('meta'): yield
    assert torch.empty(0).device.type == 'cpu'

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)

@pytest.fixture(scope='module')
def teacher(syn): return train_small(syn, 20)

def test_meta_default_catches_a_tensor_made_without_a_device():
    "The harness itself: the kind of line the H200 run crashed on fails under it (a check that can fail)."
    w = torch.randn(4, 8)
    with meta_default(), pytest.raises((RuntimeError, NotImplementedError)): (w * torch.ones(w.shape[1])).sum().item()

def test_the_h200_crash_group_wise_qparams():
    "GroupWiseQuantizer.qparams made its activation weights on the default device (cuda:0 vs cpu on the H200)."
    w = torch.randn(16, 64)
    q = GroupWiseQuantizer(group_size=16, method='mse')
    ref = q.qparams(w)
    with meta_default():
        q2 = GroupWiseQuantizer(group_size=16, method='mse')  # built in the block: its clipping ratios too
        got = q2.qparams(w)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))

def _calibrated(m, syn, config, meta: bool):
    with meta_default() if meta else nullcontext():
        quantize_(m, config)
        with calibrating(m), torch.no_grad():
            for x, _ in list(train_batches(syn.train, 32, 8))[:2]: m(x)
        return quantize_(m.eval(), config, 'convert')

@pytest.mark.parametrize('config', [Int8Config(), ComplexInt8Config(), Int4MoEConfig(group_size=16, embedding_bits=4),
                                    Int4MoEConfig(group_size=16, method='mse')], ids=['int8', 'complex', 'int4 gptq', 'int4 mse'])
def test_quantize_prepare_calibrate_convert(teacher, syn, config):
    "New layers are built where the layers they replace live: the converted model is the one made without meta."
    ref, got = _calibrated(copy.deepcopy(teacher), syn, config, False), _calibrated(copy.deepcopy(teacher), syn, config, True)
    x = syn.test[:64].reshape(2, 32)
    with torch.no_grad(): assert torch.equal(ref(x), got(x))
    assert all(t.device.type == 'cpu' for t in [*got.parameters(), *got.buffers()])

def test_train_score_prune_save_load(teacher, syn, tmp_path):
    m = copy.deepcopy(teacher)
    with meta_default():
        fit(m, syn, max_steps=3, batch_size=8, eval_split='valid', progress=False, checkpoint=tmp_path / 'c.ckpt', checkpoint_every=2)
        ppl = evaluate(m, syn.test)['ppl']
        with torch.no_grad(): stats = expert_stats(m, [x for x, _ in list(train_batches(syn.train, 32, 8))[:2]])
        prune_experts_(m, stats, keep=2)
        MagnitudePruner(m).prune(sparsity=0.5)
        path = save_model(m, tmp_path / 'm.safetensors', syn.vocab)
        back, _, _ = load_model(path)
        assert evaluate(back, syn.test)['ppl'] == pytest.approx(evaluate(m, syn.test)['ppl'], rel=1e-5)
    assert ppl > 1

@contextmanager
def recorded_moves(monkeypatch):
    "Every `.to`, `.cpu` and `.cuda` call on a whole model, by model (id): the convention is at most one move each."
    moved = Counter()
    for name in ('to', 'cpu', 'cuda'):
        def move(self, *a, _f=getattr(ResNetBKLM, name), **k):
            moved[id(self)] += 1
            return _f(self, *a, **k)
        monkeypatch.setattr(ResNetBKLM, name, move)
    yield moved

def test_planned_pipeline_with_baseline(teacher, syn, tmp_path, monkeypatch):
    """The planner, every stage (student built from the teacher, k-means table, cached targets, pruning, INT4 QAT) and the
    baseline; the teacher given is never moved, and no model is moved twice (00_model: where a model moves)."""
    with meta_default(), recorded_moves(monkeypatch) as moved:
        pipe = CompressionPipeline(teacher, syn.vocab, target_compression=8, batch_size=16, calib_batches=2)
        rep = pipe.run_pipeline(syn, max_steps=3, save_dir=tmp_path / 'run', progress=False, device='cpu', baseline=True)
    assert id(teacher) not in moved and moved and max(moved.values()) == 1, moved
    model, vocab, _ = load_compressed(rep['compressed_file'])
    assert evaluate(model, syn.with_vocab(vocab).test)['ppl'] == pytest.approx(rep['compressed_ppl'], rel=1e-5)
    assert pipe.planned is not None and 'baseline' in rep
    assert rep['baseline']['params'] == rep['stages'][-1]['params']  # the same architecture, its weights counted alike

def test_pipeline_check(teacher):
    with meta_default(): figs = pipeline_check('cpu', steps=2)
    assert figs['stages'] == ['distill', 'prune', 'quantize']

def test_command_lines(tmp_path, syn):
    "rbk-train, rbk-eval, rbk-compress (teacher given), rbk-generate and rbk-export, each in this process under meta."
    from resnet_bk_compress.train import train_main, eval_main
    from resnet_bk_compress.cli import compress_main
    from resnet_bk_compress.generate import generate_main
    from resnet_bk_compress.export import export_main
    t = tmp_path / 't.safetensors'
    with meta_default():
        train_main(['--out', str(t), '--max-steps', '3', '--d-model', '16', '--n-layers', '2', '--n-seq', '32', '--no-progress'])
        eval_main([str(t), '--data', 'synthetic'])
        rep = compress_main(['--teacher', str(t), '--out', str(tmp_path / 'c'), '--target', '4', '--max-steps', '2', '--no-progress',
                             '--minutes', '5'])  # the time budget's probes too
        text = generate_main([rep['compressed_file'], '--max-new-tokens', '5', '--seed', '0'])
        export_main([rep['compressed_file'], '--onnx', str(tmp_path / 'm.onnx')])
    assert rep['stages'][0]['steps'] == 2 and rep['budget']['distill_step_s'] > 0 and isinstance(text, str)
    assert (tmp_path / 'm.onnx').stat().st_size > 1000
    assert json.loads((tmp_path / 'c' / 'report.json').read_text())['compressed_bytes'] == rep['compressed_bytes']

def test_distillation_with_a_live_teacher_and_the_explorer(teacher, syn):
    "Dense targets from a live teacher with block features (projections built on the fly), and the explorer's measured grid."
    from resnet_bk_compress.distill import DistillationTrainer, make_student
    from resnet_bk_compress.explore import CompressionExplorer
    with meta_default():
        st = make_student(teacher, d_model=16, n_layers=1)
        tr = DistillationTrainer(teacher, st, syn, targets='dense', features=('bk', 'block'))
        hist = tr.fit(max_steps=2, batch_size=8, eval_split=None, progress=False)
        ex = CompressionExplorer(copy.deepcopy(teacher), syn, bits=(4,), group_sizes=(16,), thresholds=(0.,), calib_batches=1, batch_size=4)
        pts = ex.grid()
    assert hist[-1]['steps'] == 2 and pts[0]['bytes'] < ex.float_bytes
