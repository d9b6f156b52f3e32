"""The README's first run, measured: `rbk-compress` with no arguments in a fresh directory, its output and its time.

It trains a teacher on the embedded synthetic corpus (16 experts a block: its bytes are its model, as the reference
teacher's are its word tables), plans a student for 100x, distills, prunes and quantizes it, and prints the report.
The README quotes the printed output. Run it alone: its seconds are the figure a newcomer sees.

    python bench/first_run.py [--out bench/out/first_run.json]
"""

import argparse, json, platform, subprocess, sys, tempfile, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'first_run.json'))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        # exactly the README's command, no arguments (progress bars go to stderr)
        r = subprocess.run(
            [sys.executable, '-c', 'from resnet_bk_compress.cli import rbk_compress; rbk_compress()'],
            cwd=d,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f'rbk-compress failed:\n{r.stderr}')
        report = json.loads((Path(d) / 'rbk-compress-out' / 'report.json').read_text())
    keep = (
        'teacher_bytes',
        'compressed_bytes',
        'compression_ratio',
        'teacher_ppl',
        'compressed_ppl',
        'ppl_increase',
        'unigram_ppl',
        'target_met',
        'seconds',
        'plan',
        'verdict',
    )
    res = dict(
        command='rbk-compress',
        stdout=r.stdout,
        wall_s=seconds,
        report={k: report[k] for k in keep},
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
    )
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(r.stdout)
    print(f'{seconds:.0f} s')
