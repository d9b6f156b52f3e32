"""Everything this project does on a GPU, in one run built for a 15-minute slot (machine start included): the notebooks'
`#| cuda` cells (outputs written back), the device checks, the whole WikiText-2 pipeline with the teacher's training,
then the BK-Core, INT4, distillation and training speeds. What only a GPU can show comes first. Each part (a phase,
or one notebook's cuda cells) runs in a process of its own under a time limit of its own, prints its result as soon
as it ends and lands in the JSON at once, so a part that hangs or fails costs its own limit and nothing else. The T4
figures are estimates (an H200 measurement scaled by published bandwidth and FLOPs), never measurements;
`t4_estimate` says how.

    python bench/gpu.py [--device cuda] [--only checks,notebooks,...] [--budget 480] [--quick]
                        [--out bench/out/gpu.json]

`--quick` (tiny sizes, the synthetic corpus for the pipeline) is the smoke test the test suite runs with `--device cpu`;
notebooks are written back only when their cuda cells ran on a GPU."""

import argparse, json, platform, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from resnet_bk_compress.model import (
    ResNetBKConfig,
    ResNetBKLM,
    InputError,
    causal_resolvent,
    causal_resolvent_loop,
    on_device,
    num_params,
)
from resnet_bk_compress.data import synthetic_corpus, load_wikitext2
from resnet_bk_compress.files import file_bytes, save_model
from resnet_bk_compress.train import fit, evaluate
from resnet_bk_compress.distill import DistillationTrainer, make_student
from resnet_bk_compress.checks import time_ms
from resnet_bk_compress import checks as device_checks, int4_moe

ROOT = Path(__file__).resolve().parents[1]
# the numbered notebooks 00_model ... 06_pipeline that have cuda cells (00a_data and 03a_tables have none)
NOTEBOOKS = [f for f in sorted((ROOT / 'nbs').glob('0[0-6]*.ipynb')) if '"#| cuda' in f.read_text()]
# What only a GPU can show first: the checks, each notebook's cuda cells, the whole job; then the speeds.
PHASES = ('checks', 'notebooks', 'pipeline_wt2', 'bk_core', 'int4', 'distillation', 'training')
# Seconds each part may take on an H200 (a notebook's cuda cells: each notebook), about 3x what it took there; the total
# is also capped by --budget. The H200 took: checks 15 s, pipeline_wt2 278 s; the speed phases 10-30 s each.
LIMITS = dict(checks=90, notebook=90, pipeline_wt2=420, bk_core=60, int4=60, distillation=90, training=90)
CHECKS = (
    device_checks.scan_check,
    device_checks.fit_check,
    device_checks.qat_check,
    device_checks.complex_check,
    device_checks.int4_check,
    device_checks.pruning_check,
    device_checks.distill_check,
    device_checks.pipeline_check,
)
# Published peaks (NVIDIA data sheets): memory bandwidth in bytes/s, dense fp32 FLOP/s without tensor cores.
PEAKS = {'H200': dict(bandwidth=4.8e12, fp32=67e12), 'T4': dict(bandwidth=320e9, fp32=8.1e12)}


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def _imports_only(src: str) -> bool:
    "Whether a cell only imports (its `#|` lines aside): the cells a notebook's cuda cells may rely on."
    import ast

    try:
        body = ast.parse('\n'.join(l for l in src.splitlines() if not l.startswith('#|'))).body
    except SyntaxError:
        return False  # IPython syntax (a Colab install cell)
    return bool(body) and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)


def cuda_cells(path: Path, save: bool) -> dict:
    """Run a notebook's import cells and its `#| cuda` cells only (nothing else of it), their outputs saved back into it
    when `save`."""
    from fastcore.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell

    nb = read_nb(path)
    code = [c for c in nb.cells if c.cell_type == 'code']
    mod = next(c.source.split()[-1] for c in code if c.source.startswith('#| default_exp'))
    cells = [c for c in code if c.source.startswith('#| cuda')]
    sh = CaptureShell(path)
    imports = [c.source for c in code if _imports_only(c.source)] + [
        f'from resnet_bk_compress.{m} import *' for m in ('model', 'checks', mod)
    ]
    sh.run('\n'.join(imports))
    out = dict(cells=len(cells), outputs=[], error=None)
    for c in cells:
        if sh.exc is None:
            sh.cell(c)
        if sh.exc is not None:
            out['error'] = f"{type(sh.exc).__name__}: {sh.exc}"
            break
        text = [o.get('text', '') for o in c.get('outputs', []) if o.get('name') == 'stdout']
        out['outputs'].append(''.join(''.join(t) if isinstance(t, list) else t for t in text)[-2000:])
    if save and out['error'] is None:
        write_nb(nb, path)
    return out


