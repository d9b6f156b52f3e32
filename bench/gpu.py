"""Everything this project does on a GPU, in one run: the notebooks' `#| cuda` cells (outputs written back), the device checks,
the BK-Core, training and distillation tokens/s, the INT4 kernels, and the whole WikiText-2 pipeline with the teacher's training.
Each phase is timed and written to the JSON as soon as it ends, so a run stopped at its time limit still reports what it did. The
T4 figures are estimates (an H200 measurement scaled by published bandwidth and FLOPs), never measurements; `t4_estimate` says how.

    python bench/gpu.py [--device cuda] [--only notebooks,checks,...] [--quick] [--out bench/out/gpu.json]

`--quick` (tiny sizes, the synthetic corpus for the pipeline) is the smoke test the test suite runs with `--device cpu`.
"""
import argparse, json, platform, subprocess, sys, time
from pathlib import Path
import torch
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, causal_resolvent, causal_resolvent_loop, on_device, time_ms, num_params
from resnet_bk_compress.data import synthetic_corpus, load_wikitext2
from resnet_bk_compress.train import fit, evaluate, file_bytes, save_model
from resnet_bk_compress.distill import DistillationTrainer, make_student
from resnet_bk_compress import model, train, quant, complex_quant, int4_moe, pruning, distill, pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = '^0[0-6]'  # the numbered notebooks 00_model ... 06_pipeline (00a, 00b and 03a among them)
PHASES = ('notebooks', 'checks', 'bk_core', 'training', 'distillation', 'int4', 'pipeline_wt2')
CHECKS = (model.scan_check, train.fit_check, quant.qat_check, complex_quant.complex_check, int4_moe.int4_check,
          pruning.pruning_check, distill.distill_check, pipeline.pipeline_check)
# Published peaks (NVIDIA data sheets): memory bandwidth in bytes/s, dense fp32 FLOP/s without tensor cores.
PEAKS = {'H200': dict(bandwidth=4.8e12, fp32=67e12), 'T4': dict(bandwidth=320e9, fp32=8.1e12)}

def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()

def notebooks(dev, quick):
    "nbdev-test with the cuda flag on the numbered notebooks, outputs saved back into them (then nbdev-clean)."
    t = time.perf_counter()
    cmd = ['nbdev-test', '--flags', 'cuda', '--file-re', NOTEBOOKS, '--save', '--timing']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    subprocess.run(['nbdev-clean'], cwd=ROOT, capture_output=True)
    return dict(command=' '.join(cmd), returncode=r.returncode, seconds=time.perf_counter() - t, output_tail=(r.stdout + r.stderr)[-4000:])

def checks(dev, quick):
    "Every notebook's device check: its figures, or the error that stopped it."
    out = {}
    for fn in CHECKS:
        t = time.perf_counter()
        try: out[fn.__name__] = dict(figures=fn(dev), seconds=time.perf_counter() - t)
        except Exception as e: out[fn.__name__] = dict(error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t)
    return out

def fwd_bwd(f, a):
    def step():
        x = a.detach().clone().requires_grad_()
        G = f(x); (G.real.sum() + G.imag.sum()).backward()
    return step

def bk_core(dev, quick):
    "The causal BK-Core forward+backward: the scan against the sequential loop, and its float32 accuracy."
    out, g = [], torch.Generator().manual_seed(0)
    for B, N in ((32, 128), (32, 1024), (8, 4096), (256, 4096))[:1 if quick else 4]:
        a = (torch.randn(B, N, generator=g) - 2).to(dev)
        r = dict(B=B, N=N, scan_ms=time_ms(fwd_bwd(causal_resolvent, a), dev))
        if B * N <= 8 * 4096: r['loop_ms'] = time_ms(fwd_bwd(causal_resolvent_loop, a), dev, repeats=3)
        with torch.no_grad():
            ref = causal_resolvent_loop(a.double(), dtype=torch.complex128)
            r['max_rel_err_c64'] = ((causal_resolvent(a).to(torch.complex128) - ref) / ref.abs()).abs().max().item()
        out.append(r); print(r, flush=True)
    return out

