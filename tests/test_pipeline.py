import json, math, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.files import save_model, load_model, ModelFileError, file_bytes
from resnet_bk_compress.train import fit
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.settings import PipelineError, STAGES, Student
from resnet_bk_compress.files import load_compressed, COMPRESSED_VERSION
from resnet_bk_compress.model import InputError
from conftest import sealed, fresh_process_logits, train_small

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=300, n_train=30_000, n_eval=3_000)

@pytest.fixture(scope='module')
def teacher(syn): return train_small(syn, 40)

@pytest.fixture(scope='module')
def run(syn, teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp('pipe') / 'run'
    pipe = CompressionPipeline(teacher, syn.vocab, target_compression=5, max_ppl_increase=1., batch_size=16, calib_batches=4,
                               student=dict(d_model=16, n_layers=1, num_experts=2, tie_embeddings=True))
    rep = pipe.run_pipeline(syn, max_steps=8, save_dir=d, progress=False)
    return pipe, rep, d

def test_report_has_every_field_and_is_consistent(run):
    _, rep, d = run
    on_disk = json.loads((d / 'report.json').read_text())
    for k in ('teacher_bytes', 'compressed_bytes', 'compression_ratio', 'teacher_ppl', 'compressed_ppl', 'ppl_increase', 'unigram_ppl', 'target_met', 'stages'):
        assert k in on_disk, k
    assert [s['name'] for s in rep['stages']] == list(STAGES)
    assert all({'name', 'bytes', 'ppl', 'seconds'} <= set(s) for s in rep['stages'])
    assert rep['compressed_bytes'] == file_bytes(rep['compressed_file']) == rep['stages'][-1]['bytes']
    assert rep['compression_ratio'] == pytest.approx(rep['teacher_bytes'] / rep['compressed_bytes'])
    assert rep['ppl_increase'] == pytest.approx(rep['compressed_ppl'] / rep['teacher_ppl'] - 1)
    assert rep['target_met'] == (rep['compression_ratio'] >= 5 and rep['ppl_increase'] <= 1.)
    assert rep['stages'][0]['bytes'] < rep['teacher']['bytes'] and rep['stages'][2]['bytes'] < rep['stages'][1]['bytes']
    assert (d / 'report_stages.png').stat().st_size > 10_000 and (d / 'report_frontier.png').stat().st_size > 10_000
    assert not list(d.glob('*.ckpt')) and not list(d.glob('.*tmp*'))

def test_compressed_file_loads_in_a_fresh_process(run, tmp_path):
    _, rep, _ = run
    model, vocab, info = load_compressed(rep['compressed_file'])
    x = torch.randint(0, len(vocab), (2, 32))
    with torch.no_grad(): here = model(x)
    assert torch.equal(fresh_process_logits('resnet_bk_compress.files.load_compressed', rep['compressed_file'], x, tmp_path), here)
    assert info['version'] == COMPRESSED_VERSION and info['history'] == list(STAGES)
    with safe_open(rep['compressed_file'], 'pt') as f:
        assert 'vocab@words' in f.keys() and {'quant', 'pruned', 'compressed'} <= set(f.metadata())

def test_bad_compressed_files(run, syn, teacher, tmp_path):
    _, rep, _ = run
    raw = Path(rep['compressed_file']).read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ModelFileError, match='truncated'): load_compressed(tmp_path / 'cut.safetensors')
    flipped = bytearray(raw); flipped[20:60] = b'\xff' * 40  # the JSON header, damaged
    (tmp_path / 'bad.safetensors').write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError): load_compressed(tmp_path / 'bad.safetensors')
    with safe_open(rep['compressed_file'], 'pt') as f: header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / 'v9.safetensors'), metadata=sealed({**header, 'compressed': json.dumps({'version': 9})}, tensors))
    with pytest.raises(ModelFileError, match='version 9'): load_compressed(tmp_path / 'v9.safetensors')
    save_model(teacher, tmp_path / 'plain.safetensors', syn.vocab)
    with pytest.raises(ModelFileError, match='not one the pipeline wrote'): load_compressed(tmp_path / 'plain.safetensors')
    torch.save({'x': 1}, tmp_path / 'ckpt.safetensors')
    with pytest.raises(ModelFileError, match='not a readable safetensors'): load_compressed(tmp_path / 'ckpt.safetensors')
    with pytest.raises(FileNotFoundError): load_compressed(tmp_path / 'missing.safetensors')

