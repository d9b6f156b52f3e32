"Quantizing models with a tied or factorized embedding/head: the head scores with the quantized table, files round-trip."
import pytest
import torch
from resnet_bk_compress.data import synthetic_corpus, train_batches
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.files import save_model
from resnet_bk_compress.train import fit, evaluate
from resnet_bk_compress.quant import Int8Config, quantize_, calibrating
from resnet_bk_compress.int4_moe import Int4MoEConfig, QuantizedEmbedding
from conftest import fresh_process_logits

@pytest.mark.parametrize('config', [Int8Config(), Int4MoEConfig(embedding_bits=4, group_size=32)], ids=['int8', 'int4'])
@pytest.mark.parametrize('rank', [None, 8])
def test_tied_head_quantized_round_trip(config, rank, tmp_path):
    syn = synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)
    m = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=1, n_seq=32, tie_embeddings=True, embed_rank=rank))
    fit(m, syn, max_steps=30, batch_size=16, lr=5e-3, eval_split=None, progress=False)
    fp = evaluate(m, syn.test)['ppl']
    quantize_(m, config); m.eval()
    with calibrating(m), torch.no_grad():
        for x, _ in list(train_batches(syn.train, 32, 16, seed=1))[:2]: m(x)
    with torch.no_grad(): fake = m(syn.test[:32][None])
    quantize_(m, config, 'convert')
    with torch.no_grad(): stored = m(syn.test[:32][None])
    torch.testing.assert_close(stored, fake, rtol=1e-3, atol=1e-2)  # QAT simulated the stored table (up to the float16 head bias)
    # the head really scores with the (dequantized) embedding table
    torch.testing.assert_close(m.head.weight, m.tok_emb.table())
    assert m.head.bias.dtype == torch.float16
    if getattr(config, 'embedding_bits', 8) == 4: assert isinstance(m.tok_emb, QuantizedEmbedding)
    assert evaluate(m, syn.test)['ppl'] < 1.1 * fp
    p = save_model(m, tmp_path / 'q.safetensors', syn.vocab)
    x = syn.test[:32][None]
    assert torch.equal(fresh_process_logits('resnet_bk_compress.files.load_model', p, x, tmp_path), stored)
