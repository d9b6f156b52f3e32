"""Side by side with the libraries a user would pick instead (torchao, Optimum Quanto, HQQ, NNCF) on the 3-epoch
teacher (bench/train_wt2.py), WikiText-2 test.

Each peer quantizes the teacher's weights its documented way, at each bit width it offers, writes the model with its own
recommended serialization, and the model is loaded back from that file into a fresh skeleton and scored through its
`forward` (the logits, then the cross-entropy): bytes of the files it wrote, with and without the word list (a peer's
state_dict has none; ours carry it), test perplexity, seconds to quantize and evaluation tokens/s. A peer or setting
that cannot run here is recorded with its exact error. Then the same for our own settings (INT8, INT4 GPTQ experts,
the pipeline's files from bench/pipeline_wt2.py --teacher 3epoch and bench/frontier_wt2.py), and an equal-footing
comparison: each quantizer on the same layers at the same granularity. Writes bench/out/peers_wt2.json and the plot
nbs/tutorials/images/peers_wt2.png. Run alone (its tokens/s depend on the cores being free); `pip install -e
".[peers]"` first.

    python bench/peers_wt2.py [--only torchao quanto hqq nncf ours equal] [--eval-windows N]
"""

import argparse, copy, importlib.metadata, json, math, platform, re, shutil, sys, tempfile, time, warnings
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_wt2 import teacher_file, reference_teacher
from quant_wt2 import calibrate
from safetensors import safe_open
from safetensors.torch import save_file, load_file
from resnet_bk_compress.data import load_wikitext2, eval_windows, pack_words
from resnet_bk_compress.model import ResNetBKLM
from resnet_bk_compress.files import file_bytes, load_model, save_model
from resnet_bk_compress.quant import Int8Config, quantize_
from resnet_bk_compress.int4_moe import Int4MoEConfig

TEACHER = '3epoch'  # the teacher of the committed figures (bench/train_wt2.py's TEACHERS)

ROOT = Path(__file__).resolve().parents[1]
OUT, PLOT = ROOT / 'bench' / 'out' / 'peers_wt2.json', ROOT / 'nbs' / 'tutorials' / 'images' / 'peers_wt2.png'
# the largest group size that divides every quantizable width of this model (64 and 128); the BK feature maps
# (in_features=2) take none
GROUP = 64
EXPERTS = re.compile(r'\.moe\.experts\.\d+\.\d+$')  # the expert Linears: the equal-footing 4-bit scope


# ------------------------------------------------------------------ measuring, the same for everyone
@torch.no_grad()
def forward_ppl(model, ids, n_seq, n_windows=None, batch_size=16) -> dict:
    """Test perplexity through the model's forward (logits, then cross-entropy): the one path every peer's model
    supports."""
    model.eval()
    total = count = 0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(eval_windows(ids, n_seq, batch_size)):
        if n_windows and i * batch_size >= n_windows:
            break
        logits = model(x)
        total += (
            F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction='sum')
            .double()
            .item()
        )
        count += y.numel()
    s = time.perf_counter() - t0
    return dict(test_ppl=math.exp(total / count), tokens=count, eval_seconds=s, eval_tokens_per_s=count / s)


@torch.no_grad()
def logit_error(teacher, model, batches) -> float:
    "Relative error of the model's logits against the teacher's on held-out windows."
    num = den = 0.0
    for x in batches:
        ref = teacher(x)
        num += (model(x).float() - ref).pow(2).sum().item()
        den += ref.pow(2).sum().item()
    return (num / den) ** 0.5


def without_word_list(path) -> int:
    "Bytes of one of our files with its word list taken out (the same tensors and header, written again without it)."
    with safe_open(str(path), framework='pt') as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for k in ('vocab', 'vocab_codec'):
        meta.pop(k, None)
    tensors.pop('vocab@words', None)
    tmp = Path(tempfile.mkdtemp()) / 'x.safetensors'
    save_file(tensors, str(tmp), metadata=meta)
    n = file_bytes(tmp)
    shutil.rmtree(tmp.parent)
    return n