def test_pipeline_argument_errors(syn, teacher, run):
    with pytest.raises(ValueError, match='unknown stages'): CompressionPipeline(teacher, syn.vocab, stages=('distill', 'sparsify'))
    with pytest.raises(ValueError, match="'quantize' must be the last"): CompressionPipeline(teacher, syn.vocab, stages=('quantize', 'prune'))
    with pytest.raises(ValueError, match='twice'): CompressionPipeline(teacher, syn.vocab, stages=('prune', 'prune'))
    pipe, _, d = run
    with pytest.raises(PipelineError, match='already holds'): pipe.run_pipeline(syn, save_dir=d, progress=False)
    other = synthetic_corpus(vocab_size=50, n_train=5_000, n_eval=1_000)
    with pytest.raises(PipelineError, match='vocabulary'): pipe.run_pipeline(other, save_dir=d / 'x', progress=False)

def test_the_report_counts_the_steps_each_stage_trained(syn, teacher, run, tmp_path):
    "A prune stage that prunes nothing retrains nothing, and its record says 0 steps (not the steps it was given)."
    _, rep, _ = run  # 2 experts a block, 1 kept: pruned, then retrained
    assert [s['steps'] for s in rep['stages']] == [8, 8, 8]
    for s in rep['stages']:  # each stage's training curve ends at its last step, with a finite loss
        assert s['curve'][-1][0] == 8 and all(math.isfinite(loss) for _, loss in s['curve']), s['curve']
        assert 0 < s['train_s'] < s['seconds']  # the steps alone: no building of targets, probing or scoring
    pipe = CompressionPipeline(teacher, syn.vocab, stages=('prune', 'quantize'), keep_experts=4, batch_size=16, calib_batches=2)
    rep = pipe.run_pipeline(syn, max_steps=3, save_dir=tmp_path / 'r', progress=False)  # the teacher has 4: none pruned
    assert [s['steps'] for s in rep['stages']] == [0, 3] and rep['stages'][0]['params'] == rep['teacher']['params']
    assert rep['stages'][1]['params'] == rep['stages'][0]['params']  # packed, the same weights are counted
    assert (rep['stages'][0]['curve'], rep['stages'][0]['train_s']) == ([], 0) and rep['stages'][1]['curve'][-1][0] == 3

def test_stages_subset_and_resume_after_the_last_stage(syn, teacher, tmp_path):
    pipe = CompressionPipeline(teacher, syn.vocab, stages=('prune', 'quantize'), keep_experts=2, batch_size=16, calib_batches=2)
    rep = pipe.run_pipeline(syn, max_steps=3, save_dir=tmp_path / 'r', progress=False)
    assert [s['name'] for s in rep['stages']] == ['prune', 'quantize']
    again = pipe.run_pipeline(syn, max_steps=3, save_dir=tmp_path / 'r', resume=True, progress=False)  # nothing left to do
    assert again['compressed_bytes'] == rep['compressed_bytes'] and again['stages'] == rep['stages']

