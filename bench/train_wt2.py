"""Train a ResNet-BK teacher on WikiText-2; report its valid curve, perplexities, speed and memory as JSON.

The reference teacher (the reference configuration, 4 experts a block, top-1) is the teacher of the compression
notebooks and benchmarks. `reference_teacher()` loads it from `.cache/` (git-ignored) and trains it again whenever
the cache is missing. The recipe's knobs (dropout inside the experts, AdamW weight decay, epochs of the cosine
schedule, keeping the best epoch by valid perplexity) and the experts (`--num-experts`, `--top-k`) are arguments.

    python bench/train_wt2.py [--epochs 3] [--dropout 0.1] [--weight-decay 0.01] [--keep-best]
                              [--num-experts 4] [--top-k 1] [--model-out FILE] [--checkpoint FILE]
                              [--data DIR] [--out bench/out/train_wt2.json]
"""
import argparse, json, platform, resource, time
from pathlib import Path
import torch
from resnet_bk_compress.data import load_wikitext2, unigram_ppl
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, num_params
from resnet_bk_compress.files import file_bytes, load_model, save_model
from resnet_bk_compress.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / '.cache' / 'teacher' / 'wt2_reference.safetensors'


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
    meta = dict(data='wikitext-2', test_ppl=test['ppl'], valid_ppl=valid['ppl'], epochs=epochs, kept_epoch=kept, seed=seed)
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
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        python=platform.python_version(),
    )


def reference_teacher(data=None):
    "(model, vocab, meta) of the cached reference teacher, training it first if the cache is missing."
    if not CACHE.is_file():
        train_reference(data)
    return load_model(CACHE)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='WikiText-2 directory (default: $RBK_WIKITEXT2 or ../shared/data/wikitext-2)')
    p.add_argument('--epochs', type=int, default=3, help='epochs of the cosine schedule')
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--dropout', type=float, default=0.1, help='dropout inside the experts')
    p.add_argument('--weight-decay', type=float, default=0.01, help='AdamW weight decay')
    p.add_argument('--keep-best', action='store_true', help='keep the epoch with the lowest valid perplexity')
    p.add_argument('--num-experts', type=int, default=4)
    p.add_argument('--top-k', type=int, default=1)
    p.add_argument('--model-out', default=str(CACHE), help='where the trained model file goes')
    p.add_argument('--checkpoint', default=None, help='training-state file: resumed from if it exists')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'train_wt2.json'))
    a = p.parse_args()
    res = train_reference(
        a.data,
        epochs=a.epochs,
        lr=a.lr,
        out=a.model_out,
        dropout=a.dropout,
        weight_decay=a.weight_decay,
        keep_best=a.keep_best,
        num_experts=a.num_experts,
        top_k=a.top_k,
        checkpoint=a.checkpoint,
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ('history', 'config')}, indent=1))