def candidates(model, scope) -> list[str]:
    "Names of the modules a scope asks a peer to quantize: 'linear', 'linear+embedding' or 'experts'."
    if scope == 'experts':
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and EXPERTS.search(n)]
    kinds = (nn.Linear, nn.Embedding) if scope == 'linear+embedding' else (nn.Linear,)
    return [n for n, m in model.named_modules() if type(m) in kinds]


def swap(model, name, new):
    parent, _, leaf = name.rpartition('.')
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


# ------------------------------------------------------------------ the peers: quantize, save, load back
class Peer:
    """One library: `quantize(model, setting, names) -> skipped {name: why}`, `save(model, setting, dir)`, `load(cfg,
    setting, dir) -> model`."""

    name = package = serialization = ''

    def version(self):
        return importlib.metadata.version(self.package)


class TorchAO(Peer):
    name, package = 'torchao', 'torchao'
    serialization = (
        'torch.save(model.state_dict()) of tensor subclasses; '
        'loaded with load_state_dict(assign=True) into a fresh model'
    )

    def config(self, s):
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

        if s['api'] == 'Int8WeightOnlyConfig':
            return Int8WeightOnlyConfig()
        if s['api'] == 'Int4WeightOnlyConfig':
            return Int4WeightOnlyConfig(group_size=s['group_size'])
        return IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{s['bits']}"), granularity=PerGroup(s['group_size'])
        )

    def quantize(self, model, s, names):
        from torchao.quantization import quantize_ as ao_quantize

        skipped = {}
        for (
            n
        ) in names:  # one module at a time, so that a module it refuses is listed with its error and the others go on
            m = model.get_submodule(n)
            width = m.in_features if isinstance(m, nn.Linear) else m.embedding_dim
            if s.get('group_size') and width % s['group_size']:
                skipped[n] = f"width {width} is not a multiple of group size {s['group_size']}"
                continue
            try:
                ao_quantize(model, self.config(s), filter_fn=lambda mod, fqn, n=n: fqn == n)
            except Exception as e:
                if s['api'] == 'Int4WeightOnlyConfig':
                    raise  # a refusal of the whole config (no CPU kernel): the setting is the error
                skipped[n] = f"{type(e).__name__}: {e}"
        return skipped

    def save(self, model, s, d):
        torch.save(model.state_dict(), d / 'model.pt')

    def load(self, cfg, s, d):
        m = ResNetBKLM(cfg)
        m.load_state_dict(torch.load(d / 'model.pt', weights_only=False), assign=True)
        return m


class Quanto(Peer):
    name, package = 'optimum-quanto', 'optimum-quanto'
    serialization = (
        'safetensors save_file(model.state_dict()) + quantization_map(model) as JSON; '
        'loaded with requantize() into a fresh model'
    )

    def qtype(self, s):
        from optimum import quanto

        return getattr(quanto, f"qint{s['bits']}")

    def quantize(self, model, s, names):
        from optimum.quanto import QLinear, freeze, quantize

        quantize(model, weights=self.qtype(s), include=names)
        freeze(model)
        return {n: 'left in float by quanto' for n in names if not isinstance(model.get_submodule(n), QLinear)}

    def save(self, model, s, d):
        from optimum.quanto import quantization_map

        save_file(model.state_dict(), str(d / 'model.safetensors'))
        (d / 'quantization_map.json').write_text(json.dumps(quantization_map(model)))

    def load(self, cfg, s, d):
        from optimum.quanto import requantize

        m = ResNetBKLM(cfg)
        requantize(
            m,
            load_file(str(d / 'model.safetensors')),
            json.loads((d / 'quantization_map.json').read_text()),
            device=torch.device('cpu'),
        )
        return m


