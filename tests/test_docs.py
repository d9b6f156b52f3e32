"Every notebook becomes a page: nbdev's docs processing runs, and the rendered page has the notebook's plots and no error."
import json, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from render_docs import render

NBS = sorted(p.relative_to(ROOT / 'nbs').as_posix() for p in (ROOT / 'nbs').rglob('*.ipynb') if '_proc' not in p.parts and not p.name.startswith('.'))

def _visible_images(nb: dict) -> int:
    "PNG outputs of the cells a page shows (hidden cells are removed by nbdev)."
    n = 0
    for c in nb['cells']:
        if c['cell_type'] != 'code' or ''.join(c['source']).lstrip().startswith('#| hide'): continue
        n += sum('image/png' in o.get('data', {}) for o in c.get('outputs', []))
    return n

@pytest.fixture(scope='module')
def pages(tmp_path_factory): return render(tmp_path_factory.mktemp('pages'))

def test_every_notebook_has_a_page(pages):
    assert set(pages) == set(NBS)

@pytest.mark.parametrize('name', NBS)
def test_page_renders_with_its_plots_and_no_error(pages, name):
    nb = json.loads((ROOT / 'nbs' / name).read_text())
    html = pages[name].read_text(encoding='utf-8')
    outs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outs if o['output_type'] == 'error'], 'the notebook was committed with an error output'
    assert not [o for o in outs if o.get('name') == 'stderr' and 'Traceback' in ''.join(o.get('text', ''))]
    assert 'Traceback (most recent call last)' not in html
    assert html.count('src="data:image/png;base64') >= _visible_images(nb), 'a plot of the notebook is missing from its page'
    assert 'colab-badge.svg' in html and f'blob/main/nbs/{name}' in html  # the Open-in-Colab badge, pointing at this notebook
    assert "google.colab' in sys.modules" not in html and '#| hide' not in html and '#| export' not in html  # hidden cells and directives stay out

def test_notebooks_open_in_colab_with_a_gpu():
    for name in NBS:
        md = json.loads((ROOT / 'nbs' / name).read_text())['metadata']
        assert md.get('accelerator') == 'GPU' and md.get('colab', {}).get('gpuType'), name  # kept by nbdev-clean (allowed_metadata_keys)

def test_explorer_page_shows_its_picture(pages):
    "The explorer's committed output (made without a kernel) is a picture, and the page shows it."
    nb = json.loads((ROOT / 'nbs' / '07_explore.ipynb').read_text())
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'code' and ''.join(c['source']).strip() == 'ex.explore(4, 32, 0.25)')
    (out,) = cell['outputs']
    assert 'image/png' in out['data'] and 'application/vnd.jupyter.widget-view+json' not in out['data']
    assert out['data']['image/png'][:200] in pages['07_explore.ipynb'].read_text(encoding='utf-8')
