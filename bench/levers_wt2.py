"""What buys quality in the hour: the 100x student's distillation with one lever changed at a time, on WikiText-2.

The student is the one the pipeline plans for 100x of a kept teacher (bench/train_wt2.py's `TEACHERS`, `reference`
by default), distilled as the distill stage does it (cached top-k targets at T = 1, BK features, AdamW, a
warmup-cosine schedule sized to the run). Each lever is its own run from the same initialization and batch order,
one knob changed from the library's defaults (`default`):

- `dropout0`, `dropout0.3`: dropout inside the student's experts (the committed runs were measured when the student
  inherited the teacher's 0.1; these runs made 0 the planner's default, so `default` is now `dropout0`, and a rerun
  starts over: the plan in the JSON's key changed);
- `lr1.5e-3`, `lr6e-3`: the peak learning rate (3e-3);
- `warmup0.01`, `warmup0.2`: the share of steps spent warming up (0.05) before the cosine decay;
- `k8`, `k128`: how many of the teacher's words per token the target cache keeps (32);
- `dropout0+lr6e-3`: the two winners of the 4-epoch screen together, for the runs at length (`--epochs 16`).

Every run gets the same wall-clock budget, not the same steps: a lever that makes a step cheaper (no dropout masks,
fewer cached words) buys more of them. The budget is `--epochs` epochs of the default's step, and the steps of a lever
that changes a step's cost (dropout, k) are that budget over its own seconds per step, timed back to back with the
default's five times (the median ratio; recorded); the learning-rate and schedule levers train the default's steps.
`--same-steps` trains every lever for the default's steps instead (the runs at length: whether a lever's gain holds
without the steps it buys), and each run records the seconds its training steps took (`train_s`), so the cost of a
step is measured over the whole run as well as by the timer. Results land in the JSON as each run finishes (a rerun
skips the runs there), with the valid perplexity after each epoch and the test perplexity at the end. (The budget's
safety margin is read from the committed pipeline runs by `05_distill`, not trained here.)

    python bench/levers_wt2.py [--teacher reference] [--epochs 4] [--levers default dropout0 ...] [--threads N]
                               [--same-steps] [--train-tokens N] [--out bench/out/levers_wt2.json]
"""

import argparse, json, math, platform, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import ROOT, TEACHERS, reference_teacher, teacher_file
from resnet_bk_compress.data import Corpus, load_wikitext2, batches_per_epoch
from resnet_bk_compress.files import file_bytes
from resnet_bk_compress.train import evaluate, fit
from resnet_bk_compress.distill import DistillationObjective, TeacherTargets
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.plan import Plan, build_student, canonical_teacher

# name -> what it changes from the defaults: dropout of the student, lr, warmup share, k of the target cache
LEVERS = {
    'default': {},
    'dropout0': dict(dropout=0.0),
    'dropout0.3': dict(dropout=0.3),
    'lr1.5e-3': dict(lr=1.5e-3),
    'lr6e-3': dict(lr=6e-3),
    'warmup0.01': dict(warmup=0.01),
    'warmup0.2': dict(warmup=0.2),
    'k8': dict(k=8),
    'k128': dict(k=128),
    'dropout0+lr6e-3': dict(dropout=0.0, lr=6e-3),  # the two screen winners together, for the runs at length
}

