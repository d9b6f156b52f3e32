"""Word tables on WikiText-2: which table lets a full-width student keep the teacher's quality at a few bytes a word.

Each run: the 3-epoch teacher's width and depth, pruned to one expert per block (REAP saliency), a tied
table initialized from the teacher's head (k-means codebooks where a band is coded), an input map fitted to
the teacher's input embedding, then distilled for --steps steps from cached top-32 targets at T=1. Reported:
WikiText-2 test perplexity, bytes per word of the table (stored form), seconds. Writes bench/out/tables_wt2.json.

    python bench/tables_wt2.py [--steps 300] [--only NAME ...] [--out bench/out/tables_wt2.json]
"""

import argparse, json, platform, sys, time, zlib
from pathlib import Path
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT
from resnet_bk_compress.data import load_wikitext2, train_batches
from resnet_bk_compress.train import fit, evaluate
from resnet_bk_compress.distill import make_student, DistillationObjective, TeacherTargets
from resnet_bk_compress.pruning import expert_stats, prune_experts_
from resnet_bk_compress.tables import CodebookTable

# name -> (n_dense, n_codebooks, codebook_size) of the table (None: a dense float table), and whether the input side
# gets its own map
TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

RUNS = {
    'dense table (float)': (None, True),
    '1000 rows + 1 code of 256': ((1000, 1, 256), True),
    '1000 rows + 1 code of 256, no input map': ((1000, 1, 256), False),
    '1000 rows + 1 code of 256, codes learned (straight-through)': (('learned', 1000, 1, 256), True),
    '250 rows + 1 code of 256': ((250, 1, 256), True),
    '1000 rows + 2 codes of 16': ((1000, 2, 16), True),
    '1000 rows + 2 codes of 256': ((1000, 2, 256), True),
    # tables computed from spelling: the coded band's bytes spent on hashed character n-gram vectors instead (INT8 rows)
    '1000 rows + spelling, 730 n-gram buckets (same bytes as 1 code of 256)': (('spelling', 1000, 730), True),
    '1000 rows + spelling, 4096 n-gram buckets': (('spelling', 1000, 4096), True),
}


class SpellingTable(nn.Module):
    """Rows of their own for the first n_dense words; every other word's row is the mean of its hashed character
    3-5-gram vectors (fastText)."""

    def __init__(self, words, d, n_dense, buckets, n=(3, 4, 5)):
        super().__init__()
        self.dense, self.grams = nn.Parameter(torch.zeros(n_dense, d)), nn.Parameter(torch.zeros(buckets, d))
        idx, offsets = [], []
        for w in words[n_dense:]:
            s = f'<{w}>'
            g = [zlib.crc32(s[i : i + k].encode()) % buckets for k in n for i in range(max(1, len(s) - k + 1))]
            offsets.append(len(idx))
            idx += g
        self.register_buffer('idx', torch.tensor(idx))
        self.register_buffer('offsets', torch.tensor(offsets))

    def table(self):
        return torch.cat([self.dense, F.embedding_bag(self.idx, self.grams, self.offsets, mode='mean')])

    def forward(self, ids):
        return F.embedding(ids, self.table())

    @classmethod
    def from_table(cls, W, words, n_dense, buckets, lam=1e-2):
        "Dense rows copied; n-gram vectors by ridge regression of the other rows on their n-grams."
        t = cls(words, W.shape[1], n_dense, buckets)
        n_rest = len(words) - n_dense
        rows = torch.repeat_interleave(
            torch.arange(n_rest), torch.diff(torch.cat([t.offsets, torch.tensor([len(t.idx)])]))
        )
        counts = torch.bincount(rows, minlength=n_rest).float()
        A = torch.sparse_coo_tensor(
            torch.stack([rows, t.idx]), 1 / counts[rows], (n_rest, buckets), check_invariants=True
        ).coalesce()
        X = torch.linalg.solve(A.t() @ A.to_dense() + lam * torch.eye(buckets), A.t() @ W[n_dense:])
        with torch.no_grad():
            t.dense.copy_(W[:n_dense])
            t.grams.copy_(X)
        return t


