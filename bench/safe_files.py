"""Crafted model files: each header change of issue 35, applied to a 100x WikiText-2 file, loaded in a fresh process.

The file has the structure of the 100x WikiText-2 run (the planner's student for the reference configuration: a
codebook table tied to the head, INT4 experts, 4-bit biases, entropy-coded, the word list packed) with untrained
weights: its bytes and header are what `bench/pipeline_wt2.py` writes, and no teacher needs training. Each variant
changes one header entry, recomputes the checksum, and is loaded by `load_model` in a new Python process under an
8 GB address-space limit, after the untouched file (so that imports and PyTorch's first calls are not counted). The
bench records what happened, the seconds it took and the peak memory beyond the library's own (the peak resident set,
reset through /proc/self/clear_refs before the load, minus the resident set then). Run alone: the seconds depend on
what else runs. Writes bench/out/safe_files.json.

    python bench/safe_files.py [--out bench/out/safe_files.json]
"""

import argparse, json, platform, subprocess, sys, tempfile
from pathlib import Path
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import ROOT
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import model_digest, file_bytes
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.files import save_compressed
from resnet_bk_compress.plan import plan, final_structure

CHILD = """
import gc, json, resource, sys, time
from resnet_bk_compress.files import load_model, ModelFileError
def status(key):  # kB from /proc/self/status
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))
load_model(sys.argv[2])  # the untouched file: imports and PyTorch's first calls, the library's own
gc.collect()
open('/proc/self/clear_refs', 'w').write('5')  # resets the peak resident set (VmHWM) to the present one
base = status('VmRSS')
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
t0 = time.perf_counter()
try:
    load_model(sys.argv[1]); outcome = 'loaded'
except ModelFileError as e: outcome = 'ModelFileError: ' + str(e)[:300]
except BaseException as e: outcome = f'{type(e).__name__} (not refused cleanly): ' + str(e)[:300]
seconds = time.perf_counter() - t0
print(json.dumps(dict(outcome=outcome, seconds=seconds, peak_mb_beyond_own=(status('VmHWM') - base) / 1024)))
"""


def variants(header: dict) -> dict:
    "name -> edit(header): the issue's header changes and a few more."
    cfg = lambda **kw: lambda h: h.update(config=json.dumps({**json.loads(h['config']), **kw}))
    coded = json.loads(header['coded'])
    codes = 'tok_emb.codes' if 'tok_emb.codes' in coded else next(iter(coded))

    def scale_coded(factor):
        def edit(h):
            c = json.loads(h['coded'])
            c[codes][1] = [c[codes][1][0] * factor, *c[codes][1][1:]]
            h['coded'] = json.dumps(c)

        return edit

    def scale_small(h):
        s = json.loads(h['small'])
        dt = next(iter(s))
        s[dt][0][1] = [s[dt][0][1][0] * 10**6, *s[dt][0][1][1:]]
        h['small'] = json.dumps(s)

    return {
        'config d_model 100,000': cfg(d_model=100_000),
        'config n_seq 10^8': cfg(n_seq=10**8),
        'config vocab_size 10^9': cfg(vocab_size=10**9),
        'config n_layers 10,000': cfg(n_layers=10_000),
        'config num_experts 100,000': cfg(num_experts=100_000),
        'config d_model 2,048 (in range, over budget)': cfg(d_model=2048),
        f'coded {codes} shape x 10^9': scale_coded(10**9),
        f'coded {codes} shape x 10^5': scale_coded(10**5),
        f'coded {codes} shape x 2': scale_coded(2),
        'packed small tensor shape x 10^6': scale_small,
        'table entry codebook_size 10^9': lambda h: h.update(
            table=json.dumps({**json.loads(h['table']), 'codebook_size': 10**9})
        ),
        'quant entry expert_bits 64': lambda h: h.update(
            quant=json.dumps({**json.loads(h['quant']), 'expert_bits': 64})
        ),
        'vocab_codec "xz" (the word list read as xz)': lambda h: h.update(vocab_codec='"xz"'),
        'config nested 100,000 deep': lambda h: h.update(config='[' * 100_000 + ']' * 100_000),
    }


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'safe_files.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    torch.manual_seed(0)
    teacher = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab))).eval()
    pl = plan(teacher, corpus.vocab, corpus, 100.0, teacher_bytes=18_721_016)
    model, vocab = final_structure(teacher, corpus.vocab, corpus, pl.student, pl.table, pl.keep_experts)
    res = dict(variants={}, torch=torch.__version__, machine=platform.machine())
    with tempfile.TemporaryDirectory() as d:
        src = save_compressed(model, Path(d) / 'wt2_100x.safetensors', vocab)
        res['file_bytes'] = file_bytes(src)
        with safe_open(str(src), framework='pt') as f:
            header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        runs = {'untouched file (loads)': (None, 'loaded')}
        runs.update({name: (edit, 'ModelFileError') for name, edit in variants(header).items()})
        for name, (edit, expect) in runs.items():
            h = dict(header)
            if edit is not None:
                edit(h)
            h['checksum'] = model_digest(h, tensors)
            bad = Path(d) / 'crafted.safetensors'
            save_file(tensors, str(bad), metadata=h)
            r = subprocess.run([sys.executable, '-c', CHILD, str(bad), str(src)], capture_output=True, text=True)
            lines = r.stdout.strip().splitlines()
            out = json.loads(lines[-1]) if lines else dict(outcome=f'died: {r.returncode} {r.stderr[-300:]}')
            out['as_expected'] = out['outcome'].startswith(expect)
            res['variants'][name] = out
            print(
                f"{name}: {out['outcome'][:140]} ({out.get('seconds', -1):.2f} s, "
                f"{out.get('peak_mb_beyond_own', -1):.0f} MB)",
                flush=True,
            )
    res['every_crafted_file_refused_within_1s_and_1gb'] = all(
        v['as_expected'] and v['seconds'] < 1 and v['peak_mb_beyond_own'] < 1024
        for k, v in res['variants'].items()
        if not k.startswith('untouched')
    )
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != 'variants'}))
