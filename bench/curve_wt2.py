"""How the 100x student's perplexity grows with distillation: the curve, the scratch baseline, and teacher-written text.

The student is the one the pipeline plans for 100x of the 3-epoch teacher (bench/train_wt2.py), distilled as the
pipeline's distill stage does it (cached top-32 targets, bk features, warmup-cosine schedule). Each point of the curve
is its own run, sized to its length (a cosine schedule evaluated half-way is not a shorter run): the float student's
valid perplexity after every epoch and its test perplexity at the end (quantization costs nothing at 100x, see
pipeline_wt2.json). Beside it:

- the scratch baseline: the same architecture trained from scratch on hard targets for the same wall-clock time
  (its steps = the distillation's steps x distillation step time / scratch step time, both timed back to back);
- teacher-written text: the teacher samples windows (temperature 1, the recurrence of 08_generate), and the student
  distils on WikiText-2 train + the generated tokens (half a million by default: sampling runs at about
  1,000 tokens/s on this CPU, its 33,278-word softmax per token), for the same number of steps as a run on WikiText-2
  alone:
  if the long runs flatten because the student has seen the same 2M tokens too often, fresh text helps.

The longest point is bench/pipeline_wt2.py's own run (the same student, its distillation sized by the 60-minute budget):
the notebooks plot it beside these. Results land in the JSON after each run; a rerun skips the runs already there (a
killed run loses one run at most).

    python bench/curve_wt2.py [--epochs 0.5 2 8] [--scratch 8] [--generated 8] [--generated-tokens N]
                              [--out bench/out/curve_wt2.json]
"""

import argparse, json, math, platform, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, teacher_file
from resnet_bk_compress.data import load_wikitext2, batches_per_epoch, Corpus, unigram_ppl
from resnet_bk_compress.files import file_bytes
from resnet_bk_compress.train import evaluate, fit
from resnet_bk_compress.distill import DistillationTrainer
from resnet_bk_compress.generate import generate_ids
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.plan import Plan, build_student, canonical_teacher


TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)


def run(student, corpus, steps, objective, pipe, offset) -> dict:
    "Train `student` for `steps` (warmup-cosine over exactly those), valid ppl after each epoch, test ppl at the end."
    per = batches_per_epoch(len(corpus.train), student.cfg.n_seq, pipe.batch_size)
    t0 = time.perf_counter()
    hist = fit(
        student,
        corpus,
        epochs=math.ceil(steps / per),
        max_steps=steps,
        batch_size=pipe.batch_size,
        lr=pipe.lr,
        seed=0,
        eval_split='valid',
        progress=False,
        objective=objective,
        **({'offset': offset} if offset is not None else {}),
    )
    wall = time.perf_counter() - t0
    return dict(
        steps=steps,
        tokens=sum(h['tokens'] for h in hist),
        train_seconds=sum(h['seconds'] for h in hist),
        wall_s=wall,
        valid_by_epoch=[dict(steps=h['steps'], train_loss=h['train_loss'], valid_ppl=h['valid_ppl']) for h in hist],
        valid_ppl=hist[-1]['valid_ppl'],
        test_ppl=evaluate(student, corpus.test)['ppl'],
        train_ppl=evaluate(student, corpus.train[: len(corpus.valid)])['ppl'],
    )  # text it trained on: the gap to valid is memorization


