"""The same measurements on a CUDA GPU: BK-Core forward+backward time (scan vs sequential loop) and accuracy, and training
and evaluation throughput of the reference configuration (33,278-word vocabulary) on the synthetic corpus.

    python bench/gpu.py [--out bench/out/gpu.json]
"""
import argparse, json, platform, statistics, time
from pathlib import Path
import torch
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM, causal_resolvent, causal_resolvent_loop
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.train import fit, evaluate

ROOT = Path(__file__).resolve().parents[1]

def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def cuda_ms(fn, repeats=10):
    ts = []
    for i in range(repeats + 2):
        sync(); t = time.perf_counter(); fn(); sync()
        if i >= 2: ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

def fwd_bwd(f, a):
    def step():
        x = a.detach().clone().requires_grad_()
        G = f(x); (G.real.sum() + G.imag.sum()).backward()
    return step

def run(dev='cuda', quick=False):
    dev = torch.device(dev)
    out = dict(device=torch.cuda.get_device_name() if dev.type == 'cuda' else platform.processor(), torch=torch.__version__, bk_core=[])
    g = torch.Generator(device='cpu').manual_seed(0)
    for B, N in ((32, 128), (32, 1024), (8, 4096), (256, 4096))[:1 if quick else 4]:
        a = (torch.randn(B, N, generator=g) - 2).to(dev)
        r = dict(B=B, N=N, scan_ms=cuda_ms(fwd_bwd(causal_resolvent, a)))
        if B * N <= 8 * 4096: r['loop_ms'] = cuda_ms(fwd_bwd(causal_resolvent_loop, a), repeats=3)
        with torch.no_grad():
            ref = causal_resolvent_loop(a.double(), dtype=torch.complex128)
            r['max_rel_err_c64'] = ((causal_resolvent(a).to(torch.complex128) - ref) / ref.abs()).abs().max().item()
        out['bk_core'].append(r); print(r, flush=True)
    corpus = synthetic_corpus(vocab_size=33278, n_train=1_000_000 if not quick else 20_000, n_eval=100_000 if not quick else 5_000)
    steps = 3 if quick else 150
    for batch in (32, 128):
        torch.manual_seed(0)
        model = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab))).to(dev)
        t = time.perf_counter()
        hist = fit(model, corpus, epochs=1, batch_size=batch, max_steps=steps, eval_split=None, progress=False)
        sync(); secs = time.perf_counter() - t
        t = time.perf_counter(); ev = evaluate(model, corpus.test, batch_size=batch); sync()
        tokens = sum(h['tokens'] for h in hist)  # an epoch may end before max_steps
        r = dict(batch=batch, steps=hist[-1]['steps'], train_tokens_per_s=tokens / secs, fit_reported_tokens_per_s=hist[-1].get('tokens_per_s'),
                 eval_tokens_per_s=ev['tokens'] / (time.perf_counter() - t), test_ppl_after_training=ev['ppl'],
                 peak_gpu_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else None)
        out.setdefault('training', []).append(r); print(r, flush=True)
        if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    return out

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'gpu.json'))
    p.add_argument('--device', default='cuda')
    p.add_argument('--quick', action='store_true', help='tiny sizes (a smoke test of the script)')
    a = p.parse_args()
    res = run(a.device, a.quick)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
