"""How well the planner predicts the 100x WikiText-2 file, part by part, and what a better stand-in for the biases would give.

The planner writes the final structure with every value it knows before training (the word list, the table's codes)
and stand-ins for the rest, and measures that file (06_pipeline). Its INT4 weights are stored at full width whatever
training makes them, so their stand-ins are exact; the 4-bit head biases are entropy-coded, so their bytes depend on
the trained values. This measures, for the default 100x plan of the reference teacher:

- `bound`: the planner's file, biases as uniform random codes (no trained file can code them larger);
- `teacher_biases`: the same file with the teacher's head biases quantized in their place (the student starts from
  them), the obvious estimate;
- `trained`: the parts of the file bench/pipeline_wt2.py wrote (from bench/out/pipeline_wt2.json), and of the
  frontier's files at other targets (bench/out/frontier_wt2.json: predicted and written bytes).

    python bench/plan_bytes_wt2.py [--out bench/out/plan_bytes_wt2.json]
"""
import argparse, json, platform, sys, tempfile
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, CACHE
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import file_bytes
from resnet_bk_compress.train import bench_result
from resnet_bk_compress.tables import QuantizedBias
from resnet_bk_compress.pipeline import CompressionPipeline, save_compressed, file_parts, _counts

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'plan_bytes_wt2.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    teacher, vocab, _ = reference_teacher()
    pipe = CompressionPipeline(teacher, vocab, target_compression=100., teacher_bytes=file_bytes(CACHE))
    pipe.use_plan(plan := pipe.plan(corpus))
    model, voc = pipe.final_structure(corpus)
    d, info = Path(tempfile.mkdtemp()), dict(stage='quantize', history=list(pipe.stages))
    parts = {'bound': file_parts(save_compressed(model, d / 'bound.safetensors', voc, info))}
    canon, cvocab = pipe.canonical_teacher(corpus)
    model.head.bias = QuantizedBias.from_float(canon.head.bias.detach().float(), _counts(corpus.with_vocab(cvocab)))
    parts['teacher_biases'] = file_parts(save_compressed(model, d / 'teacher.safetensors', voc, info))
    run = bench_result('pipeline_wt2')['results']['report']
    same_plan = run['plan']['student'] == plan.student and run['plan']['table'] == plan.table
    if same_plan:
        parts['trained'] = run['parts']
    totals = {k: sum(v.values()) for k, v in parts.items()}
    fr = bench_result('frontier_wt2')
    frontier = {k: dict(predicted=v['plan']['predicted_bytes'], written=v['bytes'], epochs=fr['distillation_epochs'])
                for k, v in fr['points'].items() if 'bytes' in v}
    res = dict(plan=plan.to_dict(), parts=parts, totals=totals, trained_run_same_plan=same_plan,
               error_vs_trained={k: v / totals['trained'] - 1 for k, v in totals.items()} if same_plan else None,
               frontier=frontier, torch=torch.__version__, machine=platform.machine())
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ('totals', 'error_vs_trained', 'frontier')}, indent=1))
