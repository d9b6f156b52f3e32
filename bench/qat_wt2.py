"""What QAT buys the 100x student: the quantize stage of the last bench/pipeline_wt2.py run, redone with 0 to 2 epochs.

Takes the stage files of the last bench/pipeline_wt2.py run (.cache/pipeline_wt2: the float student after pruning, its
teacher, the run's settings) and runs the quantize stage on the student as the run did (INT4 experts and table, INT8
elsewhere, 4-bit biases with the teacher's histogram), once for each number of QAT epochs (the pipeline's default is
0.5). For each: the QAT steps, the file's bytes and test perplexity, and the seconds of the QAT steps. Epochs measured
before on the same run's files are kept in the JSON.

    python bench/qat_wt2.py [--run-dir .cache/pipeline_wt2] [--epochs 0 0.5 1 2] [--out bench/out/qat_wt2.json]
"""

import argparse, copy, json, platform, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import ROOT
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import file_bytes, load_compressed, save_compressed
from resnet_bk_compress.train import evaluate
from resnet_bk_compress.pipeline import CompressionPipeline

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--run-dir', default=str(ROOT / '.cache' / 'pipeline_wt2'))
    p.add_argument('--epochs', type=float, nargs='+', default=[0, 0.5, 1, 2])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'qat_wt2.json'))
    a = p.parse_args()
    d = Path(a.run_dir)
    state = json.loads((d / 'state.json').read_text())
    s = state['settings']
    teacher, tvocab, _ = load_compressed(d / 'stage0_teacher.safetensors')
    student, vocab, _ = load_compressed(d / 'stage2_prune.safetensors')
    assert vocab.itos == tvocab.itos, 'the stage files share the canonical word order'
    corpus = load_wikitext2().with_vocab(vocab)
    # the teacher in the stage files' order: its bias histogram is the run's
    pipe = CompressionPipeline(teacher, vocab, student=s['student'], table=s['table'], keep_experts=s['keep_experts'])
    pipe.qat_lr, pipe.batch_size = s['qat_lr'], s['batch_size']
    res = dict(
        run=dict(dir=str(d), float_test_ppl=state['stages'][-2]['ppl'], quantized_test_ppl=state['stages'][-1]['ppl']),
        teacher_test_ppl=state['teacher']['ppl'],
        qat_lr=pipe.qat_lr,
        runs={},
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    old = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    if old.get('run') == res['run']:  # the same run's stage files: keep the epochs measured before
        res['runs'] = old['runs']
    for e in a.epochs:
        steps = pipe._steps(corpus, student.cfg.n_seq, e, None)
        t0 = time.perf_counter()
        model, _, hist = pipe._stage_quantize(copy.deepcopy(student), corpus, steps, None, False)
        qat_s = sum(h['seconds'] for h in hist)
        with tempfile.TemporaryDirectory() as tmp:
            f = save_compressed(model, Path(tmp) / 'q.safetensors', vocab)
            res['runs'][str(e)] = dict(
                epochs=e, steps=steps, bytes=file_bytes(f), test_ppl=evaluate(model, corpus.test)['ppl'], qat_s=qat_s
            )
        print(e, res['runs'][str(e)], flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
