"""Bytes of a compressed model by part: stored as they are, their order-0 entropy, and as entropy coding stores them.

Reads a file the pipeline wrote (default: the 100x WikiText-2 file of the figures' run,
`bench/pipeline_wt2.py --teacher 3epoch`, in .cache/pipeline_wt2_3epoch),
writes it again with today's `save_compressed` (rANS-coded byte tensors, the word list by PPMd) and without entropy
coding (its word list is PPMd's too: the "raw" word list is the smaller of xz and bzip2, as before), and measures: per
part, the bytes as stored, the order-0 entropy of its byte and nibble values, the bytes as the coded file stores them;
the word list under each codec; the seconds to write and to load each file; and that the two files give the same logits.
Writes bench/out/coding_wt2.json.

    python bench/coding_wt2.py [FILE] [--out bench/out/coding_wt2.json]
"""

import argparse, json, platform, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_wt2 import ROOT
from resnet_bk_compress.data import front_code, _CODECS
from resnet_bk_compress.files import save_model, read_model_file, file_bytes
from resnet_bk_compress.files import load_compressed, save_compressed
from resnet_bk_compress.report import file_parts, _PARTS


def entropy_bytes(a: np.ndarray, k: int) -> float:
    c = np.bincount(a, minlength=k).astype(float)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum() * a.size / 8)


def part_of(name: str) -> str:
    return next(label for prefix, label in _PARTS if name.startswith(prefix))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        'file', nargs='?', default=str(ROOT / '.cache' / 'pipeline_wt2_3epoch' / 'stage3_quantize.safetensors')
    )
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'coding_wt2.json'))
    a = p.parse_args()
    model, vocab, info = load_compressed(a.file)
    d = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    coded = save_compressed(model, d / 'coded.safetensors', vocab, info)
    t_save = time.perf_counter() - t0
    plain = save_model(
        model, d / 'plain.safetensors', vocab, header={'compressed': info}, compress_vocab=True, pack_small=True
    )
    t0 = time.perf_counter()
    m2, v2, _ = load_compressed(coded)
    t_load_coded = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_compressed(plain)
    t_load_plain = time.perf_counter() - t0
    x = torch.randint(0, len(vocab), (2, model.cfg.n_seq))
    with torch.no_grad():
        same = torch.equal(model(x), m2(x)) and v2.itos == vocab.itos
    _, tensors = read_model_file(coded)  # decoded: the values as the model holds them
    raw, coded_parts = file_parts(plain), file_parts(coded)
    parts = {k: dict(raw_bytes=raw[k], coded_bytes=coded_parts.get(k, 0)) for k in raw}
    for name, t in tensors.items():  # order-0 entropy of every byte tensor of at least 1 KB, in its part
        if t.dtype in (torch.uint8, torch.int8) and t.numel() >= 1024:
            b = t.flatten().view(torch.uint8).numpy()
            nib = np.stack([b & 15, b >> 4], 1).reshape(-1)
            parts[part_of(name)].setdefault('tensors', {})[name] = dict(
                bytes=int(b.size),
                entropy_bytes_as_bytes=entropy_bytes(b, 256),
                entropy_bytes_as_nibbles=entropy_bytes(nib, 16),
            )
    header, _ = read_model_file(coded)
    fc = front_code(vocab.itos)
    words = {name: len(enc(fc)) + 1 for name, enc, _ in _CODECS.values()}
    parts['word list']['raw_bytes'] = min(words['xz'], words['bz2'])  # before PPMd: the smaller of xz and bzip2
    res = dict(
        file=Path(a.file).name,
        raw_bytes=sum(v['raw_bytes'] for v in parts.values()),
        coded_bytes=file_bytes(coded),
        same_logits=same,
        parts=parts,
        coded_tensors=json.loads(header.get('coded', '{}')),
        word_list=dict(front_coded_bytes=len(fc), **words),
        seconds=dict(save_coded=t_save, load_coded=t_load_coded, load_plain=t_load_plain),
        torch=torch.__version__,
        machine=platform.machine(),
    )
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ('parts', 'coded_tensors')}, indent=1))
    for k, v in parts.items():
        print(f"{k:28s} {v['raw_bytes']:8,} -> {v['coded_bytes']:8,}")
