"""Train a ResNet-BK teacher on WikiText-2; report its valid curve, perplexities, speed and memory as JSON.

The teachers the benchmarks compress are named in `TEACHERS`, each with its recipe:
- `reference`: the reference configuration (4 experts a block, top-1) with the best recipe issue 34 measured
  (bench/teacher_recipe_wt2.py): AdamW weight decay 0.3, cosine over 6 epochs, the best valid epoch kept.
- `8experts`: the original design's teacher, the same with 8 experts a block and top-2 routing, the same recipe.
- `3epoch`: the earlier reference teacher (weight decay 0.01, 3 epochs), the one a fresh machine trains in minutes.
The first two are trained once and kept in the repository (bench/teachers/, their JSON in bench/out/ with the
file's SHA-256): `reference_teacher(name)` loads them and checks the SHA-256, so a fresh clone never retrains them.
The 3-epoch one lives in .cache/ (git-ignored) and is trained again whenever the cache is missing.

    python bench/train_wt2.py --teacher reference|8experts|3epoch        # reproduce a teacher: its file and JSON
    python bench/train_wt2.py [--epochs 3] [--dropout 0.1] [--weight-decay 0.01] [--keep-best]
                              [--num-experts 4] [--top-k 1] [--model-out FILE] [--checkpoint FILE]
                              [--data DIR] [--out bench/out/train_wt2.json]    # any other recipe
"""

import argparse, hashlib, json, platform, resource, time
from pathlib import Path
import torch
from resnet_bk_compress.data import load_wikitext2, unigram_ppl
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, num_params
from resnet_bk_compress.files import file_bytes, load_model, save_model
from resnet_bk_compress.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / '.cache' / 'teacher' / 'wt2_reference.safetensors'  # the 3-epoch teacher
RECIPE = dict(epochs=6, weight_decay=0.3, keep_best=True)  # the best of bench/teacher_recipe_wt2.py
# name -> its model file, its training JSON, the arguments of `train_reference` that train it
TEACHERS = {
    'reference': dict(
        file=ROOT / 'bench' / 'teachers' / 'wt2_reference.safetensors',
        json=ROOT / 'bench' / 'out' / 'teacher_reference_wt2.json',
        recipe=RECIPE,
    ),
    '8experts': dict(
        file=ROOT / 'bench' / 'teachers' / 'wt2_8experts.safetensors',
        json=ROOT / 'bench' / 'out' / 'teacher_8experts_wt2.json',
        recipe=RECIPE | dict(num_experts=8, top_k=2),
    ),
    '3epoch': dict(file=CACHE, json=ROOT / 'bench' / 'out' / 'train_wt2.json', recipe=dict(epochs=3)),
}
KEPT = ('reference', '8experts')  # kept in the repository, checked by SHA-256


def sha256(path) -> str:
    "SHA-256 of a file's bytes, read in blocks."
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def train_reference(
    data=None,
    epochs=3,
    batch_size=32,
    lr=3e-3,
    seed=0,
    out=CACHE,
    progress=True,
    dropout=0.1,
    weight_decay=0.01,
    keep_best=False,
    num_experts=4,
    top_k=1,
    checkpoint=None,
) -> dict:
    "Train the reference configuration (or its `num_experts`/`top_k` variant) on WikiText-2, save it, measure it."
    corpus = load_wikitext2(data)
    torch.manual_seed(seed)
    cfg = ResNetBKConfig(vocab_size=len(corpus.vocab), dropout=dropout, num_experts=num_experts, top_k=top_k)
    model = ResNetBKLM(cfg)
    t0 = time.perf_counter()
    hist = fit(
        model,
        corpus,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        progress=progress,
        keep_best=keep_best,
        checkpoint=checkpoint,
        checkpoint_every=100 if checkpoint else 0,
    )
    train_s = time.perf_counter() - t0
    valid, test = evaluate(model, corpus.valid), evaluate(model, corpus.test)
    u_test = unigram_ppl(corpus.train, corpus.test, len(corpus.vocab))
    curve = [[h['epoch'] + 1, h['valid_ppl']] for h in hist]
    kept = min(curve, key=lambda c: c[1])[0] if keep_best else epochs
    meta = dict(
        data='wikitext-2', test_ppl=test['ppl'], valid_ppl=valid['ppl'], epochs=epochs, kept_epoch=kept, seed=seed
    )
    meta.update(dropout=dropout, weight_decay=weight_decay)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out, corpus.vocab, meta)
    return dict(
        config=model.cfg.to_dict(),
        params=num_params(model),
        epochs=epochs,
        kept_epoch=kept,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        dropout=dropout,
        weight_decay=weight_decay,
        keep_best=keep_best,
        num_experts=num_experts,
        top_k=top_k,
        history=hist,
        valid_curve=curve,
        valid_ppl=valid['ppl'],
        test_ppl=test['ppl'],
        test_tokens=test['tokens'],
        unigram_test_ppl=u_test,
        gain_over_unigram_nats=(torch.tensor(u_test).log() - torch.tensor(test['ppl']).log()).item(),
        train_tokens_per_s=sum(h['tokens'] for h in hist) / sum(h['seconds'] for h in hist),
        seconds_per_epoch=sum(h['seconds'] for h in hist) / len(hist),
        train_wall_s=train_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        model_file=str(Path(out).resolve().relative_to(ROOT)) if Path(out).resolve().is_relative_to(ROOT) else str(out),
        model_file_bytes=file_bytes(out),
        sha256=sha256(out),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        python=platform.python_version(),
    )


