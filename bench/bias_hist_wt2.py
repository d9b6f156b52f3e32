"""What a bias histogram fixed before training costs: 4-bit head biases coded by k-means against by rank into a
histogram.

Takes the stage files of a bench/pipeline_wt2.py run (default: `--teacher 3epoch`'s, the figures' run, in
.cache/pipeline_wt2_3epoch: the float student after pruning and its teacher), quantizes the student as the quantize
stage does but without QAT steps, leaving its biases in float, and then stores the same biases four ways: nearest of 16
levels placed by k-means weighted by word counts (the library's choice before the histogram was fixed); by rank into the
teacher's histogram (the pipeline's choice: `bias_hist`); by rank into the student's own k-means histogram (a check: it
must give the k-means codes back); by rank into equal counts. For each: the bias codes' entropy-coded bytes, the written
file's bytes and test perplexity.

    python bench/bias_hist_wt2.py [--run-dir .cache/pipeline_wt2_3epoch] [--out bench/out/bias_hist_wt2.json]
"""

import argparse, json, platform, sys, tempfile
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import ROOT
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import file_bytes
from resnet_bk_compress.train import evaluate
from resnet_bk_compress.coding import code_bytes
from resnet_bk_compress.tables import QuantizedBias
from resnet_bk_compress.files import load_compressed, save_compressed
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.plan import word_counts, bias_hist

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--run-dir', default=str(ROOT / '.cache' / 'pipeline_wt2_3epoch'))
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'bias_hist_wt2.json'))
    a = p.parse_args()
    d = Path(a.run_dir)
    state = json.loads((d / 'state.json').read_text())
    corpus = load_wikitext2()
    teacher, tvocab, _ = load_compressed(d / 'stage0_teacher.safetensors')
    student, vocab, _ = load_compressed(d / 'stage2_prune.safetensors')
    assert vocab.itos == tvocab.itos, "the stage files share the canonical word order"
    corpus = corpus.with_vocab(vocab)
    pipe = CompressionPipeline(teacher, vocab)  # the teacher in the stage files' order: its bias histogram is the run's
    pipe.table = None  # the quantize stage without its 4-bit biases, and without QAT steps
    model, _, _ = pipe._stage_quantize(student, corpus, 0, None, False)
    b = model.head.bias.detach().float().clone()
    del model.head.bias
    counts, hist = word_counts(corpus), bias_hist(teacher, vocab, corpus)
    km = QuantizedBias.from_float(b, counts)
    equal = torch.tensor([len(b) // 16 + (i < len(b) % 16) for i in range(16)])
    ways = {
        'k-means, nearest level': km,
        "rank, the teacher's histogram": QuantizedBias.from_float(b, counts, hist),
        "rank, the student's own k-means histogram": QuantizedBias.from_float(b, counts, km.histogram()),
        'rank, equal counts': QuantizedBias.from_float(b, counts, equal),
    }
    info = dict(stage='quantize', history=['distill', 'prune', 'quantize'])
    rows = {}
    for name, qb in ways.items():
        model.head.bias = qb
        c = code_bytes(qb.codes.numpy().tobytes())
        with tempfile.TemporaryDirectory() as t:
            n = file_bytes(save_compressed(model, Path(t) / 'x.safetensors', vocab, info))
        rows[name] = dict(
            code_bytes=len(c[1]) if c else qb.codes.numel(),
            entropy_coded=c is not None,
            file_bytes=n,
            test_ppl=evaluate(model, corpus.test)['ppl'],
            histogram=qb.histogram().tolist(),
        )
        print(name, {k: v for k, v in rows[name].items() if k != 'histogram'}, flush=True)
    res = dict(
        run=dict(plan=state.get('plan'), table=state['settings']['table'], stages=[s['name'] for s in state['stages']]),
        teacher_histogram=hist.tolist(),
        ways=rows,
        torch=torch.__version__,
        machine=platform.machine(),
    )
    Path(a.out).write_text(json.dumps(res, indent=1))
