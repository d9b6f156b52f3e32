"""Distillation and QAT speed of the planned 100x student on WikiText-2, with the loss over all 33,278 words against the
shared-row loss over its n_dense + K rows, side by side in one run (interleaved, each measured twice; the best of two
is kept).

The student is the one bench/pipeline_wt2.py's planner chose (its plan is read from pipeline_wt2_3epoch.json), built
from the 3-epoch teacher as the distill stage builds it; the cached top-32 targets cover the first 300,000 training
tokens. Distillation runs the pipeline's objective (alpha 0.5, T 1, BK features at beta 0.1); QAT is the quantize
stage's INT4/INT8 configuration, calibrated, with hard targets. tokens/s are fit's own figures over `--steps` steps
after a warm-up step. Writes bench/out/shared_rows_wt2.json.

    python bench/shared_rows_wt2.py [--steps 20] [--out bench/out/shared_rows_wt2.json]
"""

import argparse, contextlib, copy, json, platform, sys
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT
from resnet_bk_compress.data import load_wikitext2, Corpus
from resnet_bk_compress.train import fit, bench_result, dense_head_loss
from resnet_bk_compress.distill import DistillationObjective, TeacherTargets
from resnet_bk_compress.quant import quantize_, calibrating
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.plan import build_student, canonical_teacher


TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)


def tokens_per_s(model, corpus, steps: int, lr: float, objective=None, dense: bool = False) -> float:
    "fit's tokens/s over `steps` steps of a copy of `model` (after one warm-up step), with the dense loss when `dense`."
    m = copy.deepcopy(model)
    obj = None if objective is None else objective(m)
    kw = dict(
        eval_split=None, progress=False, lr=lr, batch_size=32, objective=obj, **({'offset': 0} if objective else {})
    )
    with dense_head_loss() if dense else contextlib.nullcontext():
        fit(m, corpus, max_steps=1, **kw)
        return fit(m, corpus, max_steps=steps, **kw)[-1]['tokens_per_s']


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'shared_rows_wt2.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    teacher, vocab, _ = reference_teacher(TEACHER)
    plan = bench_result('pipeline_wt2_3epoch')  # the same teacher's 100x plan['results']['report']['plan']
    pipe = CompressionPipeline(
        teacher, vocab, student=plan['student'], table=plan['table'], keep_experts=plan['keep_experts']
    )
    t_can, v_can = canonical_teacher(teacher, vocab, corpus, pipe.table)
    c = corpus.with_vocab(v_can)
    sub = Corpus(c.vocab, c.train[:300_000], c.valid, c.test, c.name, c.meta)
    torch.manual_seed(0)
    student = build_student(t_can, c, pipe.student, pipe.table, pipe._calib(c, t_can.cfg.n_seq))
    targets = TeacherTargets(t_can, sub.train, k=32, T=1.0)
    distill = lambda m: DistillationObjective(m, t_can, alpha=0.5, T=1.0, beta=0.1, targets=targets)
    qat = copy.deepcopy(student)
    quantize_(qat, pipe.quant)
    qat.eval()
    with calibrating(qat), torch.no_grad():
        for x in pipe._calib(c, qat.cfg.n_seq):
            qat(x)
    qat.train()
    rows = student.tok_emb.n_dense + student.tok_emb.codebook_size
    res = dict(student=dict(plan=plan, shared_rows=rows, vocabulary=len(vocab)), steps=a.steps, runs={})
    for rnd in range(2):
        for what, model, obj, lr in (('distillation', student, distill, 3e-3), ('QAT', qat, None, 3e-4)):
            for dense in (True, False):
                key = f"{what}, {'all 33,278 words' if dense else f'{rows} shared rows'}"
                r = tokens_per_s(model, sub, a.steps, lr, obj, dense)
                res['runs'].setdefault(key, []).append(r)
                print(key, f'{r:,.0f} tokens/s', flush=True)
    best = {k: max(v) for k, v in res['runs'].items()}
    res['tokens_per_s'] = best
    res['speedup'] = {
        w: best[f'{w}, {rows} shared rows'] / best[f'{w}, all 33,278 words'] for w in ('distillation', 'QAT')
    }
    res.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res['speedup'], indent=1))