def teacher_file(name='reference') -> Path:
    "The model file of the teacher `name`: a kept one must be there and match the SHA-256 of its training JSON."
    t = TEACHERS[name]
    if name not in KEPT:
        return t['file']
    rel = t['file'].relative_to(ROOT)
    how = f'restore it with `git checkout -- {rel}` or retrain it: python bench/train_wt2.py --teacher {name}'
    if not t['file'].is_file():
        raise FileNotFoundError(f"teacher '{name}': {t['file']} is missing; {how}")
    want = json.loads(t['json'].read_text())['sha256']
    if sha256(t['file']) != want:
        raise ValueError(
            f"teacher '{name}': {t['file']} does not match the SHA-256 in {t['json'].name} ({want[:12]}...); {how}"
        )
    return t['file']


def reference_teacher(name='reference', data=None):
    "(model, vocab, meta) of the teacher `name` of `TEACHERS`; the 3-epoch one is trained first if it is missing."
    if name not in KEPT and not TEACHERS[name]['file'].is_file():
        train_reference(data, out=TEACHERS[name]['file'], **TEACHERS[name]['recipe'])
    return load_model(teacher_file(name))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        '--teacher', choices=list(TEACHERS), help="train a named teacher with its recipe, into its file and JSON"
    )
    p.add_argument(
        '--data', default=None, help='WikiText-2 directory (default: $RBK_WIKITEXT2 or ../shared/data/wikitext-2)'
    )
    knobs = p.add_argument_group('any other recipe (defaults: the 3-epoch teacher\'s)')
    knobs.add_argument('--epochs', type=int, help='epochs of the cosine schedule (3)')
    knobs.add_argument('--lr', type=float, help='peak learning rate (3e-3)')
    knobs.add_argument('--dropout', type=float, help='dropout inside the experts (0.1)')
    knobs.add_argument('--weight-decay', type=float, help='AdamW weight decay (0.01)')
    knobs.add_argument(
        '--keep-best', action='store_const', const=True, help='keep the epoch with the lowest valid perplexity'
    )
    knobs.add_argument('--num-experts', type=int, help='experts a block (4)')
    knobs.add_argument('--top-k', type=int, help='experts each token is routed to (1)')
    p.add_argument('--model-out', default=None, help='where the trained model file goes (default: .cache/teacher/)')
    p.add_argument(
        '--checkpoint', default=None, help='training-state file, resumed from if it exists (--teacher: .cache/teacher/)'
    )
    p.add_argument('--out', default=None, help='the JSON (default: bench/out/train_wt2.json)')
    a = p.parse_args()
    given = {k: getattr(a, k) for k in ('epochs', 'lr', 'dropout', 'weight_decay', 'keep_best', 'num_experts', 'top_k')}
    given = {k: v for k, v in given.items() if v is not None}
    if a.teacher and (given or a.model_out or a.out):
        left = ', '.join(given) or '--model-out/--out'
        p.error(f'--teacher {a.teacher} trains its own recipe into its own files; leave out {left}')
    t = TEACHERS[a.teacher or '3epoch']
    recipe = t['recipe'] if a.teacher else given
    out = Path(a.out or t['json'])
    ckpt = a.checkpoint or (ROOT / '.cache' / 'teacher' / f'{a.teacher}.ckpt' if a.teacher else None)
    res = train_reference(a.data, out=a.model_out or t['file'], checkpoint=ckpt, **recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ('history', 'config')}, indent=1))
