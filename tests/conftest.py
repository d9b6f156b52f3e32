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
