"Entropy coding: the rANS coder is exact on any message, refuses damaged streams, and model files that use it load, as do files written before it."
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from resnet_bk_compress.coding import PROB_BITS, normalized_freqs, rans_encode, rans_decode, code_bytes, decode_bytes
from resnet_bk_compress.data import synthetic_corpus, pack_words, unpack_words, front_code, _CODECS
from resnet_bk_compress.files import save_model, load_model, read_model_file, ModelFileError
from resnet_bk_compress.int4_moe import Int4MoEConfig
from resnet_bk_compress.tables import CodebookTable, quantize_bias_
from resnet_bk_compress.files import save_compressed
from conftest import sealed, small_model, quantized_small, fresh_process_logits

@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300).filter(any))
def test_frequencies_sum_exactly_and_keep_every_seen_symbol(counts):
    f = normalized_freqs(counts)
    assert sum(f) == 2**PROB_BITS and all((fi > 0) == (c > 0) for fi, c in zip(f, counts))

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_rans_round_trip_is_exact(data):
    k = data.draw(st.integers(1, 256))
    weights = data.draw(st.lists(st.integers(0, 50), min_size=k, max_size=k).filter(any))
    n = data.draw(st.integers(0, 2000))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    msg = rng.choice(k, size=n, p=np.asarray(weights) / sum(weights)).tolist()
    freqs = normalized_freqs(np.bincount(msg, minlength=k) if n else weights)
    assert rans_decode(rans_encode(msg, freqs), freqs, n) == bytes(msg)

@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 255), st.integers(0, 3000))
def test_code_bytes_round_trip(data, fill, n_fill):
    for b in (data, bytes([fill]) * n_fill, data + bytes([fill]) * n_fill):
        c = code_bytes(b)
        if c is not None:
            assert len(c[1]) <= 0.95 * len(b) and decode_bytes(c[1], c[0], len(b)) == b

def test_coded_sizes_are_near_the_entropy():
    rng = np.random.default_rng(1)
    w = np.clip(np.round(rng.normal(7.5, 1.5, size=200_000)), 0, 15).astype(np.uint8)
    packed = (w[0::2] | (w[1::2] << 4)).tobytes()
    k, blob = code_bytes(packed)
    p = np.bincount(w, minlength=16) / w.size
    h = -(p[p > 0] * np.log2(p[p > 0])).sum() * w.size / 8
    assert k == 16 and h < len(blob) < 1.002 * h + 40, (len(blob), h)
    assert code_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()) is None  # uniform bytes: stored as they are

def test_damaged_streams_are_refused():
    rng = np.random.default_rng(2)
    msg = rng.choice(16, size=5000, p=[0.5] + [0.5 / 15] * 15).tolist()
    freqs = normalized_freqs(np.bincount(msg, minlength=16))
    blob = rans_encode(msg, freqs)
    for bad in (blob[:-1], blob[:3], blob + b'\0', bytes([blob[0] ^ 1]) + blob[1:]):
        with pytest.raises(ValueError, match='damaged'): rans_decode(bad, freqs, len(msg))
    with pytest.raises(ValueError, match='normalized_freqs'): rans_encode(msg, [1] * 16)
    with pytest.raises(ValueError, match='frequency 0'): rans_encode([3], normalized_freqs([1, 1, 1, 0]))

@pytest.fixture(scope='module')
def coded_model():
    "A pipeline-like model (codebook table of 256 codewords, INT4, 4-bit biases) over 3,000 words: byte tensors worth coding."
    corpus = synthetic_corpus(vocab_size=3000, n_train=30_000, n_eval=2_000)
    counts = torch.bincount(corpus.train, minlength=len(corpus.vocab)).float()
    m = small_model(corpus, tie_embeddings=True)
    m.tok_emb = CodebookTable.from_table(m.tok_emb.weight.detach(), 100, 1, 256, weights=counts)
    return quantize_bias_(quantized_small(corpus, m, Int4MoEConfig(group_size=16, embedding_bits=4)), counts), corpus

def test_entropy_coded_files_load_exactly_in_a_fresh_process_and_are_smaller(coded_model, tmp_path):
    m, corpus = coded_model
    x = corpus.test[:32][None]
    plain = save_model(m, tmp_path / 'plain.safetensors', corpus.vocab, compress_vocab=True, pack_small=True)
    coded = save_compressed(m, tmp_path / 'coded.safetensors', corpus.vocab)
    h, _ = read_model_file(coded)
    assert h['format_version'] == '3' and read_model_file(plain)[0]['format_version'] == '2'
    assert 'head.bias.codes' in json.loads(h['coded']), h['coded']  # (2,900 codes of a byte do not pay for a 512-byte table here)
    assert coded.stat().st_size < plain.stat().st_size, (coded.stat().st_size, plain.stat().st_size)
    with torch.no_grad(): want = m(x)
    assert torch.equal(fresh_process_logits('resnet_bk_compress.files.load_compressed', coded, x, tmp_path), want)

def test_a_damaged_coded_tensor_is_a_clear_error(coded_model, tmp_path):
    m, corpus = coded_model
    f = save_compressed(m, tmp_path / 'coded.safetensors', corpus.vocab)
    with safe_open(str(f), 'pt') as g: header, tensors = g.metadata(), {k: g.get_tensor(k) for k in g.keys()}
    k = next(k for k in tensors if k.endswith('@rans'))
    tensors[k] = tensors[k][:-3].clone()  # cut short, and the checksum recomputed: only the decoder can tell
    save_file(tensors, str(tmp_path / 'bad.safetensors'), metadata=sealed(header, tensors))
    with pytest.raises(ModelFileError, match='entropy-coded tensor cannot be decoded.*corrupt'): load_model(tmp_path / 'bad.safetensors')

def test_files_written_before_entropy_coding_still_load():
    "tests/data/format2: files of several kinds written by the library before this change (format version 2), with their logits."
    d = Path(__file__).parent / 'data' / 'format2'
    ref = torch.load(d / 'logits.pt')
    assert len(ref['logits']) == 4
    for name, want in ref['logits'].items():
        h, _ = read_model_file(d / name)
        assert h['format_version'] == '2', name
        with torch.no_grad(): got = load_model(d / name)[0](ref['x'])[0, :, :20]
        torch.testing.assert_close(got, want, msg=ref['names'][name])

def test_word_lists_take_the_smallest_codec_and_old_codecs_still_unpack():
    words = sorted({f'{a}{b}{c}' for a in 'abcdefgh' for b in 'aeiou' for c in ('', 's', 'ing', 'ed', 'er')}) + ['<eos>', '<unk>']
    blob = pack_words(words)
    fc = front_code(words)
    assert unpack_words(blob) == words and len(blob) == 1 + min(len(enc(fc)) for _, enc, _ in _CODECS.values())
    for tag, (_, enc, _) in _CODECS.items(): assert unpack_words(bytes([tag]) + enc(fc)) == words
    with pytest.raises(ValueError, match='ppmd.*damaged'): unpack_words(bytes([3]) + b'\x00\x01garbage')
