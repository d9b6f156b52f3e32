import os, subprocess, sys, textwrap
import pytest
import torch
from resnet_bk_compress.data import synthetic_corpus, windows_at
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, num_params
from resnet_bk_compress.files import load_model
from resnet_bk_compress.train import CheckpointError
from resnet_bk_compress.distill import (soft_loss, hard_loss, distill_loss, chunked_distill_loss, DenseTeacher, TopKTeacher,
                                        layer_map, make_student, TeacherTargets, DistillationObjective, DistillationTrainer,
                                        distill_cascade)
from conftest import train_small

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=200, n_train=20_000, n_eval=2_000)

@pytest.fixture(scope='module')
def teacher(syn): return train_small(syn, 30, n_layers=3, dropout=0.)

def _no_hooks(*models): return not any(m._forward_hooks or m._forward_pre_hooks for net in models for m in net.modules())

@pytest.mark.parametrize('n,chunk,alpha,T', [(97, 32, 0.5, 2.), (64, 64, 1., 1.), (50, 7, 0.3, 4.), (33, 128, 0., 2.)])
def test_chunked_loss_matches_textbook(n, chunk, alpha, T):
    V, d = 90, 8
    h, W, b = torch.randn(n, d, requires_grad=True), torch.randn(V, d, requires_grad=True), torch.randn(V, requires_grad=True)
    y, th, tW, tb = torch.randint(0, V, (n,)), torch.randn(n, 12), torch.randn(V, 12), torch.randn(V)
    t_logits = th @ tW.T + tb
    ref = distill_loss(h @ W.T + b, t_logits, y, alpha=alpha, T=T)
    g_ref = torch.autograd.grad(ref, (h, W, b))
    for teacher in (DenseTeacher(th, tW, tb), TopKTeacher(*(t_logits / T).log_softmax(-1).topk(V)[::-1])):
        loss, ce, kl = chunked_distill_loss(h, W, b, y, teacher, T=T, alpha=alpha, chunk=chunk)
        torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ce, hard_loss(h @ W.T + b, y), rtol=1e-4, atol=1e-5)
        if alpha: torch.testing.assert_close(kl, soft_loss(h @ W.T + b, t_logits, T) / T**2, rtol=1e-4, atol=1e-5)
        for a_, b_ in zip(torch.autograd.grad(loss, (h, W, b)), g_ref): torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-5)

def test_topk_bucket_is_a_lower_bound_and_exact_at_full_k():
    V = 60
    s, t = torch.randn(40, V), torch.randn(40, V) * 2
    full = soft_loss(s, t, 2.) / 4
    prev = 0.
    for k in (1, 5, 20, 59, 60):
        lp, idx = (t / 2).log_softmax(-1).topk(k, -1)
        _, _, kl = chunked_distill_loss(s, torch.eye(V), torch.zeros(V), torch.zeros(40, dtype=torch.long),  # logits = s @ I
                                        TopKTeacher(idx, lp), T=2., alpha=1.)
        assert prev - 1e-5 <= kl <= full + 1e-5  # finer bins, larger KL, never above the full KL
        prev = kl
    torch.testing.assert_close(kl, full, rtol=1e-4, atol=1e-6)

def test_loss_argument_errors():
    h, W, b, y = torch.randn(4, 3), torch.randn(10, 3), torch.zeros(10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match='alpha'): chunked_distill_loss(h, W, b, y, None, alpha=1.5)
    with pytest.raises(ValueError, match='temperature'): chunked_distill_loss(h, W, b, y, None, T=0., alpha=0.)
    with pytest.raises(ValueError, match='teacher'): chunked_distill_loss(h, W, b, y, None, alpha=0.5)
    with pytest.raises(ValueError, match='tokens, k'): TopKTeacher(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match='layer counts'): layer_map(0, 4)

