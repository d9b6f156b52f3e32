"""The reference teacher's recipe, knob by knob: valid perplexity against epochs for each setting, on WikiText-2.

Each setting is the reference configuration trained by bench/train_wt2.py's `train_reference` with one knob
changed from today's recipe (dropout 0.1 inside the experts, AdamW weight decay 0.01), a cosine schedule over
`--epochs` epochs, and the epoch with the lowest valid perplexity kept (its test perplexity is reported). A
setting whose best epoch is its last is flagged `still_improving`: its run was too short to find its best.
Results are added to bench/out/teacher_recipe_wt2.json as each setting finishes (settings already there are
skipped), models go to .cache/teacher_recipe/, and a killed run resumes from its checkpoint.

    python bench/teacher_recipe_wt2.py [--settings base wd0.1 dropout0.3 ...] [--epochs 6] [--threads N]
"""

import argparse, fcntl, json, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch
from train_wt2 import ROOT, train_reference

# name -> the knobs it changes from today's recipe
SETTINGS = {
    'base': {},
    'dropout0': dict(dropout=0.0),
    'dropout0.3': dict(dropout=0.3),
    'wd0.1': dict(weight_decay=0.1),
    'wd0.3': dict(weight_decay=0.3),
    'wd1': dict(weight_decay=1.0),
}

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--threads', type=int, default=None, help='torch threads (two runs side by side: 1 each)')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'teacher_recipe_wt2.json'))
    a = p.parse_args()
    out = Path(a.out)
    if a.threads:
        torch.set_num_threads(a.threads)
    for name in a.settings:
        done = json.loads(out.read_text()) if out.is_file() else dict(runs={})
        if name in done['runs']:
            print(f'{name}: already measured, skipped', flush=True)
            continue
        d = ROOT / '.cache' / 'teacher_recipe'
        d.mkdir(parents=True, exist_ok=True)
        res = train_reference(
            epochs=a.epochs,
            keep_best=True,
            out=d / f'{name}.safetensors',
            checkpoint=d / f'{name}.ckpt',
            progress=False,
            **SETTINGS[name],
        )
        res['still_improving'] = res['kept_epoch'] == a.epochs
        with open(d / 'results.lock', 'w') as lock:  # runs side by side add to one file
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = json.loads(out.read_text()) if out.is_file() else dict(runs={})
            done['runs'][name] = {k: v for k, v in res.items() if k != 'history'} | dict(history=res['history'])
            out.write_text(json.dumps(done, indent=1))
        print(
            name, json.dumps(dict(curve=res['valid_curve'], kept=res['kept_epoch'], test=res['test_ppl'])), flush=True
        )
