"""Distillation of the 3-epoch teacher on WikiText-2: speed of the ways to compute the loss, and the lesson runs.

Speed (tokens/s of 20 training steps, batch 32): plain training of the student, the textbook loss on full
logits, the chunked loss with a live teacher, the chunked loss with cached top-k targets (and what building
the cache costs). Lesson (WikiText-2 test perplexity): the same student trained from scratch, from the
teacher's initialization with hard targets, with soft / soft+hard / soft+hard+features; from scratch for the
same time as the distilled run; one-step vs cascade distillation to the same final size.

    python bench/distill_wt2.py [--steps 400] [--only NAME ...] [--out bench/out/distill_wt2.json]
"""

import argparse, json, platform, resource, sys, time
from pathlib import Path
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, teacher_file
from resnet_bk_compress.data import load_wikitext2, unigram_ppl
from resnet_bk_compress.model import num_params
from resnet_bk_compress.files import save_model, file_bytes
from resnet_bk_compress.train import fit, evaluate
from resnet_bk_compress.distill import (
    make_student,
    DistillationObjective,
    TeacherTargets,
    distill_loss,
    distill_cascade,
)

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

STUDENT = dict(d_model=16, n_layers=2, num_experts=2, tie_embeddings=True)  # the final size of every lesson run
MIDDLE = dict(d_model=32, n_layers=2, num_experts=2, tie_embeddings=True)  # the teacher assistant of the cascade
LR, BATCH = 3e-3, 32


class Textbook(nn.Module):
    """The distillation loss on full (tokens x V) logits with autograd: the baseline the chunked loss is measured
    against."""

    def __init__(self, student, teacher):
        super().__init__()
        self.student = student
        object.__setattr__(self, 'teacher', teacher)

    def forward(self, x, y, starts=None):
        with torch.no_grad():
            t = self.teacher(x)
        s = self.student(x)
        loss = distill_loss(s, t, y, alpha=0.5, T=2.0)
        return loss + 0.01 * self.student.aux_loss, dict(loss=loss.detach())


def speed(teacher, corpus, steps=20) -> dict:
    "Tokens/s of each way to train the student (fit's own figure over `steps` steps after one warm-up step)."
    out = {}

    def run(name, make_objective, **kw):
        s = make_student(teacher, **STUDENT)
        obj = make_objective(s)
        fit(s, corpus, max_steps=1, eval_split=None, progress=False, objective=obj, **kw)  # warm-up
        h = fit(s, corpus, max_steps=steps, eval_split=None, progress=False, objective=obj, **kw)
        out[name] = dict(tokens_per_s=h[-1]['tokens_per_s'], seconds_per_step=h[-1]['seconds'] / steps)
        print(name, out[name], flush=True)

    run('plain training', lambda s: None)
    run('textbook loss, live teacher', lambda s: Textbook(s, teacher))
    run('chunked loss, live teacher', lambda s: DistillationObjective(s, teacher))
    t0 = time.perf_counter()
    targets = TeacherTargets(teacher, corpus.train, k=32, T=2.0)
    out['cache'] = dict(seconds=time.perf_counter() - t0, mass=targets.mass, k=32, T=2.0, mib=targets.nbytes / 2**20)
    run('chunked loss, cached top-32', lambda s: DistillationObjective(s, teacher, targets=targets), offset=0)
    for T in (
        1.0,
        4.0,
    ):  # how much of the teacher's mass its top-32 words hold at other temperatures (first 200K tokens)
        out['cache'][f'mass_T{T:g}'] = TeacherTargets(teacher, corpus.train[:200_000], k=32, T=T, features=False).mass
    print('cache', out['cache'], flush=True)
    return out, targets


