"""INT4 experts on the 3-epoch teacher, WikiText-2 test: fp32; INT8 experts; INT4 with round-to-nearest, with the
scale search (with and without calibration input moments) and with GPTQ at group sizes 32/64/128; INT4 after QAT;
every variant with an INT8 router and everything outside the MoE layers in fp32. Bytes of the expert tensors and of
the whole file, routing agreement, and the relative output error of the MoE layers on held-out text.

    python bench/int4_moe_wt2.py [--calib-batches 16] [--qat-steps 200] [--out bench/out/int4_moe_wt2.json]
"""

import argparse, copy, json, platform, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_wt2 import teacher_file, reference_teacher
from resnet_bk_compress.data import load_wikitext2, train_batches, eval_windows
from resnet_bk_compress.files import file_bytes, save_model
from resnet_bk_compress.train import evaluate, fit
from resnet_bk_compress.quant import calibrating, quantize_
from resnet_bk_compress.int4_moe import METHODS, Int4MoEConfig, expert_bytes

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'bench' / 'out' / 'int4_moe_wt2.json'
EXPERTS_ONLY = dict(linear=False, embedding=False, bk_core=False)
GROUPS = (32, 64, 128)


def moe_inputs(model, batches):
    "Inputs of every block's MoE on these batches: list of (T, d)."
    xs = [[] for _ in model.blocks]
    hooks = [
        b.moe.register_forward_hook(
            lambda m, inp, out, i=i: xs[i].append(inp[0].detach().reshape(-1, inp[0].shape[-1]))
        )
        for i, b in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(x) for x in xs]


def moe_error(teacher, model, inputs):
    """(experts' relative output error with every token through every expert, the MoE layers' relative output error), on
    these inputs."""
    num = den = lnum = lden = 0.0
    with torch.no_grad():
        for bt, bq, x in zip(teacher.blocks, model.blocks, inputs):
            for e in range(bt.moe.num_experts):
                ref = bt.moe.expert(e, x)
                num += (bq.moe.expert(e, x) - ref).pow(2).sum().item()
                den += ref.pow(2).sum().item()
            ref = bt.moe(x)
            lnum += (bq.moe(x) - ref).pow(2).sum().item()
            lden += ref.pow(2).sum().item()
    return (num / den) ** 0.5, (lnum / lden) ** 0.5


def run(calib_batches=16, qat_steps=200, qat_lr=1e-4, only=None):
    corpus = load_wikitext2()
    teacher, vocab, meta = reference_teacher(TEACHER)
    t0, tmp = time.perf_counter(), Path(tempfile.mkdtemp())
    cal = [x for x, _ in list(train_batches(corpus.train, teacher.cfg.n_seq, 32, seed=123))[:calib_batches]]
    held = moe_inputs(teacher, [x for x, _ in list(eval_windows(corpus.valid, teacher.cfg.n_seq, 32))[:4]])
    fp_experts = expert_bytes(
        {
            f'{i}.{k}': v
            for i, b in enumerate(teacher.blocks)
            for k, v in b.moe.state_dict().items()
            if k.startswith('experts.')
        }
    )
    previous = json.loads(Path(OUT).read_text())['results'] if only else {}
    out = {
        'fp32': dict(
            test_ppl=evaluate(teacher, corpus.test)['ppl'],
            expert_bytes=fp_experts,
            file_bytes=file_bytes(teacher_file(TEACHER)),
        )
    }
    print('fp32', out['fp32'], flush=True)

    def convert(cfg, name, train_steps=0):
        if only is not None and name not in only:
            out[name] = previous[name]
            return
        m = quantize_(copy.deepcopy(teacher), cfg)
        m.eval()
        with calibrating(m), torch.no_grad():
            for x in cal:
                m(x)
        agreement = [b.moe.routing_agreement for b in m.blocks]
        secs = None
        if train_steps:
            t = time.perf_counter()
            fit(m, corpus, epochs=1, max_steps=train_steps, lr=qat_lr, eval_split=None, progress=False, seed=7)
            secs = time.perf_counter() - t
            m.eval()
        quantize_(m, cfg, 'convert')
        f = save_model(m, tmp / f'{name}.safetensors', vocab)
        eb = expert_bytes({f'{i}.{k}': v for i, b in enumerate(m.blocks) for k, v in b.moe.expert_tensors().items()})
        e_err, l_err = moe_error(teacher, m, held)
        r = dict(
            test_ppl=evaluate(m, corpus.test)['ppl'],
            expert_bytes=eb,
            file_bytes=file_bytes(f),
            routing_agreement=agreement,
            expert_output_rel_error=e_err,
            moe_output_rel_error=l_err,
            config=cfg.to_dict(),
        )
        if secs is not None:
            r.update(qat_steps=train_steps, qat_lr=qat_lr, qat_seconds=secs)
        out[name] = r
        print(name, {k: v for k, v in r.items() if k != 'config'}, flush=True)

    convert(Int4MoEConfig(**EXPERTS_ONLY, expert_bits=8, method='rtn'), 'INT8 g128')
    for g in GROUPS:
        for method in METHODS:
            convert(Int4MoEConfig(**EXPERTS_ONLY, group_size=g, method=method), f'INT4 {method} g{g}')
    convert(Int4MoEConfig(**EXPERTS_ONLY, method='mse', use_moments=False), 'INT4 mse g128, no moments')
    convert(Int4MoEConfig(**EXPERTS_ONLY, method='gptq'), 'INT4 gptq g128 + QAT', train_steps=qat_steps)
    ctrl = json.loads((ROOT / 'bench' / 'out' / 'quant_wt2.json').read_text())['results']['qat']
    assert ctrl['steps'] == qat_steps and ctrl['lr'] == qat_lr, (
        'the fp32 control of quant_wt2.json used other QAT settings: rerun it'
    )
    for v in out.values():
        v['expert_ratio'] = fp_experts / v['expert_bytes']
        v['file_ratio'] = out['fp32']['file_bytes'] / v['file_bytes']
    weight_error = {m: {str(g): out[f'INT4 {m} g{g}']['expert_output_rel_error'] for g in GROUPS} for m in METHODS}
    return dict(
        results=out,
        group_sizes=list(GROUPS),
        weight_error=weight_error,
        rerun_only=only,
        fp32_control_same_steps_test_ppl=ctrl['fp32_control_same_steps_test_ppl'],
        calib_batches=calib_batches,
        calib_tokens=calib_batches * 32 * teacher.cfg.n_seq,
        held_out='4 validation batches of 32 x 128 tokens',
        wall_s=time.perf_counter() - t0,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--calib-batches', type=int, default=16)
    p.add_argument('--qat-steps', type=int, default=200)
    p.add_argument('--qat-lr', type=float, default=1e-4)
    p.add_argument('--out', default=str(OUT))
    p.add_argument('--only', nargs='*', help='rerun only these variants, keeping the others from the existing output')
    a = p.parse_args()
    res = run(a.calib_batches, a.qat_steps, a.qat_lr, a.only)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