class HQQ(Peer):
    name, package = 'hqq', 'hqq'
    serialization = (
        "safetensors save_file(model.state_dict()) (HQQLinear's own safetensors-ready state); "
        'loaded into fresh HQQLinear(None, config) layers'
    )

    def qconfig(self, s):
        from hqq.core.quantize import BaseQuantizeConfig

        return BaseQuantizeConfig(nbits=s['bits'], group_size=s['group_size'])

    def layer(self, linear, s):
        from hqq.core.quantize import HQQLinear

        # float32 compute (and so float32 scales and zeros): this CPU has no fast float16 matmul; the library's default
        # is float16 on a GPU
        return HQQLinear(
            linear, self.qconfig(s), compute_dtype=torch.float32, device='cpu', initialize=linear is not None
        )

    def quantize(self, model, s, names):
        skipped = {}
        for n in names:
            lin = model.get_submodule(n)
            if s['group_size'] and lin.in_features % s['group_size']:
                skipped[n] = f"in_features {lin.in_features} is not a multiple of group size {s['group_size']}"
                continue
            try:
                q = self.layer(copy.deepcopy(lin), s)
                # a layer HQQ packs wrongly (too few rows for its packing: v_proj, one row of 64) fails here, not when
                # built
                q.dequantize()
                swap(model, n, q)
            except Exception as e:
                skipped[n] = f"{type(e).__name__}: {e}"
        s['_layers'] = [n for n in names if n not in skipped]  # the reload builds HQQLinear exactly there
        return skipped

    def save(self, model, s, d):
        save_file(model.state_dict(), str(d / 'model.safetensors'))

    def load(self, cfg, s, d):
        m = ResNetBKLM(cfg)
        for n in s['_layers']:
            swap(m, n, self.layer(None, s))
        m.load_state_dict(load_file(str(d / 'model.safetensors')))
        return m


class NNCF(Peer):
    name, package = 'nncf', 'nncf'
    serialization = (
        """torch.save(model) (the whole module, pickled): nncf.torch.get_config(), NNCF's documented way to save a
        compressed PyTorch"""
        "model, raises for weight-compression decompressors (measured; the error is recorded below)"
    )

    def quantize(self, model, s, names):
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        x0 = s['_example']
        every = candidates(model, 'linear+embedding')
        ignored = [n for n in every if n not in names]
        kw = dict(mode=getattr(nncf.CompressWeightsMode, s['mode']), dataset=nncf.Dataset([x0]))
        if s.get('group_size'):
            kw.update(
                group_size=s['group_size'],
                ratio=1.0,
                all_layers=s.get('all_layers'),
                advanced_parameters=AdvancedCompressionParameters(
                    group_size_fallback_mode=GroupSizeFallbackMode.IGNORE
                ),
            )

        def run(
            ignore,
            # on a fresh copy: a failed attempt leaves the model half compressed. NNCF names graph nodes by the
            # module's own name and a call count ('v_proj/linear/2'): every block's at once
        ):
            leaves = sorted({n.rpartition('.')[2] for n in ignore})
            scope = (
                nncf.IgnoredScope(patterns=[rf'(.*/)?{re.escape(l)}/.*' for l in leaves], validate=False)
                if ignore
                else None
            )
            return nncf.compress_weights(copy.deepcopy(model), ignored_scope=scope, **kw)

        try:
            s['_model'] = run(ignored)
        except (
            RuntimeError
        ) as e:  # NNCF's 4-bit zero-point packing fails on a layer with one output row (v_proj): skip those, list them
            ones = [
                n
                for n in names
                if isinstance(model.get_submodule(n), nn.Linear) and model.get_submodule(n).out_features == 1
            ]
            if not ones:
                raise
            s['_model'], s['_retry_error'] = run(ignored + ones), f"{type(e).__name__}: {e}"
        hooked = {
            k.split('post_hooks.')[1].split(':weight')[0].replace(':', '.')
            for k in s['_model'].state_dict()
            if 'post_hooks.' in k
        }
        return {
            n: s.get('_retry_error', 'kept in float by NNCF (its statistics table counts it as float)')
            for n in names
            if n not in hooked
        }

    def save(self, model, s, d):
        try:
            from nncf.torch import get_config

            get_config(s['_model'])
        except Exception as e:
            s['get_config_error'] = f"{type(e).__name__}: {e}"
        torch.save(s['_model'], d / 'model.pt')

    def load(self, cfg, s, d):
        return torch.load(d / 'model.pt', weights_only=False)


PEERS = {p.name: p for p in (TorchAO(), Quanto(), HQQ(), NNCF())}