def test_a_stage_that_raises_keeps_the_finished_stages_and_resume_continues(syn, teacher, run, tmp_path, monkeypatch):
    "A crash in the quantize stage (as on the H200) loses nothing: the distill and prune files stay, and resume runs only what is left."
    pipe0, rep0, _ = run
    pipe = CompressionPipeline(teacher, syn.vocab, target_compression=5, max_ppl_increase=1., batch_size=16, calib_batches=4,
                               student=dict(d_model=16, n_layers=1, num_experts=2, tie_embeddings=True))
    def crash(self, *a, **kw): raise RuntimeError('Expected all tensors to be on the same device')
    with monkeypatch.context() as m:
        m.setattr(CompressionPipeline, '_stage_quantize', crash)
        with pytest.raises(RuntimeError, match='same device'): pipe.run_pipeline(syn, max_steps=8, save_dir=tmp_path / 'r', progress=False)
    state = json.loads((tmp_path / 'r' / 'state.json').read_text())
    assert [s['name'] for s in state['stages']] == ['distill', 'prune']
    kept = {f: (tmp_path / 'r' / f).stat().st_mtime_ns for f in ('stage1_distill.safetensors', 'stage2_prune.safetensors')}
    with pytest.raises(PipelineError, match='resume'): pipe.run_pipeline(syn, max_steps=8, save_dir=tmp_path / 'r', progress=False)
    rep = pipe.run_pipeline(syn, max_steps=8, save_dir=tmp_path / 'r', resume=True, progress=False)
    assert [s['name'] for s in rep['stages']] == list(STAGES)
    assert {f: (tmp_path / 'r' / f).stat().st_mtime_ns for f in kept} == kept  # not redone
    assert rep['compressed_bytes'] == rep0['compressed_bytes'] and rep['compressed_ppl'] == pytest.approx(rep0['compressed_ppl'], rel=1e-6)

def test_a_time_budget_sizes_distillation(syn, teacher, tmp_path, monkeypatch):
    "With minutes, distillation gets the budget's time left after the later stages, at the step speeds the run measures."
    monkeypatch.setattr(CompressionPipeline, '_seconds_per_step', lambda self, m, c, objective=None, lr=0., steps=3:
                        1. if objective is not None else 0.5)  # seconds a step of distillation, of QAT
    pipe = CompressionPipeline(teacher, syn.vocab, target_compression=5, max_ppl_increase=1., batch_size=16, calib_batches=4,
                               student=dict(d_model=16, n_layers=1, num_experts=2, tie_embeddings=True))
    def crash(self, *a, **kw): raise RuntimeError('killed')
    with monkeypatch.context() as m:  # killed after distilling: the decided schedule is in the run's state
        m.setattr(CompressionPipeline, '_stage_prune', crash)
        with pytest.raises(RuntimeError): pipe.run_pipeline(syn, save_dir=tmp_path / 'r', progress=False, minutes=2, spent_seconds=30)
    b = json.loads((tmp_path / 'r' / 'state.json').read_text())['budget']
    assert b['qat_steps'] > 0 and b['qat_step_s'] == 0.5 and b['distill_step_s'] == 1.
    left = (120 - 30 - b['started_s'] - b['qat_steps'] * 0.5 - b['reserve_s']) / 1.1  # what distillation could have, less a 10% margin
    assert 1 < b['distill_steps'] <= left  # less the distill stage's own set-up (its student, the cached targets), timed as it runs
    rep = pipe.run_pipeline(syn, save_dir=tmp_path / 'r', resume=True, progress=False, minutes=2, spent_seconds=0)
    assert rep['stages'][0]['steps'] == b['distill_steps'] and rep['budget']['spent_before_s'] == 30  # the first call's
    assert any(line.startswith('time budget 2 min') for line in rep['verdict'])
    with pytest.raises(InputError, match='minutes > 0'): pipe.run_pipeline(syn, save_dir=tmp_path / 'x', minutes=0)

def _cli(*args, **kw):
    return subprocess.run([sys.executable, '-c', 'from resnet_bk_compress.cli import rbk_compress; rbk_compress()', *args],
                          capture_output=True, text=True, timeout=600, **kw)

