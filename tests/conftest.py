import os
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
    from resnet_bk_compress.train import model_digest
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
