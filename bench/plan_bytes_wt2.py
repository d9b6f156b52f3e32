"""How well the planner predicts the WikiText-2 files it plans, part by part.

The planner writes the final structure with every value it knows before training and stand-ins for the rest, and
measures that file (06_pipeline). Known before training: the word list, the table's codes (the run's own seeded
k-means, on the teacher head's rows or the student's first table), and the histogram of the 4-bit bias codes (the
teacher's biases', `plan.bias_hist`). Stand-ins: INT4 weights as uniform codes, stored at full width
whatever training makes them. This writes the planned file of the default 100x plan of the 3-epoch teacher and
compares it, part by part, with the file bench/pipeline_wt2.py wrote (bench/out/pipeline_wt2.json) when that run had
the same plan, and lists predicted against written bytes for every point of bench/out/frontier_wt2.json.

    python bench/plan_bytes_wt2.py [--out bench/out/plan_bytes_wt2.json]
"""

import argparse, json, platform, sys, tempfile
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, teacher_file
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import file_bytes
from resnet_bk_compress.train import bench_result
from resnet_bk_compress.files import save_compressed
from resnet_bk_compress.report import file_parts
from resnet_bk_compress.plan import Plan, plan as make_plan, final_structure, bias_hist

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'plan_bytes_wt2.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    teacher, vocab, _ = reference_teacher(TEACHER)
    plan = make_plan(teacher, vocab, corpus, 100.0, teacher_bytes=file_bytes(teacher_file(TEACHER)))
    model, voc = final_structure(teacher, vocab, corpus, plan.student, plan.table, plan.keep_experts)
    info = dict(stage='quantize', history=['distill', 'prune', 'quantize'])
    planned = file_parts(save_compressed(model, Path(tempfile.mkdtemp()) / 'plan.safetensors', voc, info))
    run = bench_result('pipeline_wt2')['results']['report']
    ran = Plan.from_dict(run['plan'])
    same_plan = (ran.student, ran.table) == (plan.student, plan.table)
    trained = run['parts'] if same_plan else None
    fr = bench_result('frontier_wt2')
    frontier = {
        k: dict(
            predicted=v['plan']['predicted_bytes'],
            written=v['bytes'],
            error=v['plan']['predicted_bytes'] / v['bytes'] - 1,
            commit=v.get('commit'),
        )
        for k, v in fr['points'].items()
        if 'bytes' in v
    }
    res = dict(
        plan=plan.to_dict(),
        planned_parts=planned,
        planned_total=sum(planned.values()),
        bias_hist=bias_hist(teacher, vocab, corpus).tolist(),
        trained_run_same_plan=same_plan,
        trained_parts=trained,
        trained_total=run['compressed_bytes'] if same_plan else None,
        error_vs_trained=sum(planned.values()) / run['compressed_bytes'] - 1 if same_plan else None,
        part_errors={k: planned.get(k, 0) - trained.get(k, 0) for k in {*planned, *trained}} if same_plan else None,
        frontier=frontier,
        torch=torch.__version__,
        machine=platform.machine(),
    )
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(
        json.dumps(
            {k: res[k] for k in ('planned_total', 'trained_total', 'error_vs_trained', 'part_errors', 'frontier')},
            indent=1,
        )
    )