def checks(dev, quick):
    "Every notebook's device check: its figures, or the error that stopped it."
    out = {}
    for fn in CHECKS:
        t = time.perf_counter()
        try:
            out[fn.__name__] = dict(figures=fn(dev), seconds=time.perf_counter() - t)
        except Exception as e:
            out[fn.__name__] = dict(
                error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t
            )  # recorded, and failed
        print(fn.__name__, out[fn.__name__], flush=True)
    return out


def fwd_bwd(f, a):
    def step():
        x = a.detach().clone().requires_grad_()
        G = f(x)
        (G.real.sum() + G.imag.sum()).backward()

    return step


def bk_core(dev, quick):
    "The causal BK-Core forward+backward: the scan against the sequential loop, and its float32 accuracy."
    out, g = [], torch.Generator().manual_seed(0)
    for B, N in ((32, 128), (32, 1024), (8, 4096), (256, 4096))[: 1 if quick else 4]:
        a = (torch.randn(B, N, generator=g) - 2).to(dev)
        r = dict(B=B, N=N, scan_ms=time_ms(fwd_bwd(causal_resolvent, a), dev))
        if B * N <= 8 * 4096:
            r['loop_ms'] = time_ms(fwd_bwd(causal_resolvent_loop, a), dev, repeats=3)
        with torch.no_grad():
            ref = causal_resolvent_loop(a.double(), dtype=torch.complex128)
            r['max_rel_err_c64'] = ((causal_resolvent(a).to(torch.complex128) - ref) / ref.abs()).abs().max().item()
        out.append(r)
        print(r, flush=True)
    return out


def training(dev, quick):
    """Training and evaluation tokens/s of the reference configuration (33,278 words) on synthetic text, at batch 32 and
    128."""
    corpus = synthetic_corpus(
        vocab_size=33278, n_train=20_000 if quick else 1_000_000, n_eval=5_000 if quick else 100_000
    )
    out = []
    for batch in (32, 128):
        torch.manual_seed(0)
        m = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab))).to(dev)
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        hist = fit(
            m, corpus, epochs=1, batch_size=batch, max_steps=3 if quick else 150, eval_split=None, progress=False
        )
        sync(dev)
        secs = time.perf_counter() - t
        t = time.perf_counter()
        ev = evaluate(m, corpus.test, batch_size=batch)
        sync(dev)
        r = dict(
            batch=batch,
            steps=hist[-1]['steps'],
            train_tokens_per_s=sum(h['tokens'] for h in hist) / secs,
            fit_reported_tokens_per_s=hist[-1]['tokens_per_s'],
            eval_tokens_per_s=ev['tokens'] / (time.perf_counter() - t),
            peak_gpu_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else None,
        )
        out.append(r)
        print(r, flush=True)
    return out


def distillation(dev, quick):
    """Distillation tokens/s: the reference teacher's shape into the planned 100x student's (3 blocks, 1 expert), live
    dense and cached top-32 targets."""
    corpus = synthetic_corpus(vocab_size=33278, n_train=20_000 if quick else 400_000, n_eval=2_000)
    torch.manual_seed(0)
    teacher = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab))).eval()
    students = {}
    for targets in ('dense', 'topk'):  # built on the CPU from the same seed, as the pipeline builds its student
        torch.manual_seed(0)
        students[targets] = make_student(teacher, n_layers=3, num_experts=1, tie_embeddings=True).to(dev)
    teacher.to(dev)
    out = []
    for targets, student in students.items():
        t = time.perf_counter()
        tr = DistillationTrainer(teacher, student, corpus, targets=targets, k=32, T=1.0)
        sync(dev)
        cache_s = time.perf_counter() - t
        hist = tr.fit(max_steps=3 if quick else 100, batch_size=32, lr=3e-3, eval_split=None, progress=False)
        r = dict(
            targets=targets,
            steps=hist[-1]['steps'],
            tokens_per_s=hist[-1]['tokens_per_s'],
            cache_seconds=cache_s if targets == 'topk' else None,
        )
        out.append(r)
        print(r, flush=True)
    return out


