from pathlib import Path
import pytest
import torch
from resnet_bk_compress.data import default_wikitext2_dir

@pytest.fixture(scope='session')
def wt2_dir() -> Path:
    "The WikiText-2 directory ($RBK_WIKITEXT2, else ../shared/data/wikitext-2): missing data is a failure, not a skip."
    d = default_wikitext2_dir()
    assert d is not None and d.is_dir(), "WikiText-2 not found: set RBK_WIKITEXT2 to the shared/data/wikitext-2 folder"
    return d

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

def fresh_process_logits(loader: str, path, x: torch.Tensor, tmp_path, check: str = '') -> torch.Tensor:
    "Logits for tokens x of the model file `path` loaded by `loader` ('module.function') in a new Python process."
    import subprocess, sys
    mod, fn = loader.rsplit('.', 1)
    torch.save(x, tmp_path / 'x.pt')
    code = (f"import sys, torch; from {mod} import {fn}; m, v, _ = {fn}(sys.argv[1]); {check}"
            "torch.save(m(torch.load(sys.argv[2])).detach(), sys.argv[3])")
    subprocess.run([sys.executable, '-c', code, str(path), str(tmp_path / 'x.pt'), str(tmp_path / 'y.pt')], check=True, timeout=300)
    return torch.load(tmp_path / 'y.pt')

def sealed(header: dict, tensors: dict) -> dict:
    "A header a test has edited, with its checksum recomputed over `tensors`: the file passes the integrity check and reaches the check under test."
    from resnet_bk_compress.files import model_digest
    h = {k: v for k, v in header.items() if k != 'checksum'}
    return {**h, 'checksum': model_digest(h, tensors)}

def train_small(corpus, steps: int, **cfg):
    "A small ResNet-BK (width 32, 2 blocks, windows of 32 unless cfg says otherwise) trained from seed 0 for `steps` steps, in eval mode: the teacher of the tests."
    from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
    from resnet_bk_compress.train import fit
    torch.manual_seed(0)
    m = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab), **{'d_model': 32, 'n_layers': 2, 'n_seq': 32, **cfg}))
    fit(m, corpus, max_steps=steps, batch_size=16, lr=5e-3, eval_split=None, progress=False)
    return m.eval()

def small_model(corpus, **cfg):
    "A width-16 `train_small` model (8 steps): cheap to build in every kind."
    return train_small(corpus, 8, d_model=16, **cfg)

def quantized_small(corpus, m, config):
    "m prepared, calibrated on two batches and converted by `config`."
    from resnet_bk_compress.data import train_batches
    from resnet_bk_compress.quant import quantize_, calibrating
    quantize_(m, config)
    with calibrating(m), torch.no_grad():
        for x, _ in list(train_batches(corpus.train, 32, 8))[:2]: m(x)
    return quantize_(m.eval(), config, 'convert')

def pruned_small(corpus, m, keep=2):
    "m with `keep` experts a block, chosen by saliency on two batches."
    from resnet_bk_compress.data import train_batches
    from resnet_bk_compress.pruning import expert_stats, prune_experts_
    with torch.no_grad(): stats = expert_stats(m, [x for x, _ in list(train_batches(corpus.train, 32, 8))[:2]])
    prune_experts_(m, stats, keep=keep)
    return m

def every_kind(corpus) -> dict:
    "name -> (model, save function): one of every kind of model the library builds."
    import copy
    from resnet_bk_compress.files import save_model
    from resnet_bk_compress.quant import Int8Config
    from resnet_bk_compress.complex_quant import ComplexInt8Config
    from resnet_bk_compress.int4_moe import Int4MoEConfig
    from resnet_bk_compress.pruning import MagnitudePruner
    from resnet_bk_compress.tables import CodebookTable, quantize_bias_
    from resnet_bk_compress.distill import make_student
    from resnet_bk_compress.files import save_compressed
    base = small_model(corpus)
    tab = copy.deepcopy(small_model(corpus, tie_embeddings=True))
    tab.tok_emb = CodebookTable.from_table(tab.tok_emb.weight.detach(), 40, 1, 16)
    mag = copy.deepcopy(base); MagnitudePruner(mag).prune(sparsity=0.7)
    untied = small_model(corpus, embed_rank=8)
    q = lambda m, config: quantized_small(corpus, m, config)
    return {'float': (base, save_model),
            'int8': (q(copy.deepcopy(base), Int8Config()), save_model),
            'complex int8': (q(copy.deepcopy(base), ComplexInt8Config()), save_model),
            'int4 experts': (q(copy.deepcopy(base), Int4MoEConfig(group_size=16, embedding_bits=4)), save_model),
            'pruned (save_model)': (pruned_small(corpus, copy.deepcopy(base)), save_model),
            'pruned int4': (q(pruned_small(corpus, copy.deepcopy(base), 1), Int4MoEConfig(group_size=16)), save_model),
            'magnitude-pruned': (mag, save_model),
            'untied factorized int8': (q(untied, Int8Config()), save_model),
            'student': (make_student(base, d_model=8, n_layers=1).eval(), save_model),
            'codebook table, 4-bit biases, compressed': (quantize_bias_(q(tab, Int4MoEConfig(group_size=16, embedding_bits=4))), save_compressed)}
