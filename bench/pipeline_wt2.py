"""The whole compression pipeline on WikiText-2 with the reference teacher, measured against its goals.

Goals (issue 7): at least 100x fewer bytes than the teacher's file, at most 15% higher test perplexity, the
whole run (teacher training included) within 60 minutes and 4 GB on the 2-core CPU, and the compressed
model at least as fast as the fp32 teacher in tokens/s. The teacher comes from bench/train_wt2.py (cached in
.cache/; its measured training time is added to the pipeline's). Writes bench/out/pipeline_wt2.json.

    python bench/pipeline_wt2.py [--distillation-epochs 3] [--pruning-epochs 0.5] [--qat-epochs 0.5] [--distill-T 1] [--out ...]
"""
import argparse, json, platform, resource, shutil, sys, time
from pathlib import Path
import torch
from safetensors import safe_open
sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, CACHE
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.train import evaluate, file_bytes, bench_result
from resnet_bk_compress.pipeline import CompressionPipeline, load_compressed

def tokens_per_s(model, ids, repeats=2) -> float:
    "Evaluation tokens/s over a split (best of `repeats`)."
    best = 0.
    for _ in range(repeats):
        t0 = time.perf_counter(); r = evaluate(model, ids); best = max(best, r['tokens'] / (time.perf_counter() - t0))
    return best

def breakdown(path) -> dict:
    "Bytes of a model file by part: header (config, meta), vocabulary, and tensors grouped by module."
    parts = {}
    with safe_open(str(path), 'pt') as f:
        for k in f.keys():
            t = f.get_slice(k); n = t.get_shape(); dt = t.get_dtype()
            size = int(torch.tensor(n).prod().item() if n else 1) * {'F32': 4, 'F16': 2, 'U8': 1, 'I8': 1, 'I32': 4, 'I64': 8, 'BOOL': 1}[dt]
            group = 'vocabulary (packed)' if k.startswith('vocab@') else ('blocks' if k.startswith('blocks.') else k.rsplit('.', 1)[0] if '.' in k else k)
            parts[group] = parts.get(group, 0) + size
    parts['header and index'] = file_bytes(path) - sum(parts.values())
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--distillation-epochs', type=float, default=3)
    p.add_argument('--pruning-epochs', type=float, default=0.5)
    p.add_argument('--qat-epochs', type=float, default=0.5)
    p.add_argument('--embed-rank', type=int, default=None)
    p.add_argument('--distill-T', type=float, default=None, help="temperature of the cached teacher targets (default: the pipeline's, 2)")
    p.add_argument('--save-dir', default=str(ROOT / '.cache' / 'pipeline_wt2'))
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'pipeline_wt2.json'))
    a = p.parse_args()
    t_all = time.perf_counter()
    corpus = load_wikitext2()
    teacher, vocab, meta = reference_teacher()
    teacher_train_s = bench_result('train_wt2')['train_wall_s']
    shutil.rmtree(a.save_dir, ignore_errors=True)
    student = dict(d_model=16, n_layers=2, num_experts=2, tie_embeddings=True, embed_rank=a.embed_rank)
    distill = None if a.distill_T is None else dict(targets='topk', k=32, T=a.distill_T)
    pipe = CompressionPipeline(teacher, vocab, target_compression=100., max_ppl_increase=0.15, student=student, keep_experts=1,
                               teacher_bytes=file_bytes(CACHE), distill=distill)
    print(pipe, flush=True)
    rep = pipe.run_pipeline(corpus, distillation_epochs=a.distillation_epochs, pruning_epochs=a.pruning_epochs, qat_epochs=a.qat_epochs,
                            save_dir=a.save_dir, progress=False)
    pipeline_s = time.perf_counter() - t_all
    compressed, _, _ = load_compressed(rep['compressed_file'])
    speed = dict(teacher_tokens_per_s=tokens_per_s(teacher, corpus.valid), compressed_tokens_per_s=tokens_per_s(compressed, corpus.valid))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total_s = pipeline_s + teacher_train_s
    goals = dict(
        compression=dict(goal='>= 100x', reached=rep['compression_ratio'], met=rep['compression_ratio'] >= 100,
                         bytes_over_budget=rep['compressed_bytes'] - rep['teacher_bytes'] / 100),
        perplexity=dict(goal='<= +15%', reached=rep['ppl_increase'], met=rep['ppl_increase'] <= 0.15),
        time=dict(goal='<= 60 min with the teacher', reached_min=total_s / 60, met=total_s <= 3600,
                  teacher_min=teacher_train_s / 60, pipeline_min=pipeline_s / 60),
        memory=dict(goal='<= 4 GB', reached_mb=peak_mb, met=peak_mb <= 4096),
        speed=dict(goal='>= fp32 teacher tokens/s', reached=speed['compressed_tokens_per_s'] / speed['teacher_tokens_per_s'],
                   met=speed['compressed_tokens_per_s'] >= speed['teacher_tokens_per_s'], **speed))
    res = dict(results=dict(report={k: v for k, v in rep.items() if k != 'settings'}, goals=goals, breakdown=breakdown(rep['compressed_file'])),
               settings=rep['settings'], torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(dict(goals=goals, breakdown=res['results']['breakdown'], verdict=rep['verdict']), indent=1))
