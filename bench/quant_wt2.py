"""INT8 on the 3-epoch teacher, WikiText-2 test: fp32; post-training INT8 (weights, embeddings, BK-Core) with each
observer; the same plus INT8 inputs of every Linear; that configuration after a short QAT (and, as a control, the fp32
model fine-tuned for the same steps); the file bytes of each.

    python bench/quant_wt2.py [--calib-batches 16] [--qat-steps 200] [--out bench/out/quant_wt2.json]
"""

import argparse, copy, json, platform, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_wt2 import teacher_file, reference_teacher
from resnet_bk_compress.data import load_wikitext2, train_batches, unigram_ppl
from resnet_bk_compress.files import file_bytes, save_model
from resnet_bk_compress.train import evaluate, fit
from resnet_bk_compress.quant import OBSERVERS, Int8Config, calibrating, quantize_

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

ROOT = Path(__file__).resolve().parents[1]


def calibrate(model, corpus, n_batches, seed=123):
    model.eval()
    with calibrating(model), torch.no_grad():
        for i, (x, _) in enumerate(train_batches(corpus.train, model.cfg.n_seq, 32, seed=seed)):
            if i == n_batches:
                break
            model(x)


def run(calib_batches=16, qat_steps=200, qat_lr=1e-4, observer_for_qat='moving_average'):
    corpus = load_wikitext2()
    teacher, vocab, meta = reference_teacher(TEACHER)
    out, tmp = {}, Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    fp32 = evaluate(teacher, corpus.test)['ppl']
    out['fp32'] = dict(test_ppl=fp32, file_bytes=file_bytes(teacher_file(TEACHER)))
    out['unigram_test_ppl'] = unigram_ppl(corpus.train, corpus.test, len(vocab))
    print('fp32', out['fp32'], flush=True)
    for name in OBSERVERS:
        cfg = Int8Config(observer=name)
        m = quantize_(copy.deepcopy(teacher), cfg)
        calibrate(m, corpus, calib_batches)
        fake = evaluate(m, corpus.test)['ppl']
        quantize_(m, cfg, 'convert')
        real = evaluate(m, corpus.test)['ppl']
        f = save_model(m, tmp / f'ptq_{name}.safetensors', vocab)
        out[f'ptq_{name}'] = dict(test_ppl=real, fake_quant_test_ppl=fake, file_bytes=file_bytes(f))
        print(name, out[f'ptq_{name}'], flush=True)
    # INT8 inputs of every Linear too (per tensor): the configuration where rounding costs something
    cfg = Int8Config(observer=observer_for_qat, activations=True)
    m = quantize_(copy.deepcopy(teacher), cfg)
    calibrate(m, corpus, calib_batches)
    quantize_(m, cfg, 'convert')
    f = save_model(m, tmp / 'ptq_activations.safetensors', vocab)
    out['ptq_activations'] = dict(
        test_ppl=evaluate(m, corpus.test)['ppl'], file_bytes=file_bytes(f), observer=observer_for_qat
    )
    print('activations', out['ptq_activations'], flush=True)
    # QAT from the calibrated model of that configuration, and the same fine-tuning in fp32 as a control
    m = quantize_(copy.deepcopy(teacher), cfg)
    calibrate(m, corpus, calib_batches)
    ts = time.perf_counter()
    fit(m, corpus, epochs=1, max_steps=qat_steps, lr=qat_lr, eval_split=None, progress=False, seed=7)
    qat_s = time.perf_counter() - ts
    quantize_(m, cfg, 'convert')
    qat = evaluate(m, corpus.test)['ppl']
    f = save_model(m, tmp / 'qat.safetensors', vocab)
    ctrl = copy.deepcopy(teacher)
    fit(ctrl, corpus, epochs=1, max_steps=qat_steps, lr=qat_lr, eval_split=None, progress=False, seed=7)
    ctrl_ppl = evaluate(ctrl, corpus.test)['ppl']
    ptq = out['ptq_activations']['test_ppl']
    out['qat'] = dict(
        test_ppl=qat,
        file_bytes=file_bytes(f),
        steps=qat_steps,
        lr=qat_lr,
        seconds=qat_s,
        tokens_per_s=qat_steps * 32 * teacher.cfg.n_seq / qat_s,
        config=cfg.to_dict(),
        fp32_control_same_steps_test_ppl=ctrl_ppl,
        ptq_loss_ppl=ptq - fp32,
        # a share of a loss is only meaningful when there is a loss: below 0.1% of the fp32 perplexity
        # (seed-to-seed noise of training is larger) it is reported as None
        share_of_ptq_loss_recovered=(ptq - qat) / (ptq - fp32) if ptq - fp32 > 1e-3 * fp32 else None,
        qat_minus_fp32_control_ppl=qat - ctrl_ppl,
    )
    print('qat', out['qat'], flush=True)
    for k, v in out.items():
        if isinstance(v, dict) and 'file_bytes' in v:
            v['compression_vs_fp32_file'] = out['fp32']['file_bytes'] / v['file_bytes']
    return dict(
        results=out,
        calib_batches=calib_batches,
        calib_tokens=calib_batches * 32 * teacher.cfg.n_seq,
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
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'quant_wt2.json'))
    a = p.parse_args()
    res = run(a.calib_batches, a.qat_steps, a.qat_lr)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
