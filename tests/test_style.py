"House rules a tool can check: lines of at most 120 characters in the library and notebooks, one formatter."

import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args) -> subprocess.CompletedProcess:
    "ruff (a dev dependency: pip install -e \".[dev]\") of this Python, on the checkout."
    r = subprocess.run([sys.executable, '-m', 'ruff', *args], cwd=ROOT, capture_output=True, text=True)
    assert 'No module named ruff' not in r.stderr, 'ruff is a dev dependency: pip install -e ".[dev]"'
    return r


def test_lines_at_most_120():
    "`ruff check` (E501, set in pyproject.toml) over the library and the notebooks; nbdev writes `__all__` itself."
    r = ruff('check', '--output-format', 'json', 'resnet_bk_compress', 'nbs')
    found = json.loads(r.stdout or '[]')
    assert r.returncode in (0, 1), r.stderr

    def generated(v):  # nbdev wraps its `__all__` at 120 characters before it puts `__all__ = ` in front
        f = Path(v['filename'])
        return f.suffix == '.py' and f.read_text().splitlines()[v['location']['row'] - 1].startswith('__all__ = [')

    long = [f"{v['filename']}:{v['location']['row']}" for v in found if not generated(v)]
    assert not long, f'lines over 120 characters (run `ruff format nbs`, then wrap what is left by hand): {long}'


def test_notebooks_and_benchmarks_formatted():
    "The notebooks' and benchmarks' code is as `ruff format` writes it (`ruff format nbs bench`; then `nbdev-export`)."
    r = ruff('format', '--check', 'nbs', 'bench')
    assert r.returncode == 0, r.stdout + r.stderr


def test_benchmarks_at_most_120_and_say_how_to_run_them():
    "Each script under bench/ has lines of at most 120 characters and a docstring with its command and what it writes."
    r = ruff('check', '--output-format', 'json', 'bench')
    assert r.returncode in (0, 1), r.stderr
    assert not json.loads(r.stdout or '[]'), [f"{v['filename']}:{v['location']['row']}" for v in json.loads(r.stdout)]
    import ast

    for f in sorted((ROOT / 'bench').glob('*.py')):
        doc = ast.get_docstring(ast.parse(f.read_text())) or ''
        assert f'python bench/{f.name}' in doc and 'bench/out/' in doc, f"{f.name}: its docstring says neither its command nor what it writes"


def test_the_check_can_fail(tmp_path):
    "A line of 121 characters is found."
    f = tmp_path / 'long.py'
    f.write_text('x = ' + repr('a' * 115) + '\n')
    r = ruff('check', '--isolated', '--select', 'E501', '--line-length', '120', str(f))
    assert r.returncode == 1 and 'E501' in r.stdout
