"""Complex quantization of the BK-Core on the 3-epoch teacher: SQNR of G in every layer for each grid (per tensor /
per position, symmetric / asymmetric, joint modulus scale, polar, and quantizing r = 1/G instead), |G| and the error
across positions, and WikiText-2 test perplexity with only the BK-Core quantized, at 8 and 4 bits.

    python bench/complex_quant_wt2.py [--out bench/out/complex_quant_wt2.json]
"""

import argparse, json, platform, sys, time
from pathlib import Path
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_wt2 import reference_teacher
from resnet_bk_compress.data import load_wikitext2, train_batches, eval_windows
from resnet_bk_compress.model import ResNetBKLM
from resnet_bk_compress.train import evaluate
from resnet_bk_compress.quant import PerTensor, PerChannel, calibrating, quantize_
from resnet_bk_compress.complex_quant import ComplexQuantizer, ComplexInt8Config
from resnet_bk_compress.quant import sqnr

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

ROOT = Path(__file__).resolve().parents[1]
OBSERVER = 'min_max'  # what the model flow (ComplexInt8Config.bk_observer) uses
VARIANTS = {  # name -> ComplexQuantizer arguments
    'separate symmetric, per tensor': dict(scheme='separate', symmetric=True, granularity=PerTensor()),
    'separate asymmetric, per tensor': dict(scheme='separate', symmetric=False, granularity=PerTensor()),
    'separate symmetric, per position': dict(scheme='separate', symmetric=True, granularity=PerChannel(-1)),
    'separate asymmetric, per position': dict(scheme='separate', symmetric=False, granularity=PerChannel(-1)),
    'joint |G| scale, per position': dict(scheme='joint', granularity=PerChannel(-1)),
    'polar, per position': dict(scheme='polar', granularity=PerChannel(-1)),
}
R_VARIANT = 'r = 1/G asymmetric, per position'  # the continued-fraction value, quantized instead of G


def potentials(model, batches):
    "The BK-Core input v of every layer, concatenated over batches: list of (B, N)."
    vs = [[] for _ in model.blocks]
    hooks = [
        b.bk.register_forward_hook(lambda m, inp, out, i=i: vs[i].append(inp[0].detach()))
        for i, b in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(v) for v in vs]


def calibrated(kwargs, bits, G_cal, observer=OBSERVER):
    q = ComplexQuantizer(bits=bits, observer=observer, **kwargs)
    with calibrating(nn.Sequential(q)):
        for chunk in G_cal.split(32):
            q(chunk)
    return q.eval()


def run(n_batches=32, n_held=8):
    corpus = load_wikitext2()
    teacher, vocab, meta = reference_teacher(TEACHER)
    t0 = time.perf_counter()
    cal = [x for x, _ in list(train_batches(corpus.train, teacher.cfg.n_seq, 32, seed=1))[:n_batches]]
    held = [x for x, _ in list(eval_windows(corpus.valid, teacher.cfg.n_seq, 32))[:n_held]]
    Gc = [b.bk.resolvent(v) for b, v in zip(teacher.blocks, potentials(teacher, cal))]
    Gh = [b.bk.resolvent(v) for b, v in zip(teacher.blocks, potentials(teacher, held))]
    out = dict(sqnr_db={}, positions={}, test_ppl={})
    disk = max((G - 0.5j).abs().max().item() for G in Gc + Gh)
    out['max_abs_G_minus_i_over_2'] = disk
    err4 = {}
    for bits in (8, 4):
        table = {}
        for name, kw in VARIANTS.items():
            per_layer = []
            for layer, (gc, gh) in enumerate(zip(Gc, Gh)):
                q = calibrated(kw, bits, gc)
                ghq = q(gh)
                per_layer.append(sqnr(gh, ghq))
                if bits == 4 and layer == 0:
                    err4[name] = (gh - ghq).abs().pow(2).mean(0).sqrt().tolist()
            table[name] = dict(per_layer=per_layer, mean=sum(per_layer) / len(per_layer))
        per_layer = []
        for gc, gh in zip(Gc, Gh):
            q = calibrated(dict(scheme='separate', symmetric=False, granularity=PerChannel(-1)), bits, 1 / gc)
            per_layer.append(sqnr(gh, 1 / q(1 / gh)))
        table[R_VARIANT] = dict(per_layer=per_layer, mean=sum(per_layer) / len(per_layer))
        out['sqnr_db'][str(bits)] = table
        print(bits, {k: round(v['mean'], 2) for k, v in table.items()}, flush=True)
    # per-position scales see 32x fewer values each than a per-tensor scale: how much calibration data, which observer
    study = {}
    for obs in ('min_max', 'moving_average'):
        for nb in (8, n_batches):
            for gname, gran in (('per tensor', PerTensor()), ('per position', PerChannel(-1))):
                r = [sqnr(gh, calibrated(dict(granularity=gran), 8, gc[: nb * 32], obs)(gh)) for gc, gh in zip(Gc, Gh)]
                study[f'{obs}, {nb} batches, {gname}'] = dict(per_layer=r, mean=sum(r) / len(r))
    out['calibration_study_8bit_separate_asymmetric'] = study
    print(study, flush=True)
    a = [G.abs() for G in Gh]
    out['positions'] = dict(
        layers=[dict(abs_mean=x.mean(0).tolist(), abs_min=x.amin(0).tolist(), abs_max=x.amax(0).tolist()) for x in a],
        rms_error_4bit_layer0=err4,
    )
    out['test_ppl']['fp32'] = evaluate(teacher, corpus.test)['ppl']
    for bits in (8, 4):
        out['test_ppl'][str(bits)] = {}
        for name, kw in VARIANTS.items():
            cfg = ComplexInt8Config(
                linear=False,
                embedding=False,
                bk_observer=OBSERVER,
                bk_bits=bits,
                bk_scheme=kw['scheme'],
                bk_symmetric=kw.get('symmetric'),
                bk_granularity=kw['granularity'],
            )
            m = ResNetBKLM(teacher.cfg)
            m.load_state_dict(teacher.state_dict())
            quantize_(m, cfg)
            m.eval()
            with calibrating(m), torch.no_grad():
                for x in cal:
                    m(x)
            out['test_ppl'][str(bits)][name] = evaluate(m, corpus.test)['ppl']
            print(bits, name, out['test_ppl'][str(bits)][name], flush=True)
    return dict(
        results=out,
        calib=f'{n_batches} training batches of 32 x 128 tokens',
        held_out=f'first {n_held} validation batches of 32 x 128 tokens',
        observer=OBSERVER,
        wall_s=time.perf_counter() - t0,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'complex_quant_wt2.json'))
    a = p.parse_args()
    res = run()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