def table_bytes(V, d, spec) -> float:
    """Bytes a word of the stored table (INT4 rows with a scale and zero point per 64, INT8 codebooks with theirs,
    packed codes), all words together / V."""
    if spec is None:
        return d / 2 + 4 * (d // 64)
    if spec[0] == 'spelling':
        return (spec[1] * (d / 2 + 4) + spec[2] * (d + 4)) / V
    n, M, K = spec[-3:]
    code_bits = 4 if K <= 16 else 8
    return (n * (d / 2 + 4 * max(1, d // 64)) + (V - n) * M * code_bits / 8 + M * K * (d // M + 4)) / V


def student_for(teacher, corpus, spec, input_map: bool):
    d, vocab_words = teacher.cfg.d_model, corpus.vocab.itos
    s = make_student(teacher, tie_embeddings=True, embed_rank=d if input_map else None)
    calib = [x for x, _ in list(train_batches(corpus.train, teacher.cfg.n_seq, 32, seed=123))[:16]]
    with torch.no_grad():
        s.eval()
        stats = expert_stats(s, calib)
    prune_experts_(s, stats, keep=1)
    Wh, E = teacher.head.weight.detach(), teacher.tok_emb.weight.detach()
    with torch.no_grad():
        if input_map:
            s.emb_up.weight.copy_(
                torch.linalg.lstsq(Wh, E).solution.T
            )  # Wh @ A ~ E: the head's rows mapped to the input side
            s.head.down.weight.copy_(torch.eye(d))
        s.head.bias.copy_(teacher.head.bias)
        counts = torch.bincount(corpus.train, minlength=len(corpus.vocab))
        if spec is None:
            s.tok_emb.weight.copy_(Wh)
        elif spec[0] == 'spelling':
            s.tok_emb = SpellingTable.from_table(Wh, vocab_words, spec[1], spec[2])
        elif spec[0] == 'learned':
            s.tok_emb = CodebookTable.from_table(Wh, *spec[1:], weights=counts.float()).learn_codes_()
        else:
            s.tok_emb = CodebookTable.from_table(Wh, *spec, weights=counts.float())
    return s


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--only', nargs='*', default=None)
    p.add_argument(
        '--speed',
        action='store_true',
        help='only time training steps and evaluation, dense head against codebook head (run alone)',
    )
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'tables_wt2.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    teacher, vocab, _ = reference_teacher(TEACHER)
    out = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    if a.speed:  # plain training steps (hard targets) and evaluation of the same student with each table
        sp = out['speed'] = {}
        for name in ('dense table (float)', '1000 rows + 1 code of 256'):
            s = student_for(teacher, corpus, RUNS[name][0], False)
            fit(s, corpus, max_steps=2, eval_split=None, progress=False)  # warm-up
            h = fit(s, corpus, max_steps=20, eval_split=None, progress=False)
            t1 = time.perf_counter()
            r = evaluate(s, corpus.valid)
            ev = r['tokens'] / (time.perf_counter() - t1)
            sp[name] = dict(train_tokens_per_s=h[-1]['tokens_per_s'], eval_tokens_per_s=ev)
            print(name, sp[name], flush=True)
        out.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine())
        Path(a.out).write_text(json.dumps(out, indent=1))
        sys.exit()
    res = out.setdefault('results', {})
    t0 = time.perf_counter()
    targets = TeacherTargets(teacher, corpus.train, k=32, T=1.0)
    out['cache'] = dict(seconds=time.perf_counter() - t0, mass=targets.mass, k=32, T=1.0)
    out['teacher_test_ppl'] = evaluate(teacher, corpus.test)['ppl']
    print('cache', out['cache'], 'teacher', out['teacher_test_ppl'], flush=True)
    for name, (spec, input_map) in RUNS.items():
        if a.only and name not in a.only:
            continue
        torch.manual_seed(0)
        s = student_for(teacher, corpus, spec, input_map)
        init = evaluate(s, corpus.test)['ppl']
        obj = DistillationObjective(s, teacher, alpha=0.5, T=1.0, beta=0.1, targets=targets)
        t1 = time.perf_counter()
        fit(s, corpus, epochs=10, max_steps=a.steps, lr=3e-3, eval_split=None, progress=False, objective=obj, offset=0)
        res[name] = dict(
            spec=spec,
            input_map=input_map,
            steps=a.steps,
            seconds=time.perf_counter() - t1,
            test_ppl_init=init,
            test_ppl=evaluate(s, corpus.test)['ppl'],
            table_bytes_per_word=table_bytes(len(vocab), s.cfg.d_model, spec),
        )
        print(name, res[name], flush=True)
        out.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine())
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
