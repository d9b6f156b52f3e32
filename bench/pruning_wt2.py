"""Pruning the 3-epoch teacher, WikiText-2 test: experts kept per layer (3, 2, 1) ranked by usage and by saliency, and
global magnitude sparsity (50/70/90%), each without and (for 2 experts, 70% and 90%) with 200 steps of retraining at the
learning rate of bench/quant_wt2.py's fp32 control; file bytes of every model (save_model: sparse tensors as bitmasks).

    python bench/pruning_wt2.py [--out bench/out/pruning_wt2.json]
"""

import argparse, copy, json, platform, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_wt2 import teacher_file, reference_teacher
from resnet_bk_compress.data import load_wikitext2, train_batches
from resnet_bk_compress.files import file_bytes, save_model
from resnet_bk_compress.train import evaluate, fit
from resnet_bk_compress.pruning import expert_stats, prune_experts_, MagnitudePruner, RANKINGS

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

ROOT = Path(__file__).resolve().parents[1]
STEPS, LR = 200, 1e-4


def run():
    corpus = load_wikitext2()
    teacher, vocab, meta = reference_teacher(TEACHER)
    t0, tmp = time.perf_counter(), Path(tempfile.mkdtemp())
    calib = [x for x, _ in list(train_batches(corpus.train, teacher.cfg.n_seq, 32, seed=123))[:8]]
    stats = expert_stats(teacher, calib)
    out = dict(
        fp32=dict(test_ppl=evaluate(teacher, corpus.test)['ppl'], file_bytes=file_bytes(teacher_file(TEACHER))),
        usage=[s.usage.tolist() for s in stats],
        saliency=[s.saliency.tolist() for s in stats],
        experts=[],
        magnitude=[],
    )
    print(out, flush=True)
    retrain = lambda m: (
        fit(m, corpus, epochs=1, max_steps=STEPS, lr=LR, eval_split=None, progress=False, seed=7),
        evaluate(m, corpus.test)['ppl'],
    )[1]
    for ranking in RANKINGS:
        for k in (3, 2, 1):
            m = copy.deepcopy(teacher)
            kept = prune_experts_(m, stats, keep=k, ranking=ranking)
            row = dict(
                ranking=ranking,
                kept=k,
                kept_experts=kept,
                test_ppl=evaluate(m, corpus.test)['ppl'],
                file_bytes=file_bytes(save_model(m, tmp / f'{ranking}{k}.safetensors', vocab)),
            )
            if k == 2:
                row['retrained_test_ppl'] = retrain(m)
            out['experts'].append(row)
            print(row, flush=True)
    for sp in (0.5, 0.7, 0.9):
        m = copy.deepcopy(teacher)
        pr = MagnitudePruner(m, scope='global')
        pr.prune(sparsity=sp)
        row = dict(
            sparsity=pr.overall(),
            test_ppl=evaluate(m, corpus.test)['ppl'],
            file_bytes=file_bytes(save_model(m, tmp / f'mag{sp}.safetensors', vocab)),
            per_layer=pr.sparsity(),
        )
        row['retrained_test_ppl'] = retrain(m) if sp >= 0.7 else None
        if sp >= 0.7:
            row['sparsity_after_retraining'] = pr.overall()
        out['magnitude'].append(row)
        print({k: v for k, v in row.items() if k != 'per_layer'}, flush=True)
    ctrl = json.loads((ROOT / 'bench' / 'out' / 'quant_wt2.json').read_text())['results']['qat']
    assert ctrl['steps'] == STEPS and ctrl['lr'] == LR
    return dict(
        results=out,
        retrain=dict(steps=STEPS, lr=LR, fp32_control_same_steps_test_ppl=ctrl['fp32_control_same_steps_test_ppl']),
        calib='8 training batches of 32 x 128 tokens',
        wall_s=time.perf_counter() - t0,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'pruning_wt2.json'))
    a = p.parse_args()
    res = run()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