def training(dev, quick):
    "Training and evaluation tokens/s of the reference configuration (33,278 words) on synthetic text, at batch 32 and 128."
    corpus = synthetic_corpus(vocab_size=33278, n_train=20_000 if quick else 1_000_000, n_eval=5_000 if quick else 100_000)
    out = []
    for batch in (32, 128):
        torch.manual_seed(0)
        m = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab))).to(dev)
        if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        hist = fit(m, corpus, epochs=1, batch_size=batch, max_steps=3 if quick else 150, eval_split=None, progress=False)
        sync(dev); secs = time.perf_counter() - t
        t = time.perf_counter(); ev = evaluate(m, corpus.test, batch_size=batch); sync(dev)
        r = dict(batch=batch, steps=hist[-1]['steps'], train_tokens_per_s=sum(h['tokens'] for h in hist) / secs,
                 fit_reported_tokens_per_s=hist[-1]['tokens_per_s'], eval_tokens_per_s=ev['tokens'] / (time.perf_counter() - t),
                 peak_gpu_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else None)
        out.append(r); print(r, flush=True)
    return out

def distillation(dev, quick):
    "Distillation tokens/s: the reference teacher's shape into the planned 100x student's (3 blocks, 1 expert), live dense and cached top-32 targets."
    corpus = synthetic_corpus(vocab_size=33278, n_train=20_000 if quick else 400_000, n_eval=2_000)
    torch.manual_seed(0)
    teacher = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab))).eval()
    students = {}
    for targets in ('dense', 'topk'):  # built on the CPU from the same seed, as the pipeline builds its student
        torch.manual_seed(0); students[targets] = make_student(teacher, n_layers=3, num_experts=1, tie_embeddings=True).to(dev)
    teacher.to(dev)
    out = []
    for targets, student in students.items():
        t = time.perf_counter()
        tr = DistillationTrainer(teacher, student, corpus, targets=targets, k=32, T=1.)
        sync(dev); cache_s = time.perf_counter() - t
        hist = tr.fit(max_steps=3 if quick else 100, batch_size=32, lr=3e-3, eval_split=None, progress=False)
        r = dict(targets=targets, steps=hist[-1]['steps'], tokens_per_s=hist[-1]['tokens_per_s'], cache_seconds=cache_s if targets == 'topk' else None)
        out.append(r); print(r, flush=True)
    return out

def int4(dev, quick):
    "INT4 layers: fp32, dequantize-then-matmul and PyTorch's int4 kernel for the device, per shape and token count."
    shapes = ((128, 64),) if quick else ((128, 64), (64, 128), (1024, 1024), (4096, 4096), (64, 33280))
    return dict(kernel_available=int4_moe.int4_kernel_available(dev), timings=int4_moe.int4_timings(dev, shapes, (1, 64) if quick else (1, 64, 4096)))

def pipeline_wt2(dev, quick):
    "The WikiText-2 job as bench/pipeline_wt2.py runs it, on the device: the reference teacher trained (3 epochs), then the planned 100x pipeline."
    from resnet_bk_compress.pipeline import CompressionPipeline
    import tempfile
    t0 = time.perf_counter()
    corpus = synthetic_corpus(vocab_size=2000, n_train=40_000, n_eval=4_000) if quick else load_wikitext2()
    torch.manual_seed(0)
    teacher = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab), **(dict(d_model=32, n_layers=2, n_seq=32) if quick else {}))).to(dev)
    hist = fit(teacher, corpus, epochs=1 if quick else 3, batch_size=32, lr=3e-3, max_steps=5 if quick else None, eval_split=None, progress=False)
    sync(dev); teacher_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        tfile = save_model(teacher.cpu(), Path(d) / 'teacher.safetensors', corpus.vocab)
        pipe = CompressionPipeline(teacher.to(dev), corpus.vocab, target_compression=10 if quick else 100, teacher_bytes=file_bytes(tfile))
        rep = pipe.run_pipeline(corpus, save_dir=Path(d) / 'run', max_steps=3 if quick else None, progress=not quick, device=dev)
    total = time.perf_counter() - t0
    return dict(total_seconds=total, teacher_seconds=teacher_s, teacher_tokens_per_s=sum(h['tokens'] for h in hist) / teacher_s,
                teacher_ppl=rep['teacher_ppl'], pipeline_seconds=rep['seconds'],
                stages=[{k: s[k] for k in ('name', 'steps', 'bytes', 'ppl', 'seconds')} for s in rep['stages']],
                compressed_bytes=rep['compressed_bytes'], compression_ratio=rep['compression_ratio'], compressed_ppl=rep['compressed_ppl'],
                ppl_increase=rep['ppl_increase'], tokens=dict(teacher=sum(h['tokens'] for h in hist)), teacher_params=num_params(teacher))

