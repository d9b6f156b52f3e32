"""Speed of group-wise INT4 layers on CPU: fp32 nn.Linear vs QuantizedLinear dequantizing on the fly vs PyTorch's CPU
int4 kernel (bf16 activations), at 1 and 64 tokens, for the reference model's expert and head shapes and a square
1024 layer; and the reference MoE layer (d=64, 4 experts) in fp32 vs QuantizedMoELayer (INT4 experts, INT8 router).

    python bench/int4_moe.py [--out bench/out/int4_moe.json]
"""

import argparse, json, platform, statistics, time
from pathlib import Path
import torch
import torch.nn as nn
from resnet_bk_compress.model import MoE
from resnet_bk_compress.int4_moe import GroupWiseQuantizer, QuantizedLinear, QuantizedMoELayer, int4_kernel_available

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, reps=50, warmup=5):
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def run():
    torch.manual_seed(0)
    out = dict(linear=[], moe=[])
    for n_in, n_out, gs, name in (
        (64, 128, 64, 'expert layer 1 (64->128)'),
        (128, 64, 128, 'expert layer 2 (128->64)'),
        (64, 33278, 64, 'LM head (64->33278)'),
        (64, 33280, 64, 'LM head padded to 33280'),
        (1024, 1024, 128, 'square (1024->1024)'),
    ):
        lin = nn.Linear(n_in, n_out)
        q = QuantizedLinear.from_float(lin, GroupWiseQuantizer(gs))
        for tokens in (1, 64):
            x = torch.randn(tokens, n_in)
            r = dict(
                shape=name,
                tokens=tokens,
                group_size=gs,
                fp32_ms=timeit(lambda: lin(x)),
                dequant_ms=timeit(lambda: q(x)),
                kernel_ms=None,
                kernel_supported=q.kernel_supported,
            )
            if q.kernel_supported:
                q.use_kernel = True
                r['kernel_ms'] = timeit(lambda: q(x))
                q.use_kernel = False
            out['linear'].append(r)
            print(r, flush=True)
    moe = MoE(64, 4).eval()
    qmoe = QuantizedMoELayer.from_float(moe, calib=torch.randn(4096, 64))
    for tokens in (1, 64):
        x = torch.randn(tokens, 64)
        r = dict(tokens=tokens, fp32_ms=timeit(lambda: moe(x)), int4_ms=timeit(lambda: qmoe(x)))
        out['moe'].append(r)
        print(r, flush=True)
    return dict(
        results=out,
        kernel_available=int4_kernel_available(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        note='median of 50 calls, no_grad, ms',
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'int4_moe.json'))
    a = p.parse_args()
    res = run()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