def test_cli_killed_mid_stage_resumes(tmp_path):
    out = tmp_path / 'run'
    syn = synthetic_corpus()  # the CLI's corpus: a small teacher for it, so that the test spends its time in the pipeline
    torch.manual_seed(0)
    t = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=2, n_seq=32))
    fit(t, syn, max_steps=20, batch_size=16, lr=5e-3, eval_split=None, progress=False)
    save_model(t, tmp_path / 'teacher.safetensors', syn.vocab)
    args = ['--out', str(out), '--no-progress', '--teacher', str(tmp_path / 'teacher.safetensors'), '--student-d-model', '8', '--student-layers', '1',
            '--max-steps', '70', '--distillation-epochs', '1', '--pruning-epochs', '0.1', '--qat-epochs', '0.1']
    p = subprocess.Popen([sys.executable, '-c', 'from resnet_bk_compress.cli import rbk_compress; rbk_compress()', *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not (out / 'stage1.ckpt').exists():  # the distill stage has written its first checkpoint: kill it mid-stage
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() - t0 < 900, sorted(x.name for x in out.iterdir()) if out.exists() else 'no output directory'
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    state = json.loads((out / 'state.json').read_text())
    assert state['stages'] == []  # nothing finished yet: the run resumes inside the first stage
    stage0_mtime = (out / 'stage0_teacher.safetensors').stat().st_mtime
    r = _cli(*args, '--resume')
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / 'report.json').read_text())
    assert [s['name'] for s in rep['stages']] == list(STAGES)
    assert (out / 'stage0_teacher.safetensors').stat().st_mtime == stage0_mtime  # the finished work was not redone
    assert 'compression_ratio' in r.stdout and ('met' in r.stdout)

def test_cli_bad_input_is_one_line(tmp_path):
    for args, msg in [(['--teacher', str(tmp_path / 'nope.safetensors')], 'no such file'),
                      (['--stages', 'distill,fold'], 'unknown stages'),
                      (['--target', '-3'], 'must be positive'),
                      (['--minutes', '0'], '--minutes must be positive'),
                      (['--device', 'gpu0'], "unknown device 'gpu0'"),
                      *([] if torch.cuda.is_available() else [(['--device', 'cuda'], "pass device='cpu'")]),
                      (['--data', str(tmp_path)], '')]:
        r = _cli('--out', str(tmp_path / 'o'), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert 'Traceback' not in r.stderr and r.stderr.strip().count('\n') == 0 and msg in r.stderr, r.stderr
    assert not (tmp_path / 'o').exists()  # refused before anything was written
    (tmp_path / 'junk.safetensors').write_bytes(b'not a model')
    r = _cli('--out', str(tmp_path / 'o2'), '--teacher', str(tmp_path / 'junk.safetensors'))
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'junk.safetensors' in r.stderr

def test_rbk_eval_reads_every_file_the_library_writes(run, syn, teacher, tmp_path):
    "rbk-eval scores plain, quantized and compressed files exactly as the model loaded from them scores in Python."
    import copy
    from resnet_bk_compress.files import load_model
    from resnet_bk_compress.train import eval_main, evaluate
    from resnet_bk_compress.data import encode_file, train_batches
    from resnet_bk_compress.quant import Int8Config, quantize_, calibrating
    _, rep, d = run
    q = quantize_(copy.deepcopy(teacher), Int8Config())
    with calibrating(q), torch.no_grad():
        for x, _ in list(train_batches(syn.train, 32, 8))[:2]: q(x)
    files = [(save_model(teacher, tmp_path / 'plain.safetensors', syn.vocab), load_model),
             (save_model(quantize_(q, Int8Config(), 'convert'), tmp_path / 'int8.safetensors', syn.vocab), load_model),
             *[(d / f'stage{i}_{s}.safetensors', load_compressed) for i, s in enumerate(('teacher',) + STAGES)]]
    text = tmp_path / 'text.txt'; text.write_text(' '.join(syn.vocab.decode(syn.test[:1500])))
    for path, load in files:
        model, vocab, _ = load(path)
        ids, _ = encode_file(text, vocab)
        assert eval_main([str(path), '--text', str(text)])['ppl'] == pytest.approx(evaluate(model, ids)['ppl'], rel=1e-5), path.name

@pytest.mark.parametrize('top_k', [1, 2])
def test_the_planner_runs_top_1_and_top_2_teachers_end_to_end(tmp_path, top_k):
    "rbk-compress --teacher with the planner's student (one expert a layer): a top-2 teacher crashed in the distill stage."
    syn = synthetic_corpus()
    torch.manual_seed(0)
    # the teacher (rbk-train --d-model 48 --n-layers 3 --num-experts 8), for a few steps
    t = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=48, n_layers=3, n_seq=32, num_experts=8, top_k=top_k))
    fit(t, syn, max_steps=10, batch_size=16, lr=5e-3, eval_split=None, progress=False)
    save_model(t, tmp_path / 'own.safetensors', syn.vocab)
    r = _cli('--teacher', str(tmp_path / 'own.safetensors'), '--target', '20', '--out', str(tmp_path / 'run'), '--no-progress',
             '--max-steps', '3', '--distillation-epochs', '1', '--pruning-epochs', '0.1', '--qat-epochs', '0.1')
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / 'run' / 'report.json').read_text())
    assert rep['plan']['keep_experts'] < top_k or top_k == 1  # the plan keeps fewer experts than a top-2 teacher routes to
    # the INT4 table's zero points are stored sparse, and how many are 0 depends on training: a few bytes either way
    assert abs(rep['compressed_bytes'] - rep['plan']['predicted_bytes']) <= 0.001 * rep['plan']['predicted_bytes'], rep
    m, _, _ = load_compressed(rep['compressed_file'])
    assert all(b.moe.num_experts == rep['plan']['keep_experts'] and b.moe.top_k == min(top_k, b.moe.num_experts)
               for b in m.blocks)


