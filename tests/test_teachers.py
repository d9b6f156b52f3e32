"The teachers the benchmarks compress: kept in the repository, checked by SHA-256, their recorded figures reproduced."

import json, shutil, subprocess, sys
from pathlib import Path
import pytest
from resnet_bk_compress.data import load_wikitext2
from resnet_bk_compress.train import evaluate

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import train_wt2  # noqa: E402
from train_wt2 import KEPT, TEACHERS, reference_teacher, teacher_file  # noqa: E402

record = lambda name: json.loads(TEACHERS[name]['json'].read_text())


@pytest.mark.parametrize('name', KEPT)
def test_a_kept_teacher_is_the_one_its_json_describes(name):
    "Its file matches the recorded SHA-256 and size; the recipe recorded is the one `TEACHERS` trains it with."
    t, tr = TEACHERS[name], record(name)
    assert teacher_file(name) == t['file'] and tr['model_file_bytes'] == t['file'].stat().st_size
    assert {k: tr[k] for k in t['recipe']} == t['recipe']
    assert tr['kept_epoch'] == min(tr['valid_curve'], key=lambda c: c[1])[0] and len(tr['valid_curve']) == tr['epochs']


@pytest.mark.parametrize('name', KEPT)
def test_a_kept_teacher_reproduces_its_test_perplexity(name):
    "The figure every benchmark quotes for the teacher is measured again on WikiText-2's test split."
    model, vocab, meta = reference_teacher(name)
    corpus = load_wikitext2()
    assert vocab.itos == corpus.vocab.itos
    assert evaluate(model, corpus.test)['ppl'] == pytest.approx(record(name)['test_ppl'], rel=1e-4)


def test_the_reference_teacher_beats_the_3_epoch_one_by_2_percent():
    """Issue 34's bar for replacing the reference teacher: 2% below the test perplexity of the 3-epoch teacher the
    headline ran on (243.40; bench/out/train_wt2.json's own training of that recipe reached 247.33)."""
    assert record('reference')['test_ppl'] <= 0.98 * min(243.40, record('3epoch')['test_ppl'])


def test_a_changed_or_missing_teacher_is_refused_with_the_way_back(tmp_path, monkeypatch):
    bad = tmp_path / 'teacher.safetensors'
    shutil.copy(TEACHERS['reference']['file'], bad)
    with open(bad, 'r+b') as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setitem(TEACHERS, 'reference', {**TEACHERS['reference'], 'file': bad})
    monkeypatch.setattr(train_wt2, 'ROOT', tmp_path)
    with pytest.raises(ValueError, match='does not match the SHA-256.*--teacher reference'):
        teacher_file('reference')
    bad.unlink()
    with pytest.raises(FileNotFoundError, match='is missing.*git checkout'):
        teacher_file('reference')


def test_the_pipeline_report_names_its_teacher():
    "bench/pipeline_wt2.py's results.teacher: what issue 34's checks read, from the teacher's training JSON."
    import pipeline_wt2

    rec, tr = pipeline_wt2.teacher_record('reference', dict(test_ppl=233.0)), record('reference')
    assert {'epochs', 'test_ppl', 'num_experts', 'top_k', 'dropout', 'weight_decay', 'valid_curve'} <= set(rec)
    assert rec['valid_curve'] == tr['valid_curve'] and rec['sha256'] == tr['sha256'] and rec['test_ppl'] == 233.0
    assert (rec['num_experts'], rec['top_k']) == (4, 1)


def test_train_wt2_keeps_a_named_recipe_whole():
    "`--teacher NAME` trains that teacher's recipe: a knob beside it is refused before anything trains."
    r = subprocess.run(
        [sys.executable, str(ROOT / 'bench' / 'train_wt2.py'), '--teacher', 'reference', '--epochs', '2'],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and 'leave out epochs' in r.stderr