def int4(dev, quick):
    "INT4 layers: fp32, dequantize-then-matmul and PyTorch's int4 kernel for the device, per shape and token count."
    shapes = ((128, 64),) if quick else ((128, 64), (64, 128), (1024, 1024), (4096, 4096), (64, 33280))
    return dict(
        kernel_available=int4_moe.int4_kernel_available(dev),
        timings=device_checks.int4_timings(dev, shapes, (1, 64) if quick else (1, 64, 4096)),
    )


def pipeline_wt2(dev, quick):
    """The WikiText-2 job as bench/pipeline_wt2.py runs it, on the device: the reference teacher trained (3 epochs),
    then the planned 100x pipeline."""
    from resnet_bk_compress.pipeline import CompressionPipeline
    import tempfile

    t0 = time.perf_counter()
    corpus = synthetic_corpus(vocab_size=2000, n_train=40_000, n_eval=4_000) if quick else load_wikitext2()
    torch.manual_seed(0)
    teacher = ResNetBKLM(
        ResNetBKConfig(vocab_size=len(corpus.vocab), **(dict(d_model=32, n_layers=2, n_seq=32) if quick else {}))
    ).to(dev)
    hist = fit(
        teacher,
        corpus,
        epochs=1 if quick else 3,
        batch_size=32,
        lr=3e-3,
        max_steps=5 if quick else None,
        eval_split=None,
        progress=False,
    )
    sync(dev)
    teacher_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        tfile = save_model(teacher.cpu(), Path(d) / 'teacher.safetensors', corpus.vocab)
        pipe = CompressionPipeline(
            teacher.to(dev), corpus.vocab, target_compression=10 if quick else 100, teacher_bytes=file_bytes(tfile)
        )
        rep = pipe.run_pipeline(
            corpus, save_dir=Path(d) / 'run', max_steps=3 if quick else None, progress=not quick, device=dev
        )
    total = time.perf_counter() - t0
    return dict(
        total_seconds=total,
        teacher_seconds=teacher_s,
        teacher_tokens_per_s=sum(h['tokens'] for h in hist) / teacher_s,
        teacher_ppl=rep['teacher_ppl'],
        pipeline_seconds=rep['seconds'],
        stages=[{k: s[k] for k in ('name', 'steps', 'bytes', 'ppl', 'seconds')} for s in rep['stages']],
        compressed_bytes=rep['compressed_bytes'],
        compression_ratio=rep['compression_ratio'],
        compressed_ppl=rep['compressed_ppl'],
        ppl_increase=rep['ppl_increase'],
        tokens=dict(teacher=sum(h['tokens'] for h in hist)),
        teacher_params=num_params(teacher),
    )


def t4_estimate(seconds: float, flops: float | None = None) -> dict:
    """What a Colab T4 would take for a phase an H200 ran in `seconds`: an ESTIMATE, bounded three ways from published
    peaks."""
    h, t = PEAKS['H200'], PEAKS['T4']
    est = dict(
        kind='estimate from an H200 measurement, not a measurement',
        h200_seconds=seconds,
        # small kernels: the launch and host overhead is about the same on any recent GPU
        same_as_h200_if_launch_bound=seconds,
        scaled_by_fp32_flops=seconds * h['fp32'] / t['fp32'],  # if the H200 had been compute-bound
        scaled_by_bandwidth=seconds * h['bandwidth'] / t['bandwidth'],
    )  # if it had been memory-bound
    if flops is not None:
        est['t4_compute_floor'] = flops / (
            0.5 * t['fp32']
        )  # the work itself at half the T4's fp32 peak: no run can be faster
    est['likely'] = max(seconds, est.get('t4_compute_floor', 0.0))
    return est


def part(name: str, dev: torch.device, quick: bool):
    "One part, in this (child) process: a phase by name, or 'notebook:FILE' for one notebook's cuda cells."
    if name.startswith('notebook:'):
        return cuda_cells(ROOT / 'nbs' / name.split(':', 1)[1], save=dev.type == 'cuda')
    return globals()[name](dev, quick)


