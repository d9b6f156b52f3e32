"""The notebooks' GPU checks (the `## On a GPU` sections), run on the CPU: each is a function of the device that compares what it computes
there with a CPU reference under explicit tolerances. Here they must pass on the CPU, and each must fail when its device's result is wrong."""
import pytest
import torch
from resnet_bk_compress import checks, complex_quant, files, int4_moe
from resnet_bk_compress.model import InputError, on_device
from resnet_bk_compress.checks import within

CHECKS = [(checks.scan_check, ['G', 'dG/da', 'logits', 'causal leak']),
          (checks.fit_check, ['train loss', 'test ppl']),
          (checks.qat_check, ['loss', 'gradients', 'int8 logits']),
          (checks.complex_check, ['separate per tensor', 'polar per position']),
          (checks.int4_check, ['dequantize-then-matmul', 'INT4 MoE tokens moved']),
          (checks.pruning_check, ['tokens routed differently', 'kept experts differ', 'magnitude masks', 'pruned logits']),
          (checks.distill_check, ['dense loss', 'dense gradient', 'topk loss', 'topk gradient']),
          (checks.pipeline_check, ['positions moved', 'ppl, file on the CPU vs the run'])]

@pytest.mark.parametrize('check,figures', CHECKS, ids=[c.__name__ for c, _ in CHECKS])
def test_checks_pass_on_the_cpu(check, figures):
    figs = check('cpu')
    assert set(figures) <= set(figs), sorted(figs)

def _on_float32(fn, bad):
    "fn, with its result replaced by bad(result) when its first argument (a model or a tensor) is float32: the 'device' side of a check."
    def wrapped(*a, **kw):
        x = a[0]
        dt = x.dtype if torch.is_tensor(x) else next(x.parameters()).dtype if hasattr(x, 'parameters') else None
        r = fn(*a, **kw)
        return bad(r) if dt in (torch.float32, torch.complex64) else r
    return wrapped

def test_each_check_fails_when_the_device_is_wrong(monkeypatch):
    "A perturbation of 1e-3 on the checked side of each computation must trip its check, naming the figure."
    cases = [(checks, 'causal_resolvent', lambda G: G * 1.001, checks.scan_check, 'G'),
             (checks, 'evaluate', lambda r: {**r, 'ppl': r['ppl'] * 1.001}, checks.fit_check, 'test ppl'),
             (checks, 'lm_loss', lambda r: (r[0] * 1.001, r[1]), checks.qat_check, 'loss'),
             (checks, 'rel_error', lambda v: v + 1e-3, checks.int4_check, 'dequantize-then-matmul'),
             (checks, 'expert_stats', lambda st: [type(s)(s.tokens, s.gate_mass * 1.001, s.saliency_sum, s.total) for s in st], checks.pruning_check, 'gate mass'),
             (checks, 'chunked_distill_loss', lambda r: (r[0] * 1.001, *r[1:]), checks.distill_check, 'dense loss'),
             ]
    for mod, name, bad, check, figure in cases:
        with monkeypatch.context() as m:
            m.setattr(mod, name, _on_float32(getattr(mod, name), bad))
            with pytest.raises(AssertionError, match=figure): check('cpu')
    with monkeypatch.context() as m:  # the fused fake quantization off its own integer route
        fq = complex_quant.ComplexQuantizer.fake_quantize
        m.setattr(complex_quant.ComplexQuantizer, 'fake_quantize', lambda self, x: fq(self, x) * 1.001)
        with pytest.raises(AssertionError, match='fake = dequantize'): complex_check_cpu()
    with monkeypatch.context() as m:  # a compressed file that does not hold the model the run measured
        load = files.load_compressed
        def damaged(path):
            mdl, v, info = load(path)
            if str(path).endswith('stage3_quantize.safetensors'):  # only the check loads the run's last file
                with torch.no_grad(): mdl.ln_f.weight.mul_(1.5)  # LayerNorms stay float
            return mdl, v, info
        m.setattr(checks, 'load_compressed', damaged)
        with pytest.raises(AssertionError, match='ppl, file on the CPU'): checks.pipeline_check('cpu')

