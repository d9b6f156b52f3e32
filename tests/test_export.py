"ONNX export: every kind the library writes, loaded from its file, runs in ONNX Runtime with PyTorch's logits at every step and the same greedy tokens."
import subprocess, sys
import numpy as np
import pytest
import torch
from resnet_bk_compress.model import InputError
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.files import load_model, save_model
from resnet_bk_compress.quant import PerChannel
from resnet_bk_compress.complex_quant import ComplexInt8Config
from resnet_bk_compress.generate import decode_step, generate_ids
from resnet_bk_compress.export import export_onnx, OnnxDecoder
from conftest import every_kind, quantized_small, small_model

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)

@pytest.fixture(scope='module')
def exported(syn, tmp_path_factory):
    "name -> (model loaded from its file, its ONNX export)."
    d = tmp_path_factory.mktemp('onnx')
    out = {}
    for i, (name, (m, save)) in enumerate(every_kind(syn).items()):
        model, vocab, _ = load_model(save(m, d / f'{i}.safetensors', syn.vocab))
        out[name] = (model, export_onnx(model, d / f'{i}.onnx', vocab))
    return out

def test_every_kind_gives_pytorchs_logits_at_every_step(exported, syn):
    x = torch.stack([syn.test[:48], syn.test[700:748]])  # n_seq = 32: past it too
    for name, (m, f) in exported.items():
        dec, st_t, st_o, err = OnnxDecoder(f), None, None, 0.
        for t in range(x.shape[1]):
            lt, st_t = decode_step(m, x[:, t], st_t)
            lo, st_o = dec.step(x[:, t].numpy(), st_o)
            err = max(err, float(np.abs(lo - lt.numpy()).max()))
        assert err < 1e-4, f"{name}: ONNX logits differ from PyTorch's by {err:.2e}"

def test_greedy_decoding_gives_the_same_tokens(exported, syn):
    prompt = syn.test[:6]
    for name, (m, f) in exported.items():
        assert np.array_equal(OnnxDecoder(f).greedy(prompt.numpy(), 50, banned=syn.vocab.unk_id),
                              generate_ids(m, prompt, 50, greedy=True, banned=syn.vocab.unk_id).numpy()), name

def test_what_cannot_be_exported_is_refused_by_name(syn, tmp_path):
    polar = quantized_small(syn, small_model(syn), ComplexInt8Config(bk_scheme='polar'))
    with pytest.raises(InputError, match='polar'): export_onnx(polar, tmp_path / 'p.onnx')
    per_position = quantized_small(syn, small_model(syn), ComplexInt8Config(bk_granularity=PerChannel(-1)))
    with pytest.raises(InputError, match='per-tensor'): export_onnx(per_position, tmp_path / 'q.onnx')
    assert not list(tmp_path.iterdir())  # nothing half-written

def test_the_command_line(exported, syn, tmp_path):
    m, _ = exported['codebook table, 4-bit biases, compressed']
    f = save_model(m, tmp_path / 'm.safetensors', syn.vocab)
    run = lambda *a: subprocess.run([sys.executable, '-c', 'import sys; from resnet_bk_compress.export import rbk_export; rbk_export(sys.argv[1:])', *map(str, a)],
                                    capture_output=True, text=True, timeout=300)
    r = run(f, '--onnx', tmp_path / 'm.onnx')
    assert r.returncode == 0 and 'bytes' in r.stdout, r.stderr
    assert (tmp_path / 'm.vocab.json').is_file()
    for args, says in (([f, '--onnx', tmp_path / 'm.bin'], '.onnx'), ([tmp_path / 'none.safetensors', '--onnx', tmp_path / 'n.onnx'], 'none.safetensors')):
        r = run(*args)
        assert r.returncode == 2 and says in r.stderr and 'Traceback' not in r.stderr, r.stderr