# each peer's settings: its documented APIs at each bit width it offers, on the Linear layers and, where it supports it,
# the embedding too
SETTINGS = {
    'torchao': [dict(api='Int8WeightOnlyConfig', bits=8, scope=sc) for sc in ('linear', 'linear+embedding')]
    + [dict(api='Int4WeightOnlyConfig', bits=4, group_size=GROUP, scope='linear')]
    + [
        dict(api='IntxWeightOnlyConfig', bits=b, group_size=GROUP, scope=sc)
        for b in (4, 3, 2)
        for sc in ('linear', 'linear+embedding')
    ],
    # quanto has QLinear, QConv2d and QLayerNorm, no embedding; it picks its own group size (per output channel for
    # inputs <= 128 wide)
    'optimum-quanto': [dict(api='quantize(weights=qint%d)' % b, bits=b, scope='linear') for b in (8, 4, 2)],
    # HQQ quantizes Linear layers (HQQLinear) only
    'hqq': [
        dict(api='HQQLinear(BaseQuantizeConfig)', bits=b, group_size=g, scope='linear')
        for b, g in ((8, GROUP), (4, GROUP), (3, GROUP), (2, GROUP), (2, 32))
    ],
    # NNCF: INT8 covers the embedding by default; INT4 keeps the embedding and the last layer in INT8 unless
    # all_layers=True
    'nncf': [
        dict(api='compress_weights', mode='INT8_ASYM', bits=8, scope='linear+embedding'),
        dict(api='compress_weights', mode='INT4_SYM', bits=4, group_size=GROUP, scope='linear+embedding'),
        dict(api='compress_weights', mode='INT4_ASYM', bits=4, group_size=GROUP, scope='linear+embedding'),
        dict(
            api='compress_weights',
            mode='INT4_ASYM',
            bits=4,
            group_size=GROUP,
            all_layers=True,
            scope='linear+embedding',
        ),
    ],
}
# the same layers and granularity for every quantizer: 8 bits per output channel on every Linear; 4 bits in groups of 64
# on the experts
EQUAL = {
    'torchao': [
        dict(api='Int8WeightOnlyConfig', bits=8, scope='linear'),
        dict(api='IntxWeightOnlyConfig', bits=4, group_size=GROUP, scope='experts'),
    ],
    'optimum-quanto': [
        dict(api='quantize(weights=qint8)', bits=8, scope='linear'),
        dict(api='quantize(weights=qint4)', bits=4, scope='experts'),
    ],
    'hqq': [
        dict(api='HQQLinear(BaseQuantizeConfig)', bits=8, group_size=None, scope='linear'),
        dict(api='HQQLinear(BaseQuantizeConfig)', bits=4, group_size=GROUP, scope='experts'),
    ],
    'nncf': [
        dict(api='compress_weights', mode='INT8_SYM', bits=8, scope='linear'),
        dict(api='compress_weights', mode='INT4_SYM', bits=4, group_size=GROUP, scope='experts'),
    ],
}


def label(s) -> str:
    g = (
        f" g{s['group_size']}"
        if s.get('group_size')
        else (' per channel' if s['bits'] == 8 or s['api'].startswith('quantize') else '')
    )
    return f"{s.get('mode', s['api'])}{' all_layers' if s.get('all_layers') else ''} {s['bits']}-bit{g}, {s['scope']}"


def run_peer(peer, s, teacher, corpus, word_list, held, n_windows) -> dict:
    """One setting of one peer: quantize a copy of the teacher, save, load back from the file, measure. Any failure is
    the row's `error`."""
    row = dict(peer=peer.name, setting=label(s), **{k: v for k, v in s.items() if not k.startswith('_')})
    d = Path(tempfile.mkdtemp())
    try:
        row['version'] = peer.version()
        model = copy.deepcopy(teacher).eval()
        names = candidates(model, s['scope'])
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            t0 = time.perf_counter()
            skipped = peer.quantize(model, s, names)
            row['quantize_seconds'] = time.perf_counter() - t0
            row['quantized'] = [n for n in names if n not in skipped]
            row['skipped'] = skipped
            if not row['quantized']:
                raise RuntimeError('quantized no layer')
            peer.save(model, s, d)
            row['files'] = sorted(f.name for f in d.iterdir())
            row['file_bytes'] = sum(file_bytes(f) for f in d.iterdir())
            row['file_bytes_with_word_list'] = row['file_bytes'] + word_list
            loaded = peer.load(teacher.cfg, s, d).eval()
        row.update(
            forward_ppl(loaded, corpus.test, teacher.cfg.n_seq, n_windows),
            logit_rel_error=logit_error(teacher, loaded, held),
        )
        for k in ('get_config_error', '_retry_error'):
            if k in s:
                row[k.lstrip('_')] = s[k]
    except Exception as e:
        row['error'] = f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(row['peer'], row['setting'], {k: row.get(k) for k in ('file_bytes', 'test_ppl', 'error')}, flush=True)
    return row