@pytest.mark.parametrize('version', ['a2e8543', 'd606095'])
def test_a_run_directory_of_an_earlier_version_resumes(version, tmp_path):
    """tests/data/old_runs: a planned run with a time budget, written by the library at `version` and stopped after its distill
    stage, resumes: it keeps its own plan (a2e8543's student predates the planned dropout 0) and budget, and finishes."""
    src = Path(__file__).parent / 'data' / 'old_runs' / version
    shutil.copytree(src / 'run', tmp_path / 'run')
    before = json.loads((tmp_path / 'run' / 'state.json').read_text())
    teacher, vocab, _ = load_model(src / 'teacher.safetensors')
    syn = synthetic_corpus(vocab_size=300, n_train=30_000, n_eval=3_000)
    pipe = CompressionPipeline(teacher, vocab, target_compression=15, max_ppl_increase=1., batch_size=16, calib_batches=4)
    rep = pipe.run_pipeline(syn, save_dir=tmp_path / 'run', resume=True, progress=False, minutes=1, max_steps=4)
    assert [s['name'] for s in rep['stages']] == list(STAGES) and rep['stages'][0] == before['stages'][0]
    assert pipe.student == Student.from_dict(before['settings']['student']) and pipe.student.dropout == (None if version == 'a2e8543' else 0.)
    assert rep['budget']['distill_steps'] == before['budget']['distill_steps'] and rep['compression_ratio'] >= 15
    # the report names the run's plan, from its state where the version kept it, else from its settings
    assert (rep['plan']['table'], rep['plan']['keep_experts']) == (before['settings']['table'], before['settings']['keep_experts'])
    assert rep['plan']['predicted_bytes'] == (before.get('plan') or {}).get('predicted_bytes')
    with pytest.raises(PipelineError, match='used other settings'):  # a setting that the run's version did write is compared
        pipe.run_pipeline(syn, save_dir=tmp_path / 'run', resume=True, progress=False, minutes=1, max_steps=5)