def parts(phases) -> list[str]:
    return [p for ph in phases for p in ([f'notebook:{f.name}' for f in NOTEBOOKS] if ph == 'notebooks' else [ph])]


def run(dev, phases, quick, out_path, budget: float = 480.0) -> dict:
    """Each part in a child process under its own limit (and what is left of `budget`), its result printed and saved as
    it ends."""
    res = dict(
        device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine(),
        torch=torch.__version__,
        quick=quick,
        budget_seconds=budget,
        phases={},
        seconds={},
        failed=[],
    )

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name in parts(phases):
            limit = min(
                LIMITS['notebook' if name.startswith('notebook:') else name], budget - (time.perf_counter() - t_start)
            )
            t = time.perf_counter()
            if limit < 10:
                r = dict(error=f'skipped: {limit:.0f} s of the {budget:.0f} s budget left')
            else:
                f = Path(d) / 'part.json'
                cmd = [sys.executable, __file__, '--part', name, '--device', str(dev), '--out', str(f)] + (
                    ['--quick'] if quick else []
                )
                try:
                    rc = subprocess.run(cmd, cwd=ROOT, timeout=limit).returncode  # its output streams to ours
                    r = (
                        json.loads(f.read_text())
                        if rc == 0
                        else dict(error=f'exited {rc} (its traceback is in the log above)')
                    )
                except subprocess.TimeoutExpired:
                    r = dict(error=f'timed out after {limit:.0f} s')
                f.unlink(missing_ok=True)
            res['seconds'][name] = time.perf_counter() - t
            if name.startswith('notebook:'):
                res['phases'].setdefault('notebooks', {})[name.split(':', 1)[1]] = r
            else:
                res['phases'][name] = r
            err = r.get('error') if isinstance(r, dict) else None  # a speed phase returns a list of rows
            bad = [k for k, c in r.items() if 'error' in c] if name == 'checks' and not err else []
            if err or bad:
                res['failed'].append(name + (f" ({', '.join(bad)})" if bad else ''))
            print(
                f"== {name}: {err or ('FAILED: ' + ', '.join(bad) if bad else 'ok')}, {res['seconds'][name]:.1f} s",
                flush=True,
            )
            save()
    res['seconds']['total'] = time.perf_counter() - t_start
    p = res['phases'].get('pipeline_wt2')
    if (
        p and 'error' not in p and ('H200' in res['device'] or quick)
    ):  # quick: the arithmetic is exercised, on whatever ran it
        train_flops = 6 * p['teacher_params'] * p['tokens']['teacher']  # forward and backward of the teacher's epochs
        res['t4_estimate'] = dict(
            teacher=t4_estimate(p['teacher_seconds'], train_flops), whole_job=t4_estimate(p['total_seconds'])
        )
    save()
    return res


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--only', default=','.join(PHASES), help=f"comma-separated phases, from {','.join(PHASES)}")
    p.add_argument(
        '--budget', type=float, default=480.0, help='seconds for the whole run: a part gets at most what is left'
    )
    p.add_argument(
        '--quick', action='store_true', help='tiny sizes and the synthetic corpus (a smoke test of the script)'
    )
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'gpu.json'))
    p.add_argument('--part', default=None, help=argparse.SUPPRESS)  # the child process of one part
    a = p.parse_args()
    phases = [s for s in a.only.split(',') if s]
    if bad := [s for s in phases if s not in PHASES]:
        sys.exit(f"gpu.py: unknown phases {bad}: choose from {','.join(PHASES)}")
    try:
        dev = on_device(a.device)
    except InputError as e:
        sys.exit(f"gpu.py: {e}")
    if a.part:
        Path(a.out).write_text(json.dumps(part(a.part, dev, a.quick), indent=1))
        sys.exit(0)
    res = run(dev, phases, a.quick, Path(a.out), a.budget)
    print(json.dumps({k: v for k, v in res.items() if k != 'phases'}, indent=1))
    if res['failed']:
        sys.exit(f"gpu.py: failed on {res['device']}: {', '.join(res['failed'])} (details in {a.out})")