# ------------------------------------------------------------------ ours
def calibrated(teacher, cfg, corpus, n=16):
    "A converted copy of the teacher, calibrated as bench/quant_wt2.py calibrates (16 training batches of 32)."
    m = quantize_(copy.deepcopy(teacher), cfg)
    m.eval()
    if cfg.bk_core or cfg.activations or isinstance(cfg, Int4MoEConfig):
        calibrate(m, corpus, n)  # weights only: nothing to observe
    return quantize_(m, cfg, 'convert')


def run_ours(name, make, teacher, vocab, corpus, word_list, held, n_windows, scope='', setting=None) -> dict:
    """One of our settings: `make()` returns the path of a file we wrote (quantizing the teacher now, or a pipeline's
    output)."""
    row = dict(peer='resnet_bk_compress', setting=name, scope=scope, **(setting or {}))
    try:
        t0 = time.perf_counter()
        path = make()
        row['quantize_seconds'] = time.perf_counter() - t0
        model, fvocab, _ = load_model(path)
        row.update(
            file=str(Path(path).relative_to(ROOT)) if str(path).startswith(str(ROOT)) else Path(path).name,
            file_bytes=file_bytes(path),
        )
        row['file_bytes_with_word_list'], row['file_bytes'] = row['file_bytes'], without_word_list(path)
        row.update(forward_ppl(model, corpus.with_vocab(fvocab).test, model.cfg.n_seq, n_windows))
        if fvocab.itos == vocab.itos:
            row['logit_rel_error'] = logit_error(teacher, model, held)
    except Exception as e:
        row['error'] = f"{type(e).__name__}: {e}"
    print(row['peer'], name, {k: row.get(k) for k in ('file_bytes_with_word_list', 'test_ppl', 'error')}, flush=True)
    return row


def ours(teacher, vocab, corpus, word_list, held, n_windows, tmp) -> list[dict]:
    def quantized(cfg, name):
        return lambda: save_model(
            calibrated(teacher, cfg, corpus), tmp / f'{name}.safetensors', vocab, compress_vocab=True
        )

    def pipeline_file(d):
        RUNS = ('frontier_wt2.py', 'pipeline_wt2.py --teacher 3epoch')

        def f():
            p = ROOT / '.cache' / d / 'stage3_quantize.safetensors'
            if not p.is_file():
                raise FileNotFoundError(f"{p} is missing: run python bench/{RUNS[d.startswith('pipeline')]} first")
            return p

        return f

    rows = [
        run_ours(
            'fp32 teacher',
            lambda: teacher_file(TEACHER),
            teacher,
            vocab,
            corpus,
            word_list,
            held,
            n_windows,
            'everything in float32',
        ),
        run_ours(
            'INT8 post-training',
            quantized(Int8Config(), 'int8'),
            teacher,
            vocab,
            corpus,
            word_list,
            held,
            n_windows,
            'Linear per channel, embedding per row, BK-Core',
        ),
        run_ours(
            'INT4 GPTQ experts g128, INT8 rest',
            quantized(Int4MoEConfig(), 'int4'),
            teacher,
            vocab,
            corpus,
            word_list,
            held,
            n_windows,
            'experts INT4 g128 GPTQ, router and other Linear INT8, embedding INT8 rows',
        ),
        run_ours(
            'INT4 GPTQ experts g64, 4-bit embedding, INT8 rest',
            quantized(Int4MoEConfig(group_size=GROUP, embedding_bits=4), 'int4e'),
            teacher,
            vocab,
            corpus,
            word_list,
            held,
            n_windows,
            'experts INT4 g64 GPTQ, embedding 4-bit g64, head and router INT8',
        ),
    ]
    rows.append(
        run_ours(
            'pipeline 100x (headline run)',
            pipeline_file('pipeline_wt2_3epoch'),  # the teacher's own 100x run
            teacher,
            vocab,
            corpus,
            word_list,
            held,
            n_windows,
            'distilled student, codebook table, INT4/INT8',
        )
    )
    for t in (32, 50, 100):
        rows.append(
            run_ours(
                f'pipeline {t}x (frontier run)',
                pipeline_file(f'frontier_{t}x'),
                teacher,
                vocab,
                corpus,
                word_list,
                held,
                n_windows,
                'distilled student, codebook table, INT4/INT8',
            )
        )
    return rows


