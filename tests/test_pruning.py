"Pruning: expert statistics, physical removal (float and INT4 layers), files whose bytes shrink, masks that hold, sparse storage."
import copy
import pytest
import torch
import torch.nn as nn
from resnet_bk_compress.model import MoE, ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.data import synthetic_corpus, train_batches
from resnet_bk_compress.files import save_model, load_model, file_bytes, read_model_file, ModelFileError, _effective_state
from resnet_bk_compress.train import fit, evaluate
from resnet_bk_compress.quant import quantize_, calibrating, Int8Config
from resnet_bk_compress.int4_moe import Int4MoEConfig, QuantizedMoELayer
from resnet_bk_compress.pruning import (expert_stats, prune_experts_, prune_moe_, MagnitudePruner,
                                        ProgressivePruningScheduler)
from conftest import sealed, fresh_process_logits

@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    syn = synthetic_corpus(vocab_size=300, n_train=20_000, n_eval=2_000)
    lm = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=16, n_layers=2, n_seq=32, num_experts=6))
    fit(lm, syn, epochs=1, batch_size=16, lr=5e-3, progress=False, eval_split=None)
    lm.eval()
    calib = [x for x, _ in list(train_batches(syn.train, 32, 16, seed=1))[:4]]
    return syn, lm, calib

def test_stats_count_every_token_and_leave_no_hook(trained):
    syn, lm, calib = trained
    st = expert_stats(lm, calib)
    assert all(int(s.tokens.sum()) == 4 * 16 * 32 for s in st) and all(abs(s.gate_share.sum().item() - 1) < 1e-6 for s in st)
    assert all(not m._forward_hooks for m in lm.modules())
    assert (st[0].saliency >= 0).all()

def test_pruned_experts_are_gone_and_the_file_shrinks(trained, tmp_path):
    syn, lm, calib = trained
    st = expert_stats(lm, calib)
    m = copy.deepcopy(lm)
    kept = prune_experts_(m, st, keep=[3, 2], ranking='usage')
    assert [len(k) for k in kept] == [3, 2]
    assert kept[0] == sorted(st[0].usage.topk(3).indices.tolist())  # the most used survive
    moe = m.blocks[1].moe
    assert len(moe.experts) == 2 and moe.gate.weight.shape == (2, 16) and moe.num_experts == 2
    assert torch.equal(moe.gate.weight, lm.blocks[1].moe.gate.weight[kept[1]])  # the survivors' router rows, unchanged
    a, b = save_model(lm, tmp_path / 'a.safetensors', syn.vocab), save_model(m, tmp_path / 'b.safetensors', syn.vocab)
    per_expert = sum(p.numel() * 4 for p in lm.blocks[0].moe.experts[0].parameters())
    assert file_bytes(a) - file_bytes(b) >= 5 * per_expert  # 3 + 4 experts gone, less header
    x = syn.test[:32][None]
    m.eval()
    with torch.no_grad(): assert torch.equal(fresh_process_logits('resnet_bk_compress.files.load_model', b, x, tmp_path), m(x))
    assert load_model(b)[0].blocks[1].moe.kept == kept[1]  # save_model wrote the kept experts: the one loader rebuilds them

def test_below_top_k_routes_to_every_kept_expert_and_bad_input(trained):
    syn, lm, calib = trained
    st = expert_stats(lm, calib)
    with pytest.raises(ValueError, match='keeps at least one'): prune_experts_(copy.deepcopy(lm), st, keep=0)
    with pytest.raises(ValueError, match='keeps at least one'): prune_experts_(copy.deepcopy(lm), st, threshold=1.1)
    m2 = MoE(8, num_experts=4, top_k=2).eval()
    with pytest.raises(ValueError, match='at least one expert'): prune_moe_(m2, [])
    with pytest.raises(ValueError, match='out of range'): prune_moe_(m2, [0, 7])
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = m2.expert(3, x)  # one expert left: every token goes to it with weight 1
        assert (prune_moe_(m2, [3]).num_experts, m2.top_k) == (1, 1)
        assert torch.allclose(m2(x), want)
    with pytest.raises(ValueError, match='2 ExpertStats for 1 MoE'): prune_experts_(nn.Sequential(MoE(8)), st)
    with pytest.raises(ValueError, match='no MoE layer'): expert_stats(nn.Linear(2, 2), [])

def test_threshold_removes_rarely_used_experts():
    torch.manual_seed(0)
    moe = MoE(8, num_experts=4).eval()
    with torch.no_grad(): moe.gate.bias.copy_(torch.tensor([0., 0., -30., -30.]))  # experts 2 and 3 are never chosen
    holder = nn.Sequential(moe)
    st = expert_stats(holder, [torch.randn(64, 8)])
    assert prune_experts_(holder, st, threshold=0.05, ranking='usage') == [[0, 1]]

