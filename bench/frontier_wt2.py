"""The perplexity-vs-bytes frontier on WikiText-2: the planned pipeline at several targets, each beside its same-size
scratch baseline.

For each target ratio the pipeline plans a student of the 3-epoch teacher (03a_tables, 06_pipeline), distills,
prunes and quantizes it with shorter training than the headline run (bench/pipeline_wt2.py; the plot says so), and
trains the same-size scratch baseline for the same wall clock. A target the planner refuses is recorded, and the
frontier's end is measured in its place: the smallest plan the planner found, at its ratio (rounded down to 0.1x).
Results are appended to bench/out/frontier_wt2.json as each target finishes, so a partial run keeps what it measured.
Run alone: the baseline's steps depend on speed.

    python bench/frontier_wt2.py [--targets 32 50 100 150 200] [--distillation-epochs 2] [--qat-epochs 0.1]
"""

import argparse, json, math, platform, shutil, subprocess, sys
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, teacher_file
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import file_bytes
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.plan import PlanError

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--targets', type=float, nargs='+', default=[32.0, 50.0, 100.0, 150.0, 200.0])
    p.add_argument('--distillation-epochs', type=float, default=2.0)
    p.add_argument('--qat-epochs', type=float, default=0.1)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'frontier_wt2.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    teacher, vocab, _ = reference_teacher(TEACHER)
    out = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else dict(points={})
    out.update(
        distillation_epochs=a.distillation_epochs,
        qat_epochs=a.qat_epochs,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    commit = (
        subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        or None
    )
    queue, end = list(a.targets), None  # end: the ratio of the smallest plan, once a target is refused
    while queue:
        target = queue.pop(0)
        d = ROOT / '.cache' / f'frontier_{target:g}x'
        shutil.rmtree(d, ignore_errors=True)
        pipe = CompressionPipeline(
            teacher, vocab, target_compression=target, teacher_bytes=file_bytes(teacher_file(TEACHER))
        )
        try:
            rep = pipe.run_pipeline(
                corpus,
                distillation_epochs=a.distillation_epochs,
                pruning_epochs=0,
                qat_epochs=a.qat_epochs,
                save_dir=d,
                progress=False,
                baseline=True,
            )
        except PlanError as e:  # a target the planner refuses: recorded, and the frontier's end measured next (once)
            out['points'][f'{target:g}'] = dict(target=target, refused=str(e), commit=commit)
            print(target, e, flush=True)
            if end is None:
                end = math.floor(e.ratio * 10) / 10
                queue.insert(0, end)
        else:
            out['points'][f'{target:g}'] = dict(
                target=target,
                bytes=rep['compressed_bytes'],
                ratio=rep['compression_ratio'],
                ppl=rep['compressed_ppl'],
                teacher_ppl=rep['teacher_ppl'],
                unigram_ppl=rep['unigram_ppl'],
                gain_kept=rep['gain_kept'],
                plan=rep['plan'],
                seconds=rep['seconds'],
                baseline=rep['baseline'],
                parts=rep['parts'],
                commit=commit,
                end=target == end,
            )
            print(
                target,
                {k: out['points'][f'{target:g}'][k] for k in ('bytes', 'ppl')},
                'baseline',
                rep['baseline']['ppl'],
                flush=True,
            )
        Path(a.out).write_text(json.dumps(out, indent=1))