def test_trainer_leaves_teacher_frozen_and_no_hooks(syn, teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = make_student(teacher, d_model=16, n_layers=2, num_experts=2)
    tr = DistillationTrainer(teacher, student, syn, features=('bk', 'block'))
    assert tr.objective.proj is not None and not any(p is q for p in tr.objective.parameters() for q in teacher.parameters())
    assert not any(k.startswith('teacher') for k in tr.objective.state_dict())
    w0 = tr.objective.proj[0].weight.clone()
    tr.fit(max_steps=3, batch_size=8, eval_split=None, progress=False)
    assert not teacher.training and _no_hooks(teacher, student)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(w0, tr.objective.proj[0].weight)  # the projection is trained with the student

def test_hooks_removed_when_forward_fails(syn, teacher):
    student = make_student(teacher, d_model=16)
    obj = DistillationObjective(student, teacher, beta=0.1, features=('bk', 'block'))
    x, y = windows_at(syn.train, torch.tensor([0, 32]), 32)
    with pytest.raises(ValueError): obj(x[:, :40].repeat(1, 2), y)  # a window longer than n_seq fails inside the student
    assert _no_hooks(teacher, student)

def test_objective_argument_errors(syn, teacher):
    s = make_student(teacher, d_model=16)
    with pytest.raises(ValueError, match='vocabulary'):
        DistillationObjective(ResNetBKLM(ResNetBKConfig(vocab_size=7, d_model=8, n_layers=1, n_seq=8)), teacher)
    with pytest.raises(ValueError, match='unknown features'): DistillationObjective(s, teacher, features=('logits',))
    with pytest.raises(ValueError, match='teacher layer'): DistillationObjective(s, teacher, layers=[0, 5, 1])
    with pytest.raises(ValueError, match="targets='cached'"): DistillationTrainer(teacher, s, syn, targets='cached')
    tt = TeacherTargets(teacher, syn.train[:2000], k=4)
    with pytest.raises(ValueError, match='BK features only'): DistillationObjective(s, teacher, features=('block',), targets=tt)
    with pytest.raises(ValueError, match='k must be'): TeacherTargets(teacher, syn.train[:2000], k=0)

def test_make_student_same_shape_is_the_teacher(teacher):
    x = torch.randint(0, teacher.cfg.vocab_size, (2, 32))
    torch.testing.assert_close(make_student(teacher).eval()(x), teacher(x))
    s = make_student(teacher, d_model=16, n_layers=2, num_experts=1, tie_embeddings=True, embed_rank=4)
    assert (s.cfg.d_model, s.cfg.n_layers, s.cfg.num_experts, s.cfg.top_k, s.cfg.embed_rank) == (16, 2, 1, 1, 4)
    assert s(x).shape == (2, 32, teacher.cfg.vocab_size) and num_params(s) < num_params(teacher) / 3
    # a rank-r student of the same width starts from the best rank-r approximation of the teacher's table
    lr = make_student(teacher, embed_rank=8)
    E = teacher.tok_emb.weight.detach()
    err = (lr.embed(torch.arange(E.shape[0])[None])[0].detach() - E).norm()
    S = torch.linalg.svdvals(E)
    torch.testing.assert_close(err, S[8:].norm(), rtol=1e-3, atol=1e-5)

def test_cached_targets_match_the_live_teacher(syn, teacher):
    V = teacher.cfg.vocab_size
    tt = TeacherTargets(teacher, syn.train, k=V, T=2.)
    assert abs(tt.mass - 1) < 1e-2 and tt.index.shape[1:] == (32, V)
    starts = torch.tensor([0, 64, 320])
    x, y = windows_at(syn.train, starts, 32)
    student = make_student(teacher, d_model=16)
    live = DistillationObjective(student, teacher, beta=0.1, aux_coef=0.).eval()
    cached = DistillationObjective(student, teacher, beta=0.1, aux_coef=0., targets=tt).eval()
    (l1, g1), (l2, g2) = live(x, y), cached(x, y, starts)
    torch.testing.assert_close(l2, l1, rtol=2e-3, atol=2e-3)  # the cache stores float16
    torch.testing.assert_close(g2['kl'], g1['kl'], rtol=5e-3, atol=2e-3)
    with pytest.raises(ValueError, match='offset-0'): cached(x, y, starts + 1)

def test_trainer_topk_resumes_from_checkpoint(syn, teacher, tmp_path):
    kw = dict(max_steps=6, batch_size=8, lr=1e-3, eval_split=None, progress=False, seed=2)
    def run(ck=None, crash=False):
        torch.manual_seed(0)
        tr = DistillationTrainer(teacher, make_student(teacher, d_model=16, n_layers=2), syn, targets='topk', k=8)
        if crash:
            orig, calls = tr.objective.forward, [0]
            def fwd(*a):
                calls[0] += 1
                if calls[0] == 5: raise KeyboardInterrupt
                return orig(*a)
            tr.objective.forward = fwd
        tr.fit(checkpoint=ck, checkpoint_every=2, **kw)
        return tr.student
    whole = run()
    ck = tmp_path / 'd.ckpt'
    with pytest.raises(KeyboardInterrupt): run(ck, crash=True)
    resumed = run(ck)
    for (k, a_), b_ in zip(whole.state_dict().items(), resumed.state_dict().values()): assert torch.equal(a_, b_), k
    with pytest.raises(CheckpointError, match='another run'):
        DistillationTrainer(teacher, make_student(teacher, d_model=16, n_layers=2), syn).fit(checkpoint=ck, **{**kw, 'lr': 2e-3})

def test_cascade_records_and_files(syn, teacher, tmp_path):
    final, stages = distill_cascade(teacher, syn, [dict(d_model=16), dict(d_model=8, n_layers=1, tie_embeddings=True)],
                                    save_dir=tmp_path, max_steps=3, batch_size=8, progress=False)
    assert [s['config']['d_model'] for s in stages] == [16, 8] and final.cfg.d_model == 8
    assert stages[0]['bytes'] > stages[1]['bytes'] and all(s['ppl'] > 1 and s['seconds'] > 0 for s in stages)
    m, _, meta = load_model(stages[1]['file'])
    x = torch.randint(0, 200, (1, 32))
    torch.testing.assert_close(m(x), final.eval()(x))
    assert meta['stage'] == 1
    with pytest.raises(ValueError, match='sizes is empty'): distill_cascade(teacher, syn, [])

DDP_SCRIPT = textwrap.dedent('''
    import sys, torch
    from resnet_bk_compress.train import init_distributed, fit
    from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
    from resnet_bk_compress.distill import DistillationTrainer, make_student
    from resnet_bk_compress.data import synthetic_corpus
    rank, world = init_distributed()
    torch.set_num_threads(1)
    syn = synthetic_corpus(vocab_size=200, n_train=20_000, n_eval=2_000)
    torch.manual_seed(0)
    teacher = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=32, n_layers=2, n_seq=32, dropout=0.)).eval()
    student = make_student(teacher, d_model=16, n_layers=2)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    tr = DistillationTrainer(teacher, student, syn, features=('bk', 'block'), aux_coef=0.)
    tr.fit(max_steps=4, batch_size=8, lr=3e-3, eval_split=None, progress=False)
    lm = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=1, n_seq=32, dropout=0.))
    fit(lm, syn, max_steps=4, batch_size=8, aux_coef=0., eval_split=None, progress=False)
    if rank == 0: torch.save(dict(world=world, init=init, student=student.state_dict(), proj=tr.objective.proj.state_dict(), lm=lm.state_dict()), sys.argv[1])
''')

def test_two_processes_match_one(tmp_path):
    script = tmp_path / 'ddp.py'; script.write_text(DDP_SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    one, two = tmp_path / 'one.pt', tmp_path / 'two.pt'
    subprocess.run([sys.executable, str(script), str(one)], check=True, timeout=300, env=env)
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(two)],
                   check=True, timeout=300, env=env, capture_output=True)
    a_, b_ = torch.load(one), torch.load(two)
    assert (a_['world'], b_['world']) == (1, 2)
    for part in ('student', 'proj', 'lm'):
        for k, v in a_[part].items(): torch.testing.assert_close(b_[part][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f'{part}.{k}: {m}')
    assert max((a_['student'][k] - v).abs().max() for k, v in a_['init'].items()) > 1e-3  # and the runs did train
