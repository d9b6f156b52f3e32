"""Generation on WikiText-2: tokens/s of the incremental decoder against a full forward per token, PyTorch against ONNX
Runtime, the ONNX file's bytes against the model file's, and what decoding past n_seq costs in perplexity (position
held vs a sliding window).

Models: the 3-epoch teacher (bench/train_wt2.py) and its 100x compressed model (`bench/pipeline_wt2.py --teacher
3epoch`, its run directory in .cache/pipeline_wt2_3epoch): the figures' models; or any files given with --models.
Speed: batch 1, a 16-word prompt, --new greedy tokens, best of 3; run alone. Writes bench/out/generate_wt2.json.

    python bench/generate_wt2.py [--models A.safetensors ...] [--new 256] [--length 512] [--stretches 32] [--no-speed]
"""

import argparse, json, platform, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import reference_teacher, ROOT, teacher_file
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.files import load_model, file_bytes
from resnet_bk_compress.generate import generate_ids, position_nll

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)


def best_of(fn, repeats=3) -> float:
    "Fastest of `repeats` calls, seconds."
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


@torch.no_grad()
def full_forward_per_token(model, ids, new):
    "Greedy decoding the slow way: a forward pass over the last n_seq tokens for every new token."
    seq = ids[None]
    for _ in range(new):
        seq = torch.cat([seq, model(seq[:, -model.cfg.n_seq :])[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[0]


def onnx_stats(model, vocab, path_file, prompt, new) -> dict:
    try:
        from resnet_bk_compress.export import export_onnx, OnnxDecoder
    except ImportError as e:
        return dict(error=f'{type(e).__name__}: {e}')
    with tempfile.TemporaryDirectory() as d:
        f = export_onnx(model, Path(d) / 'm.onnx', vocab)
        dec = OnnxDecoder(f)
        ref = generate_ids(model, prompt, new, greedy=True)
        got = dec.greedy(prompt.numpy(), new)
        s = best_of(lambda: dec.greedy(prompt.numpy(), new))
        return dict(
            onnx_bytes=file_bytes(f),
            vocab_json_bytes=file_bytes(f.with_suffix('.vocab.json')),
            onnx_over_model_file=file_bytes(f) / file_bytes(path_file),
            same_greedy_tokens=bool(np.array_equal(got, ref.numpy())),
            onnxruntime_tokens_per_s=new / s,
        )


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='*', default=None)
    p.add_argument('--new', type=int, default=256)
    p.add_argument('--length', type=int, default=512)
    p.add_argument('--stretches', type=int, default=32)
    p.add_argument('--no-speed', action='store_true')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'generate_wt2.json'))
    a = p.parse_args()
    corpus = load_wikitext2()
    if a.models is None:
        reference_teacher(TEACHER)
        report = ROOT / '.cache' / 'pipeline_wt2_3epoch' / 'report.json'
        a.models = [str(teacher_file(TEACHER))] + (
            [json.loads(report.read_text())['compressed_file']] if report.is_file() else []
        )
    out = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    res = out.setdefault('models', {})
    for f in a.models:
        model, vocab, _ = load_model(f)
        model.eval()
        ids = corpus.with_vocab(vocab)
        r = res[Path(f).name] = dict(file=str(f), file_bytes=file_bytes(f), n_seq=model.cfg.n_seq)
        hold, window = (position_nll(model, ids.valid, a.length, a.stretches, m) for m in ('hold', 'window'))
        n = model.cfg.n_seq
        r['past_n_seq'] = dict(
            length=a.length,
            stretches=a.stretches,
            ppl_within=hold[:n].mean().exp().item(),
            ppl_past_hold=hold[n:].mean().exp().item(),
            ppl_past_window=window[n:].mean().exp().item(),
            nll_by_position_hold=hold.tolist(),
            nll_by_position_window=window.tolist(),
        )
        print(Path(f).name, {k: v for k, v in r['past_n_seq'].items() if not k.startswith('nll')}, flush=True)
        if not a.no_speed:
            prompt = ids.test[:16]
            r['speed'] = dict(
                new_tokens=a.new,
                batch=1,  # within n_seq the two decoders compute the same tokens:
                same_greedy_tokens_within_n_seq=torch.equal(
                    generate_ids(model, prompt, n - 16, greedy=True), full_forward_per_token(model, prompt, n - 16)
                ),
                incremental_tokens_per_s=a.new / best_of(lambda: generate_ids(model, prompt, a.new, greedy=True)),
                full_forward_tokens_per_s=a.new / best_of(lambda: full_forward_per_token(model, prompt, a.new)),
            )
            r['onnx'] = onnx_stats(model, vocab, f, prompt, a.new)
            print(Path(f).name, r['speed'], r['onnx'], flush=True)
        out.update(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine())
        Path(a.out).write_text(json.dumps(out, indent=1))
