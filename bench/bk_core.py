"""Speed and accuracy of the BK-Core: forward+backward time of the causal and two-sided resolvents.

Scan (rescaled parallel prefix product, the library's implementation) vs the sequential loop vs the
dense `torch.linalg.inv` reference, at B=32 N=128, B=32 N=1024 and B=8 N=4096. Errors are the largest
relative error of the complex64 result against a complex128 reference (the dense inverse where it
is affordable, otherwise the complex128 loop / scan, themselves checked against the dense inverse).

    python bench/bk_core.py [--out bench/out/bk_core.json]
"""

import argparse, json, platform, statistics, time
from pathlib import Path
import torch
from resnet_bk_compress.model import causal_resolvent, causal_resolvent_loop, two_sided_resolvent, dense_resolvent

ROOT = Path(__file__).resolve().parents[1]


def fwd_bwd_ms(f, a, repeats):
    "Median wall time (ms) of f(a) plus a backward pass through Re and Im of the result."
    times = []
    for i in range(repeats + 1):
        x = a.detach().clone().requires_grad_()
        t0 = time.perf_counter()
        G = f(x)
        (G.real.sum() + G.imag.sum()).backward()
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fwd_ms(f, a, repeats):
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            f(a)
            if i:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_err(x, ref):
    return ((x.to(torch.complex128) - ref) / ref.abs()).abs().max().item()


def loop_two_sided(a, dtype=torch.complex64):
    "Two-sided diagonal from two sequential continued fractions (the loop baseline for the two-sided core)."
    bc = torch.ones_like(a[..., :-1]).to(dtype)
    rl = 1 / causal_resolvent_loop(a, dtype=dtype)
    rr = (1 / causal_resolvent_loop(a.flip(-1), dtype=dtype)).flip(-1)
    return 1 / (rl - torch.nn.functional.pad(bc / rr[..., 1:], (0, 1)))


def run(repeats=7):
    g = torch.Generator().manual_seed(0)
    rows = []
    for B, N in ((32, 128), (32, 1024), (8, 4096)):
        a = torch.randn(B, N, generator=g) - 2  # v ~ N(0, 1) around H0's diagonal
        c128 = causal_resolvent_loop(a.double(), dtype=torch.complex128)
        s128 = two_sided_resolvent(a.double(), dtype=torch.complex128)
        n_dense = B if N <= 1024 else 1
        dense_rows = slice(0, n_dense)
        pos = sorted({*range(0, N, max(1, N // 16)), N - 1}) if N > 128 else None
        dense_c = dense_resolvent(a[dense_rows], causal=True, positions=pos) if N <= 1024 else None
        t0 = time.perf_counter()
        dense_s = dense_resolvent(a[dense_rows])
        dense_s_ms = (time.perf_counter() - t0) * 1e3
        cols = slice(None) if pos is None else pos
        check = dict(
            causal_c128_loop_vs_dense=None if dense_c is None else rel_err(c128[dense_rows][:, cols], dense_c[:, cols]),
            two_sided_c128_scan_vs_dense=rel_err(s128[dense_rows], dense_s),
        )
        for kind, scan, loop, ref in (
            ('causal', causal_resolvent, causal_resolvent_loop, c128),
            ('two_sided', two_sided_resolvent, loop_two_sided, s128),
        ):
            rows.append(
                dict(
                    core=kind,
                    B=B,
                    N=N,
                    scan_fwd_bwd_ms=fwd_bwd_ms(scan, a, repeats),
                    scan_fwd_ms=fwd_ms(scan, a, repeats),
                    loop_fwd_bwd_ms=fwd_bwd_ms(loop, a, max(1, repeats // 3)),
                    dense_fwd_ms_per_row=dense_s_ms / n_dense if kind == 'two_sided' else None,
                    scan_c64_rel_err=rel_err(scan(a), ref),
                    loop_c64_rel_err=rel_err(loop(a), ref),
                    finite=bool(torch.isfinite(torch.view_as_real(scan(a))).all()),
                    **check,
                )
            )
            print(json.dumps(rows[-1]))
    return dict(
        rows=rows,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        aim='B=8 N=4096 forward+backward <= 40 ms, relative error <= 1e-6 vs complex128',
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'bk_core.json'))
    p.add_argument('--repeats', type=int, default=7)
    a = p.parse_args()
    res = run(a.repeats)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