def test_pruning_a_quantized_int4_model(trained, tmp_path):
    syn, lm, calib = trained
    m = copy.deepcopy(lm); cfg = Int4MoEConfig(); quantize_(m, cfg)
    with calibrating(m), torch.no_grad():
        for x in calib[:2]: m(x)
    quantize_(m, cfg, 'convert')
    assert isinstance(m.blocks[0].moe, QuantizedMoELayer)
    st = expert_stats(m, calib)
    x = syn.test[:32][None]
    with torch.no_grad(): before = m(x)
    prune_experts_(m, st, keep=6)  # keeping every expert changes nothing
    with torch.no_grad(): assert torch.equal(m(x), before)
    prune_experts_(m, st, keep=3)
    assert m.blocks[0].moe.w1_qdata.shape[0] == 3 and m.blocks[0].moe.gate.qdata.shape[0] == 3
    f = save_model(m, tmp_path / 'q.safetensors', syn.vocab)
    back = load_model(f)[0]
    with torch.no_grad(): assert torch.equal(back(x), m(x))

def test_progressive_scheduler_history_and_file(trained, tmp_path):
    syn, lm, calib = trained
    m = copy.deepcopy(lm)
    s = ProgressivePruningScheduler(m, syn, target=2, stages=2, steps_per_stage=3, batch_size=8)
    assert s.counts == [4, 2]
    h = s.run()
    assert [x['experts'] for x in h] == [4, 4, 2, 2] and all(len(x['pruned']) == 2 for x in h)
    assert all(x['ppl_after_training'] > 0 for x in h)
    assert '"ppl_before"' in s.save(tmp_path / 'h.json').read_text()
    with pytest.raises(ValueError, match='more than the'): ProgressivePruningScheduler(copy.deepcopy(lm), syn, target=9)

def test_magnitude_masks_hold_through_training_and_qat(trained):
    syn, lm, calib = trained
    m = copy.deepcopy(lm)
    pr = MagnitudePruner(m, scope='layer')
    s = pr.prune(sparsity=0.6)
    assert all(abs(v - 0.6) <= 1 / pr.targets[n].weight.numel() + 1e-6 for n, v in s.items())  # up to one weight per layer
    assert 'blocks.0.moe.gate' not in s  # routers are not pruned
    zero = {n: mod.weight == 0 for n, mod in pr.targets.items()}
    fit(m, syn, epochs=1, max_steps=5, batch_size=8, lr=1e-2, progress=False, eval_split=None)
    assert all((pr.targets[n].weight[z] == 0).all() for n, z in zero.items())
    pr.prune(sparsity=0.3)  # masks only grow
    assert pr.overall() >= 0.6 - 0.01
    quantize_(m, Int8Config()); m.eval()
    with calibrating(m), torch.no_grad(): m(calib[0])
    m.train(); fit(m, syn, epochs=1, max_steps=3, batch_size=8, lr=1e-2, progress=False, eval_split=None)
    assert (m.head.weight[zero['head']] == 0).all()
    quantize_(m, Int8Config(), 'convert')
    assert (m.head.qdata[zero['head']] == 0).all()  # zeros stay exact zeros in int8
    with pytest.raises(ValueError, match='exactly one of'): pr.prune()
    with pytest.raises(ValueError, match="scope must be"): MagnitudePruner(m, scope='tensor')

def test_sparse_storage_shrinks_with_sparsity_and_is_exact(trained, tmp_path):
    syn, lm, calib = trained
    sizes = []
    for sp in (0.0, 0.5, 0.9):
        m = copy.deepcopy(lm)
        if sp: MagnitudePruner(m).prune(sparsity=sp)
        f = save_model(m, tmp_path / f'{sp}.safetensors', syn.vocab)
        sizes.append(file_bytes(f))
        back = load_model(f)[0]
        eff = _effective_state(m)
        assert back.state_dict().keys() == eff.keys() and all(torch.equal(v, eff[k]) for k, v in back.state_dict().items())
    assert sizes[2] < 0.35 * sizes[0] and sizes[1] < 0.75 * sizes[0]
    header, _ = read_model_file(tmp_path / '0.9.safetensors')
    assert 'head.weight' in header['sparse']

def test_corrupt_sparse_entry_is_refused(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    syn, lm, calib = trained
    m = copy.deepcopy(lm); MagnitudePruner(m).prune(sparsity=0.9)
    f = save_model(m, tmp_path / 'm.safetensors', syn.vocab)
    with safe_open(str(f), framework='pt') as g: header, raw = g.metadata(), {k: g.get_tensor(k) for k in g.keys()}
    raw.pop('head.weight@mask')
    save_file(raw, str(tmp_path / 'bad.safetensors'), metadata=sealed(header, raw))
    with pytest.raises(ModelFileError, match="sparse tensor 'head.weight' cannot be decoded"): load_model(tmp_path / 'bad.safetensors')

def test_magnitude_threshold_and_iterative_run(trained):
    syn, lm, calib = trained
    m = copy.deepcopy(lm)
    pr = MagnitudePruner(m)
    t = 0.01
    below = {n: (mod.weight.detach().abs() <= t) for n, mod in pr.targets.items()}
    pr.prune(threshold=t)
    assert all(torch.equal(pr.targets[n].weight == 0, below[n]) for n in below)  # exactly the small weights
    hist = pr.run(syn, schedule=[0.5, 0.8], steps_per_stage=3, batch_size=8, lr=1e-3)
    assert [round(h['sparsity'], 2) for h in hist] == [0.5, 0.8]
    assert all(h['ppl_after_training'] > 0 and h['ppl_after_pruning'] > 0 for h in hist)
    with pytest.raises(ValueError, match='sparsity must be in'): pr.prune(sparsity=1.0)