def measure(model, corpus, seconds, steps, **extra) -> dict:
    path = ROOT / '.cache' / 'distill' / 'student.safetensors'
    save_model(model, path, corpus.vocab)
    return dict(
        test_ppl=evaluate(model, corpus.test)['ppl'],
        valid_ppl=evaluate(model, corpus.valid)['ppl'],
        params=num_params(model),
        bytes=file_bytes(path),
        seconds=seconds,
        steps=steps,
        **extra,
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=400)
    p.add_argument('--only', nargs='*', default=None, help='rerun only these entries (keeps the others from --out)')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'distill_wt2.json'))
    a = p.parse_args()
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.is_file() and a.only else {}

    def want(name):
        return a.only is None or name in a.only

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))

    corpus = load_wikitext2()
    teacher, vocab, meta = reference_teacher(TEACHER)
    res.update(
        unigram_test_ppl=unigram_ppl(corpus.train, corpus.test, len(corpus.vocab)),
        teacher=dict(test_ppl=meta['test_ppl'], bytes=file_bytes(teacher_file(TEACHER)), params=num_params(teacher)),
        student=STUDENT,
        middle=MIDDLE,
        steps=a.steps,
        batch_size=BATCH,
        lr=LR,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    runs = res.setdefault('runs', {})
    targets = None
    if want('speed'):
        res['speed'], targets = speed(teacher, corpus)
        save()
    if targets is None and (
        a.only is None
        or set(a.only) & {'soft only', 'soft + hard', 'soft + hard + features', 'one step, twice the steps'}
    ):
        targets = TeacherTargets(teacher, corpus.train, k=32, T=2.0)
    kw = dict(max_steps=a.steps, batch_size=BATCH, lr=LR, eval_split=None, progress=False, seed=1)

    def scratch(name, steps, init):
        if not want(name):
            return
        torch.manual_seed(1)
        s = make_student(teacher, init=init, **STUDENT)
        t0 = time.perf_counter()
        fit(s, corpus, **{**kw, 'max_steps': steps})
        secs = time.perf_counter() - t0
        runs[name] = measure(s, corpus, secs, steps)
        save()
        print(name, runs[name], flush=True)

    # every distilled run uses the cached top-32 targets (built once above; its cost is in speed.cache)
    def cached(name, tt='default', **tk):
        "A distilled run: cached top-32 targets (tt='default': T=2; or given), or the live teacher (tt=None)."
        if not want(name):
            return
        tt = targets if tt == 'default' else tt
        torch.manual_seed(1)
        s = make_student(teacher, **STUDENT)
        obj = DistillationObjective(s, teacher, targets=tt, **tk)
        t0 = time.perf_counter()
        fit(s, corpus, objective=obj, offset=0 if tt is not None else None, **kw)
        secs = time.perf_counter() - t0
        runs[name] = measure(
            s, corpus, secs, a.steps, targets='live teacher' if tt is None else f'top-{tt.k}, T={tt.T:g}', **tk
        )
        save()
        print(name, runs[name], flush=True)

    scratch('scratch', a.steps, init=False)
    scratch('teacher init, hard only', a.steps, init=True)
    cached('soft only', alpha=1.0, beta=0.0)
    cached('soft + hard', alpha=0.5, beta=0.0)
    cached('soft + hard + features', alpha=0.5, beta=0.1)
    if want('scratch, same time'):  # as many plain steps as fit in the time of the distilled run
        ratio = (
            res['speed']['chunked loss, cached top-32']['seconds_per_step']
            / res['speed']['plain training']['seconds_per_step']
        )
        scratch('scratch, same time', round(a.steps * ratio), init=False)
    cached('soft + hard + features, live teacher', tt=None, alpha=0.5, beta=0.1)
    if want('one step, twice the steps'):
        torch.manual_seed(1)
        s = make_student(teacher, **STUDENT)
        obj = DistillationObjective(s, teacher, targets=targets)
        t0 = time.perf_counter()
        fit(s, corpus, objective=obj, offset=0, **{**kw, 'max_steps': 2 * a.steps})
        secs = time.perf_counter() - t0
        runs['one step, twice the steps'] = measure(s, corpus, secs, 2 * a.steps)
        save()
    if want('cascade'):
        torch.manual_seed(1)
        t0 = time.perf_counter()
        final, stages = distill_cascade(
            teacher,
            corpus,
            [MIDDLE, STUDENT],
            trainer_kwargs=dict(targets='topk', k=32),
            **{**kw, 'eval_split': 'test'},
        )
        runs['cascade'] = measure(final, corpus, time.perf_counter() - t0, 2 * a.steps, stages=stages)
        save()
        print('cascade', runs['cascade'], flush=True)
    # is the cache the limit? the same run with top-32 cached at T = 1 (and, above, with the live teacher: exact soft
    # targets)
    if want('soft + hard + features, T=1'):
        cached(
            'soft + hard + features, T=1',
            tt=TeacherTargets(teacher, corpus.train, k=32, T=1.0),
            alpha=0.5,
            beta=0.1,
            T=1.0,
        )
    res['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save()
    print(
        json.dumps(
            {
                k: {kk: vv for kk, vv in v.items() if kk in ('test_ppl', 'bytes', 'seconds', 'steps')}
                for k, v in runs.items()
            },
            indent=1,
        )
    )
