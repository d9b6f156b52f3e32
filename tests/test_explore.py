"The explorer outside the notebook: its measurements, and its widget in a live Jupyter kernel."
import pytest
import torch
import nbformat
from nbclient import NotebookClient
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.explore import CompressionExplorer, frontier

SETUP = """
import torch
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.explore import CompressionExplorer
corpus = synthetic_corpus(vocab_size=200, n_train=8_000, n_eval=1_000)
torch.manual_seed(0)
model = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab), d_model=16, n_layers=1, n_seq=32, num_experts=2))
ex = CompressionExplorer(model, corpus, bits=(4, 8), group_sizes=(16,), thresholds=(0.,), calib_batches=1, batch_size=4)
"""

@pytest.fixture(scope='module')
def ex():
    corpus = synthetic_corpus(vocab_size=200, n_train=8_000, n_eval=1_000)
    torch.manual_seed(0)
    model = ResNetBKLM(ResNetBKConfig(vocab_size=len(corpus.vocab), d_model=16, n_layers=1, n_seq=32, num_experts=2))
    return CompressionExplorer(model, corpus, bits=(4, 8), group_sizes=(8, 16), thresholds=(0., 0.6), calib_batches=1, batch_size=4)

def test_points_are_measured_files(ex):
    pts = ex.grid()
    assert len(pts) == 8 and all(p['bytes'] < ex.float_bytes for p in pts)
    assert all(p['experts'] == [2] for p in pts if p['threshold'] == 0.) and all(p['experts'] == [1] for p in pts if p['threshold'] == 0.6)
    front = frontier(pts)
    assert front and all(not any(q['bytes'] <= p['bytes'] and q['ppl'] < p['ppl'] for q in pts) for p in front)

def test_the_model_is_not_changed(ex):
    before = {k: v.clone() for k, v in ex.model.state_dict().items()}
    ex.point(4, 8, 0.6)
    assert all(torch.equal(before[k], v) for k, v in ex.model.state_dict().items()) and ex.model.training  # weights and mode as given

def test_pruning_keeps_the_experts_above_the_threshold(ex):
    from resnet_bk_compress.pruning import _moes
    kept_model, _ = ex._pruned(0.6)
    usage = ex.stats[0].usage
    assert _moes(kept_model)[0].kept == [int(usage.argmax())]  # the most used expert, whatever its saliency

def test_explorer_is_a_widget_in_a_live_kernel():
    "In a Jupyter kernel the explorer displays as a widget (with the picture beside it); moving a control redraws."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell('view = ex.explore(4, 16, 0.)\nview'),
                                         nbformat.v4.new_code_cell("out = view.widget.children[-1]; a = out.outputs[0]['data']['image/png']\n"
                                                                   "view.widget.children[0].value = 8\nprint(out.outputs[0]['data']['image/png'] != a)")])
    NotebookClient(nb, timeout=300, kernel_name='python3').execute()
    data = [o for o in nb.cells[1].outputs if o.output_type == 'execute_result'][0]['data']
    assert 'application/vnd.jupyter.widget-view+json' in data and 'image/png' in data
    assert nb.cells[2].outputs[0]['text'].strip() == 'True'
