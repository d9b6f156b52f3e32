"""INT8 weight-only linear layers on the CPU: dequantize-then-fp32-matmul (what Int8Linear does) against
PyTorch's int8 kernel `torch._weight_int8pack_mm` and the fp32 layer, at the shapes of the reference model.

    python bench/int8_linear.py [--out bench/out/int8_linear.json]
"""

import argparse, json, platform, statistics, time
from pathlib import Path
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (tokens, in_features, out_features)
    'expert up (64->128), batch 32x128': (4096, 64, 128),
    'expert down (128->64), batch 32x128': (4096, 128, 64),
    'LM head (64->33278), 1 token': (1, 64, 33278),
    'LM head (64->33278), 128-token chunk': (128, 64, 33278),
}


def median_ms(f, repeats=20):
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def run():
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, (M, K, N) in SHAPES.items():
        x = torch.randn(M, K, generator=g)
        q = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        s = torch.rand(N, generator=g) * 0.01 + 1e-3
        w = q.float() * s[:, None]
        ref = F.linear(x, w)
        packed = torch._weight_int8pack_mm(x, q, s)
        rows.append(
            dict(
                shape=name,
                M=M,
                K=K,
                N=N,
                fp32_ms=median_ms(lambda: F.linear(x, w)),
                dequantize_ms=median_ms(lambda: F.linear(x, q.float() * s[:, None])),
                weight_int8pack_mm_ms=median_ms(lambda: torch._weight_int8pack_mm(x, q, s)),
                int8pack_max_abs_err=(packed - ref).abs().max().item(),
            )
        )
        print(json.dumps(rows[-1]))
    return dict(rows=rows, torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine())


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'int8_linear.json'))
    a = p.parse_args()
    res = run()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