COST = {'dropout', 'k'}  # the levers that change what a step costs (dropout masks, the cached words it reads)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--teacher', default='reference', choices=list(TEACHERS))
    p.add_argument('--epochs', type=float, default=4.0, help="the budget: epochs of the default's step")
    p.add_argument('--levers', nargs='+', default=list(LEVERS), choices=list(LEVERS))
    p.add_argument('--target', type=float, default=100.0)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument(
        '--same-steps', action='store_true', help="every lever trains the default's steps (each run's seconds recorded)"
    )
    p.add_argument('--train-tokens', type=int, default=None, help='a smoke run: the first N training tokens only')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'levers_wt2.json'))
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    save = lambda: out.write_text(json.dumps(res, indent=1))
    corpus0 = load_wikitext2()
    teacher0, vocab0, _ = reference_teacher(a.teacher)
    pipe = CompressionPipeline(
        teacher0, vocab0, target_compression=a.target, teacher_bytes=file_bytes(teacher_file(a.teacher))
    )
    pipe.use_plan(plan := pipe.choose_plan(corpus0))
    key = dict(teacher=a.teacher, plan=plan.to_dict(), epochs=a.epochs, train_tokens=a.train_tokens)
    if a.same_steps:
        key['same_steps'] = True
    old = res.get('key')  # (its plan as a value: the JSON of an earlier version of the library)
    if old and {**old, 'plan': Plan.from_dict(old['plan']).to_dict()} != key:  # another student or budget
        print(f"the setup changed ({res['key']} -> {key}): starting over", flush=True)
        res = {}
    teacher, vocab = canonical_teacher(teacher0, vocab0, corpus0, pipe.table)
    corpus = corpus0.with_vocab(vocab)
    if a.train_tokens:
        corpus = Corpus(vocab, corpus.train[: a.train_tokens], corpus.valid, corpus.test, 'wikitext-2, cut')
    per = batches_per_epoch(len(corpus.train), teacher.cfg.n_seq, pipe.batch_size)
    targets = {}  # k -> TeacherTargets, built once each

    def setup(lever):
        "(student, objective, lr, warmup) of a lever, from the same initialization."
        kn = LEVERS[lever]
        student = plan.student.replace(**{k: v for k, v in kn.items() if k == 'dropout'})  # the student setting
        torch.manual_seed(0)
        s = build_student(teacher, corpus, student, pipe.table, pipe._calib(corpus, teacher.cfg.n_seq))
        k = kn.get('k', pipe.distill.k)
        if k not in targets:
            targets[k] = TeacherTargets(teacher, corpus.train, k=k, T=pipe.distill.T)
        d = {kk: v for kk, v in pipe.distill.to_dict().items() if kk not in ('k', 'targets')}
        obj = DistillationObjective(s, teacher, targets=targets[k], **d)
        return s, obj, kn.get('lr', pipe.lr), kn.get('warmup', 0.05)

    def step_s(lever, steps=30) -> float:
        s, obj, lr, _ = setup(lever)
        kw = dict(eval_split=None, progress=False, lr=lr, batch_size=pipe.batch_size, objective=obj, offset=0)
        fit(s, corpus, max_steps=2, **kw)
        t0 = time.perf_counter()
        fit(s, corpus, max_steps=steps, **kw)
        return (time.perf_counter() - t0) / steps

    res.update(
        key=key,
        steps_per_epoch=per,
        teacher_test_ppl=evaluate(teacher, corpus.test)['ppl'],
        distill=pipe.distill.to_dict(),
        lr=pipe.lr,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    save()
    runs = res.setdefault('runs', {})
    for lever in a.levers:
        if lever in runs:
            continue
        # seconds per step, the default's and the lever's back to back, five times: the median ratio sizes the run
        # a lever that leaves the step as it is (the learning rate, the schedule) trains the default's steps exactly:
        # timing it would only add the timer's noise (about ±7% over 30 steps here) to its length
        timed = bool(set(LEVERS[lever]) & COST) and not a.same_steps
        pairs = [(step_s('default'), step_s(lever)) for _ in range(5)] if timed else [(1.0, 1.0)]
        base_s, own_s = sorted(pairs, key=lambda b: b[0] / b[1])[len(pairs) // 2]
        steps = max(1, round(a.epochs * per * base_s / own_s))
        s, obj, lr, warm = setup(lever)
        t0 = time.perf_counter()
        hist = fit(
            s,
            corpus,
            epochs=math.ceil(steps / per),
            max_steps=steps,
            batch_size=pipe.batch_size,
            lr=lr,
            warmup=warm,
            seed=0,
            eval_split='valid',
            progress=False,
            objective=obj,
            offset=0,
        )
        runs[lever] = dict(
            changes=LEVERS[lever],
            steps=steps,
            step_s=own_s if timed else None,
            default_step_s=base_s if timed else None,
            wall_s=time.perf_counter() - t0,
            train_s=sum(h['seconds'] for h in hist),  # the training steps alone, without the evaluations
            valid_by_epoch=[dict(steps=h['steps'], valid_ppl=h['valid_ppl']) for h in hist],
            valid_ppl=hist[-1]['valid_ppl'],
            test_ppl=evaluate(s, corpus.test)['ppl'],
        )
        print(lever, json.dumps({k: runs[lever][k] for k in ('steps', 'step_s', 'valid_ppl', 'test_ppl')}), flush=True)
        save()