def t4_estimate(seconds: float, flops: float | None = None) -> dict:
    "What a Colab T4 would take for a phase an H200 ran in `seconds`: an ESTIMATE, bounded three ways from published peaks."
    h, t = PEAKS['H200'], PEAKS['T4']
    est = dict(kind='estimate from an H200 measurement, not a measurement', h200_seconds=seconds,
               same_as_h200_if_launch_bound=seconds,  # small kernels: the launch and host overhead is about the same on any recent GPU
               scaled_by_fp32_flops=seconds * h['fp32'] / t['fp32'],  # if the H200 had been compute-bound
               scaled_by_bandwidth=seconds * h['bandwidth'] / t['bandwidth'])  # if it had been memory-bound
    if flops is not None: est['t4_compute_floor'] = flops / (0.5 * t['fp32'])  # the work itself at half the T4's fp32 peak: no run can be faster
    est['likely'] = max(seconds, est.get('t4_compute_floor', 0.))
    return est

def run(dev, phases, quick, out_path):
    res = dict(device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine(),
               torch=torch.__version__, quick=quick, phases={}, seconds={})
    def save(): out_path.parent.mkdir(parents=True, exist_ok=True); out_path.write_text(json.dumps(res, indent=1))
    for name in phases:
        t = time.perf_counter()
        res['phases'][name] = globals()[name](dev, quick)
        res['seconds'][name] = time.perf_counter() - t
        print(f"{name}: {res['seconds'][name]:.1f} s", flush=True)
        save()
    res['seconds']['total'] = sum(res['seconds'].values())
    if 'pipeline_wt2' in res['phases'] and ('H200' in res['device'] or quick):  # quick: the arithmetic is exercised, on whatever ran it
        p = res['phases']['pipeline_wt2']
        train_flops = 6 * p['teacher_params'] * p['tokens']['teacher']  # forward and backward of the teacher's epochs
        res['t4_estimate'] = dict(teacher=t4_estimate(p['teacher_seconds'], train_flops), whole_job=t4_estimate(p['total_seconds']))
    save()
    return res

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--only', default=','.join(PHASES), help=f"comma-separated phases, from {','.join(PHASES)}")
    p.add_argument('--quick', action='store_true', help='tiny sizes and the synthetic corpus (a smoke test of the script)')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'gpu.json'))
    a = p.parse_args()
    phases = [s for s in a.only.split(',') if s]
    if bad := [s for s in phases if s not in PHASES]: sys.exit(f"gpu.py: unknown phases {bad}: choose from {','.join(PHASES)}")
    res = run(on_device(a.device), phases, a.quick, Path(a.out))
    print(json.dumps({k: v for k, v in res.items() if k != 'phases'}, indent=1))
    failed = [k for k, c in res['phases'].get('checks', {}).items() if 'error' in c]
    if res['phases'].get('notebooks', {}).get('returncode'): failed.append('notebooks')
    if failed: sys.exit(f"gpu.py: failed on {res['device']}: {', '.join(failed)} (details in {a.out})")  # recorded, and the run says so
