"""Train the reference ResNet-BK configuration on WikiText-2; report perplexities, speed and memory as JSON.

The trained model is the reference teacher of the compression notebooks: it is cached in `.cache/`
(git-ignored) and `reference_teacher()` trains it again whenever the cache is missing.

    python bench/train_wt2.py [--epochs 3] [--data DIR] [--out bench/out/train_wt2.json]
"""
import argparse, json, platform, resource, sys, time
from pathlib import Path
import torch
from resnet_bk_compress.data import load_wikitext2, unigram_ppl
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, num_params
from resnet_bk_compress.files import file_bytes, load_model, save_model
from resnet_bk_compress.train import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / '.cache' / 'teacher' / 'wt2_reference.safetensors'

def train_reference(data=None, epochs=3, batch_size=32, lr=3e-3, seed=0, out=CACHE, progress=True) -> dict:
    "Train the reference configuration on WikiText-2 train, save it to `out`, return the measurements."
    corpus = load_wikitext2(data)
    torch.manual_seed(seed)
    model = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab)))
    t0 = time.perf_counter()
    hist = fit(model, corpus, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    train_s = time.perf_counter() - t0
    valid, test = evaluate(model, corpus.valid), evaluate(model, corpus.test)
    u_test = unigram_ppl(corpus.train, corpus.test, len(corpus.vocab))
    save_model(model, out, corpus.vocab, dict(data='wikitext-2', test_ppl=test['ppl'], valid_ppl=valid['ppl'], epochs=epochs, seed=seed))
    return dict(
        config=model.cfg.to_dict(), params=num_params(model), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        history=hist, valid_ppl=valid['ppl'], test_ppl=test['ppl'], test_tokens=test['tokens'], unigram_test_ppl=u_test,
        gain_over_unigram_nats=(torch.tensor(u_test).log() - torch.tensor(test['ppl']).log()).item(),
        train_tokens_per_s=sum(h['tokens'] for h in hist) / sum(h['seconds'] for h in hist),
        seconds_per_epoch=sum(h['seconds'] for h in hist) / len(hist), train_wall_s=train_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, model_file=str(out), model_file_bytes=file_bytes(out),
        torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(), python=platform.python_version())

def reference_teacher(data=None):
    "(model, vocab, meta) of the cached reference teacher, training it first if the cache is missing."
    if not CACHE.is_file(): train_reference(data)
    return load_model(CACHE)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='WikiText-2 directory (default: $RBK_WIKITEXT2 or ../shared/data/wikitext-2)')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'train_wt2.json'))
    a = p.parse_args()
    res = train_reference(a.data, epochs=a.epochs, lr=a.lr)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ('history', 'config')}, indent=1))