def generated_text(teacher, vocab, n_tokens, n_seq, batch=1024, seed=0) -> torch.Tensor:
    """A stream of about `n_tokens` the teacher writes: windows of n_seq tokens, each from <eos> (a line start), sampled
    at T=1."""
    eos, out = vocab.stoi['<eos>'], []
    for i in range(math.ceil(n_tokens / (batch * n_seq))):
        start = torch.full((batch, 1), eos, dtype=torch.long)
        out.append(generate_ids(teacher, start, max_new_tokens=n_seq - 1, seed=seed + i).reshape(-1))
        print(f'generated {sum(len(o) for o in out):,} tokens', flush=True)
    return torch.cat(out)[:n_tokens]


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        '--epochs', type=float, nargs='*', default=[0.5, 2, 8], help='lengths of the distillation runs (epochs)'
    )
    p.add_argument(
        '--scratch', type=float, nargs='*', default=[8], help='scratch baselines, at the wall clock of these runs'
    )
    p.add_argument(
        '--generated', type=float, nargs='*', default=[8], help='runs on train + teacher-written text, these lengths'
    )
    p.add_argument(
        '--generated-tokens', type=int, default=500_000, help='teacher-written tokens (about 1,000/s on 2 cores)'
    )
    p.add_argument('--target', type=float, default=100.0)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'curve_wt2.json'))
    a = p.parse_args()
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    save = lambda: out.write_text(json.dumps(res, indent=1))
    corpus0 = load_wikitext2()
    teacher0, vocab0, _ = reference_teacher(TEACHER)
    pipe = CompressionPipeline(
        teacher0, vocab0, target_compression=a.target, teacher_bytes=file_bytes(teacher_file(TEACHER))
    )
    pipe.use_plan(plan := pipe.choose_plan(corpus0))
    if (
        res.get('plan') and Plan.from_dict(res['plan']).to_dict() != plan.to_dict()
    ):  # another student: its runs are not points of this curve
        print(f"the plan changed ({res['plan']} -> {plan.to_dict()}): starting the curve over", flush=True)
        res = {}
    teacher, vocab = canonical_teacher(teacher0, vocab0, corpus0, pipe.table)
    corpus = corpus0.with_vocab(vocab)
    n_seq = teacher.cfg.n_seq
    per = batches_per_epoch(len(corpus.train), n_seq, pipe.batch_size)

    def student(scratch=False):
        torch.manual_seed(0)
        calib = pipe._calib(corpus, n_seq)
        return build_student(teacher, corpus, pipe.student.replace(init=not scratch), pipe.table, calib)

    tr = DistillationTrainer(teacher, student(), corpus, **pipe.distill.to_dict())  # the top-k cache, once
    objective = tr.objective.like  # the same objective for another student (or other targets: targets=...)
    if 'step_s' not in res:  # both timed back to back, the same conditions
        res['step_s'] = dict(
            distill=pipe._seconds_per_step(student(), corpus, objective, pipe.lr, steps=10),
            scratch=pipe._seconds_per_step(student(True), corpus, None, pipe.lr, steps=10),
        )
    res.update(
        plan=plan.to_dict(),
        teacher_test_ppl=evaluate(teacher, corpus.test)['ppl'],
        teacher_valid_ppl=evaluate(teacher, corpus.valid)['ppl'],
        steps_per_epoch=per,
        train_tokens=len(corpus.train),
        unigram_test_ppl=unigram_ppl(corpus.train, corpus.test, len(vocab)),
        distill=pipe.distill.to_dict(),
        lr=pipe.lr,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    save()
    runs = res.setdefault('runs', {})
    for e in a.epochs:
        if (k := f'distill {e:g}') in runs:
            continue
        s = student()
        runs[k] = dict(kind='distill', epochs=e, **run(s, corpus, max(1, round(e * per)), objective(s), pipe, 0))
        print(k, runs[k]['test_ppl'], flush=True)
        save()
    for e in a.scratch:
        if (k := f'scratch {e:g}') in runs:
            continue
        steps = max(1, round(e * per * res['step_s']['distill'] / res['step_s']['scratch']))
        runs[k] = dict(kind='scratch', wall_clock_of_epochs=e, **run(student(True), corpus, steps, None, pipe, None))
        print(k, runs[k]['test_ppl'], flush=True)
        save()
    for e in a.generated:
        if (k := f'generated {e:g}') in runs:
            continue
        if 'generation' not in res:
            t0 = time.perf_counter()
            gen = generated_text(teacher, vocab, a.generated_tokens, n_seq)
            res['generation'] = dict(
                tokens=len(gen),
                seconds=time.perf_counter() - t0,
                temperature=1.0,
                teacher_ppl_on_it=evaluate(teacher, gen)['ppl'],
            )
            torch.save(gen, ROOT / '.cache' / 'curve_generated.pt')
            save()
        gen = torch.load(ROOT / '.cache' / 'curve_generated.pt')
        mixed = Corpus(vocab, torch.cat([corpus.train, gen]), corpus.valid, corpus.test, 'wikitext-2 + teacher text')
        s = student()
        trg = DistillationTrainer(teacher, s, mixed, **pipe.distill.to_dict())
        runs[k] = dict(
            kind='generated',
            epochs=e,
            mixed_tokens=len(mixed.train),
            **run(s, mixed, max(1, round(e * per)), objective(s, targets=trg.targets), pipe, 0),
        )
        del trg
        print(k, runs[k]['test_ppl'], flush=True)
        save()