def complex_check_cpu(): return checks.complex_check('cpu')

def test_within_and_on_device():
    assert within({'a': (1e-7, 1e-6)}, 'cpu') == {'a': 1e-7}
    with pytest.raises(AssertionError, match=r'on cpu: a 1.00e-05 > 1e-06'): within({'a': (1e-5, 1e-6)}, 'cpu')
    with pytest.raises(AssertionError, match='nan'): within({'a': (float('nan'), 1.)}, 'cpu')
    with pytest.raises(InputError, match="unknown device 'tpu'"): on_device('tpu')
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="pass device='cpu'"): on_device('cuda')
        assert on_device(None) == torch.device('cpu')

def test_int4_timings_and_kernel_flag():
    r = checks.int4_timings('cpu', shapes=((128, 64),), tokens=(1, 8))
    assert [x['tokens'] for x in r] == [1, 8] and all(x['dequant_ms'] > 0 and x['fp32_ms'] > 0 for x in r)
    assert all((x['kernel_ms'] is not None) == int4_moe.int4_kernel_available('cpu') for x in r)
    assert not int4_moe.int4_kernel_available('meta')

def test_gpu_bench_runs_every_part_quickly_on_the_cpu(tmp_path):
    "bench/gpu.py --quick on the CPU: every part in its own process, in order, each streamed and in the JSON; notebooks left as they are."
    import json, subprocess, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    nbs = {f: f.read_bytes() for f in (root / 'nbs').glob('0*.ipynb')}
    gpu = lambda *a: subprocess.run([sys.executable, str(root / 'bench' / 'gpu.py'), '--device', 'cpu', '--quick', *a],
                                    capture_output=True, text=True, timeout=900)
    r = gpu('--out', str(tmp_path / 'g.json'))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    g = json.loads((tmp_path / 'g.json').read_text())
    assert list(g['phases']) == ['checks', 'notebooks', 'pipeline_wt2', 'bk_core', 'int4', 'distillation', 'training'] and g['quick']
    assert all('figures' in c for c in g['phases']['checks'].values()), g['phases']['checks']
    nb = g['phases']['notebooks']
    assert len(nb) == 8 and all(n['error'] is None and n['cells'] >= 1 for n in nb.values()), nb
    assert all('no GPU here: skipped' in o for n in nb.values() for o in n['outputs'])  # the cells ran, and said why they did nothing
    assert {f: f.read_bytes() for f in nbs} == nbs  # written back only after a GPU run
    streamed = [line.split(':')[0] for line in r.stdout.splitlines() if line.startswith('== ')]
    assert streamed[:2] == ['== checks', '== notebook'] and len(streamed) == 6 + 8 and not g['failed']
    p = g['phases']['pipeline_wt2']
    assert [s['name'] for s in p['stages']] == ['distill', 'prune', 'quantize'] and p['total_seconds'] >= p['teacher_seconds'] > 0
    est = g['t4_estimate']['teacher']
    assert est['scaled_by_bandwidth'] == pytest.approx(est['h200_seconds'] * 15) and est['likely'] >= est['h200_seconds']
    short = gpu('--only', 'bk_core,int4', '--budget', '5', '--out', str(tmp_path / 's.json'))  # no time left: each part skipped, and said
    s = json.loads((tmp_path / 's.json').read_text())
    assert short.returncode != 0 and s['failed'] == ['bk_core', 'int4'] and 'skipped' in s['phases']['int4']['error']
    bad = subprocess.run([sys.executable, str(root / 'bench' / 'gpu.py'), '--only', 'fold'], capture_output=True, text=True)
    assert bad.returncode != 0 and 'unknown phases' in bad.stderr