def ours_equal(teacher, vocab, corpus, word_list, held, n_windows, tmp) -> list[dict]:
    """Our quantizers on the equal-footing scopes: every Linear at 8 bits per channel; the experts at 4 bits in groups
    of 64 (router in float)."""

    def q(cfg, name):
        return lambda: save_model(
            calibrated(teacher, cfg, corpus), tmp / f'{name}.safetensors', vocab, compress_vocab=True
        )

    experts = dict(linear=False, embedding=False, bk_core=False, group_size=GROUP, router_bits=None)
    rows = [
        run_ours(
            'Int8Config(linear only)',
            q(Int8Config(embedding=False, bk_core=False), 'eq8'),
            teacher,
            vocab,
            corpus,
            word_list,
            held,
            n_windows,
            'linear',
            dict(bits=8),
        )
    ]
    for method in ('rtn', 'gptq'):
        rows.append(
            run_ours(
                f'Int4MoEConfig({method}) g{GROUP}',
                q(Int4MoEConfig(method=method, **experts), f'eq4{method}'),
                teacher,
                vocab,
                corpus,
                word_list,
                held,
                n_windows,
                'experts',
                dict(bits=4, group_size=GROUP),
            )
        )
    return rows


# ------------------------------------------------------------------ the plot
def plot(res, path=PLOT):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    t = res['teacher']
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (peer, rows) in enumerate(res['peers'].items()):
        ok = [r for r in rows if 'test_ppl' in r]
        ax.scatter(
            [r['file_bytes_with_word_list'] for r in ok],
            [r['test_ppl'] for r in ok],
            marker='os^Dv'[i % 5],
            s=28,
            label=f"{peer} {rows[0].get('version', '')}",
        )
    pipe = sorted(
        (
            r
            for r in res['ours']
            if 'test_ppl' in r and r['setting'].startswith('pipeline') and 'frontier' in r['setting']
        ),
        key=lambda r: r['file_bytes_with_word_list'],
    )
    ax.plot(
        [r['file_bytes_with_word_list'] for r in pipe],
        [r['test_ppl'] for r in pipe],
        'k*-',
        ms=10,
        label='resnet_bk_compress pipeline (frontier)',
    )
    ptq = [r for r in res['ours'] if 'test_ppl' in r and not r['setting'].startswith('pipeline')]
    ax.scatter(
        [r['file_bytes_with_word_list'] for r in ptq],
        [r['test_ppl'] for r in ptq],
        marker='P',
        c='k',
        s=40,
        label='resnet_bk_compress quantization only',
    )
    head = [r for r in res['ours'] if 'test_ppl' in r and 'headline' in r['setting']]
    ax.scatter(
        [r['file_bytes_with_word_list'] for r in head],
        [r['test_ppl'] for r in head],
        marker='*',
        c='C3',
        s=160,
        zorder=3,
        label='resnet_bk_compress pipeline 100x (headline run)',
    )
    ax.axhline(
        t['test_ppl'],
        color='k',
        lw=0.8,
        label=f"teacher {t['test_ppl']:.1f} (unigram floor {t['unigram_test_ppl']:.0f})",
    )
    ax.axhline(t['test_ppl'] * 1.15, color='C3', ls='--', lw=1, label='teacher +15%')
    ax.set_xscale('log')
    ax.set_ylim(
        t['test_ppl'] * 0.95,
        max(
            [t['test_ppl'] * 1.2]
            + [r['test_ppl'] * 1.03 for rows in res['peers'].values() for r in rows if 'test_ppl' in r]
        ),
    )
    ax.set_xlabel('file bytes, word list included (log)')
    ax.set_ylabel('WikiText-2 test perplexity')
    ax.set_title('the reference teacher (WikiText-2), compressed by each library', fontsize=10)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def smallest_within(rows, limit) -> dict | None:
    ok = [r for r in rows if 'test_ppl' in r and r['test_ppl'] <= limit]
    return min(ok, key=lambda r: r['file_bytes_with_word_list'], default=None)


