"""Render the documentation pages without Quarto, to check them: nbdev's processed notebooks (what Quarto renders on
GitHub) turned into HTML with nbconvert, and optionally photographed with headless Chromium.

    python tools/render_docs.py [--out _pages] [--screenshots] [--height 6000]

Quarto cannot be installed everywhere; this shows what each page will contain: hidden cells removed, directives
stripped, API docs rendered, every plot and no error output. tests/test_docs.py runs `render` on every notebook.
"""
import argparse, shutil, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def process() -> Path:
    "Run nbdev's docs processors on every notebook (as nbdev-docs does before Quarto); returns the folder of processed notebooks."
    from nbdev.serve import proc_nbs
    return Path(proc_nbs(path=str(ROOT / 'nbs'), n_workers=0, force=True))

CELL_KEYS = {'cell_type', 'execution_count', 'id', 'metadata', 'outputs', 'source', 'attachments'}

def quarto_view(nb):
    "What Quarto does with a processed notebook's cell options, done for nbconvert: `#| include: false` drops the cell, `#| echo: false` its code, and the option lines go."
    cells = []
    for c in nb.cells:
        for k in set(c) - CELL_KEYS: del c[k]  # nbdev's bookkeeping (has_sd, ...): not nbformat
        c.metadata.pop('execution', None)  # execnb's timings, not in nbformat's schema
        if c.cell_type != 'code': cells.append(c); continue
        lines = c.source.splitlines()
        opts = {}
        while lines and lines[0].startswith('#|'):
            k, _, v = lines.pop(0)[2:].partition(':'); opts[k.strip()] = v.strip()
        if opts.get('include') == 'false': continue
        c.source = '\n'.join(lines)
        if opts.get('echo') == 'false': c.metadata.setdefault('tags', []).append('remove_input')
        cells.append(c)
    nb.cells = cells
    return nb

def render(out: Path) -> dict[str, Path]:
    "Processed notebooks -> out/<same path>.html; returns {notebook path relative to nbs/: html file}."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    import nbformat
    proc, pages = process(), {}
    cfg = Config(); cfg.TagRemovePreprocessor.enabled = True; cfg.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    exporter = HTMLExporter(template_name='lab', config=cfg)
    for nb_path in sorted(proc.rglob('*.ipynb')):
        rel = nb_path.relative_to(proc)
        html, _ = exporter.from_notebook_node(quarto_view(nbformat.read(nb_path, as_version=4)))
        dst = Path(out) / rel.with_suffix('.html'); dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(html, encoding='utf-8')
        pages[rel.as_posix()] = dst
    return pages

def screenshot(html: Path, png: Path, width: int = 1280, height: int = 6000) -> Path:
    "A PNG of the first `height` pixels of a page, taken by headless Chromium."
    exe = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if exe is None: raise FileNotFoundError("no Chromium found: install it (Debian: apt-get install chromium) to take screenshots")
    subprocess.run([exe, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--hide-scrollbars',
                    f'--window-size={width},{height}', f'--screenshot={png}', html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / '_pages'))
    p.add_argument('--screenshots', action='store_true')
    p.add_argument('--height', type=int, default=6000)
    a = p.parse_args()
    for rel, page in render(Path(a.out)).items():
        print(page)
        if a.screenshots: print(screenshot(page, page.with_suffix('.png'), height=a.height))