def summarize(res):
    limit = res['teacher']['test_ppl'] * 1.15
    pick = lambda r: r and {k: r[k] for k in ('setting', 'file_bytes', 'file_bytes_with_word_list', 'test_ppl')}
    res['smallest_within_15pct'] = {
        **{p: pick(smallest_within(rows, limit)) for p, rows in res['peers'].items()},
        'resnet_bk_compress': pick(smallest_within(res['ours'], limit)),
    }
    res['ppl_limit'] = limit


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        '--only',
        nargs='*',
        default=None,
        help=f"rerun only these parts ({', '.join(PEERS)}, ours, equal), keeping the others from the existing output",
    )
    p.add_argument(
        '--eval-windows',
        type=int,
        default=None,
        help='score only the first N test windows (a quick try; the committed figures use all)',
    )
    p.add_argument('--out', default=str(OUT))
    a = p.parse_args()
    torch.manual_seed(0)
    corpus = load_wikitext2()
    teacher, vocab, _ = reference_teacher(TEACHER)
    teacher.eval()
    res = (
        json.loads(Path(a.out).read_text())
        if a.only is not None and Path(a.out).is_file()
        else dict(peers={}, equal_footing={})
    )
    run_all = a.only is None
    word_list = len(pack_words(vocab.itos))
    held = [x for x, _ in list(eval_windows(corpus.valid, teacher.cfg.n_seq, 16))[:2]]
    x0 = held[0][:1]
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    tf = forward_ppl(teacher, corpus.test, teacher.cfg.n_seq, a.eval_windows)
    from resnet_bk_compress.data import unigram_ppl

    res.update(
        teacher=dict(
            file=str(teacher_file(TEACHER).relative_to(ROOT)),
            file_bytes=file_bytes(teacher_file(TEACHER)),
            **tf,
            unigram_test_ppl=unigram_ppl(corpus.train, corpus.test, len(vocab)),
        ),
        word_list_bytes=word_list,
        group_size=GROUP,
        # the same words sorted: what front coding gets when the rows are permuted to match (the pipeline's files do
        # that, in bands)
        word_list_bytes_sorted=len(pack_words(sorted(vocab.itos))),
        eval_windows=a.eval_windows,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        python=platform.python_version(),
    )
    for name, peer in PEERS.items():
        if not (run_all or name in a.only):
            continue
        res['peers'][name] = [
            run_peer(peer, {**s, '_example': x0}, teacher, corpus, word_list, held, a.eval_windows)
            for s in SETTINGS[name]
        ]
        res['serialization'] = {**res.get('serialization', {}), name: peer.serialization}
        Path(a.out).write_text(json.dumps(res, indent=1))
    if run_all or 'ours' in a.only:
        res['ours'] = ours(teacher, vocab, corpus, word_list, held, a.eval_windows, tmp)
    if run_all or 'equal' in a.only:
        eq = {
            name: [
                run_peer(PEERS[name], {**s, '_example': x0}, teacher, corpus, word_list, held, a.eval_windows)
                for s in ss
            ]
            for name, ss in EQUAL.items()
        }
        eq['resnet_bk_compress'] = ours_equal(teacher, vocab, corpus, word_list, held, a.eval_windows, tmp)
        res['equal_footing'] = eq
    summarize(res)
    res['wall_s' if run_all else 'rerun_wall_s'] = (
        time.perf_counter() - t0
    )  # a partial rerun's time is not the whole bench's
    res['rerun_only'] = a.only
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    plot(res)
    print(json.dumps(res['smallest_within_15pct'], indent=1))
