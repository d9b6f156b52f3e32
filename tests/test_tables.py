import copy, json
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from resnet_bk_compress.data import synthetic_corpus, pack_words, unpack_words
from resnet_bk_compress.files import file_bytes, read_model_file
from resnet_bk_compress.tables import canonical_order, permute_vocab_, permute_vocab
from resnet_bk_compress.distill import make_student
from resnet_bk_compress.pipeline import CompressionPipeline
from resnet_bk_compress.settings import PipelineError
from resnet_bk_compress.plan import Plan, PlanError, predict_bytes, teacher_file_bytes
from resnet_bk_compress.files import load_compressed, COMPRESSED_VERSION
from conftest import sealed, fresh_process_logits, train_small

@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='\n'), max_size=40), unique=True, max_size=200), st.randoms())
def test_word_list_round_trip_any_order(words, rnd):
    rnd.shuffle(words)
    assert unpack_words(pack_words(words)) == words

@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_damaged_word_lists_are_refused(junk):
    blob = pack_words(['alpha', 'alphabet', 'beta', 'gamma'])
    for bad in (junk, blob[:1] + junk, blob[:max(2, len(blob) - len(junk) - 1)]):
        try: words = unpack_words(bad)
        except ValueError as e: assert 'word list' in str(e)
        else: assert isinstance(words, list)  # some junk happens to decode; it never raises anything else

@pytest.fixture(scope='module')
def syn(): return synthetic_corpus(vocab_size=600, n_train=30_000, n_eval=3_000)

@pytest.fixture(scope='module')
def teacher(syn): return train_small(syn, 30)

def test_canonical_order_keeps_every_probability(syn, teacher):
    counts = torch.bincount(syn.train, minlength=len(syn.vocab))
    order = canonical_order(syn.vocab, counts, [100])
    v2 = permute_vocab(syn.vocab, order)
    assert v2.itos[:100] == sorted(v2.itos[:100]) and v2.itos[100:] == sorted(v2.itos[100:])
    assert set(order[:100].tolist()) == set(counts.argsort(descending=True, stable=True)[:100].tolist())
    t2 = permute_vocab_(copy.deepcopy(teacher), order)
    x = syn.test[:64].reshape(2, 32)
    x2 = v2.encode(syn.vocab.decode(x.flatten())).reshape(2, 32)
    with torch.no_grad(): torch.testing.assert_close(t2(x2)[..., torch.argsort(order)], teacher(x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='cuts'): canonical_order(syn.vocab, counts, [100, 50])

@pytest.fixture(scope='module')
def table_run(syn, teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp('tab') / 'run'
    pipe = CompressionPipeline(teacher, syn.vocab, target_compression=5, max_ppl_increase=1., batch_size=16, calib_batches=4,
                               student=dict(num_experts=1, tie_embeddings=True), table=dict(n_dense=100, codebook_size=64))
    return pipe, pipe.run_pipeline(syn, max_steps=6, save_dir=d, progress=False), d

def test_codebook_table_file_loads_in_a_fresh_process(table_run, syn, tmp_path):
    _, rep, _ = table_run
    model, vocab, info = load_compressed(rep['compressed_file'])
    assert type(model.tok_emb).__name__ == 'QuantizedCodebookTable' and type(model.head.bias).__name__ == 'QuantizedBias'
    assert info['version'] == COMPRESSED_VERSION and vocab.itos[100:] == sorted(vocab.itos[100:])  # the file's word order: bands, sorted inside
    with safe_open(rep['compressed_file'], 'pt') as f:
        assert json.loads(f.metadata()['table']) == dict(n_dense=100, n_codebooks=1, codebook_size=64) and json.loads(f.metadata()['bias']) == dict(bits=4)
        assert f.get_slice('tok_emb.codes').get_dtype() == 'U8'
    x = torch.randint(0, len(vocab), (2, 32))
    with torch.no_grad(): here = model(x)
    assert torch.equal(fresh_process_logits('resnet_bk_compress.files.load_compressed', rep['compressed_file'], x, tmp_path), here)
    assert rep['parts']['word list'] == file_bytes(rep['compressed_file']) - sum(v for k, v in rep['parts'].items() if k != 'word list')
    # the same words score the same: perplexity of the loaded model on the corpus in its own word order is the report's
    from resnet_bk_compress.train import evaluate
    assert evaluate(model, syn.with_vocab(vocab).test)['ppl'] == pytest.approx(rep['compressed_ppl'], rel=1e-5)

def test_resume_with_a_table_reaches_the_same_file(table_run, syn, teacher, tmp_path):
    pipe, rep, d = table_run
    again = CompressionPipeline(teacher, syn.vocab, target_compression=5, max_ppl_increase=1., batch_size=16, calib_batches=4,
                                student=dict(num_experts=1, tie_embeddings=True), table=dict(n_dense=100, codebook_size=64))
    state = json.loads((d / 'state.json').read_text())
    state['stages'] = state['stages'][:1]  # as if killed after the distill stage
    (tmp_path / 'r').mkdir()
    for f in ('stage0_teacher.safetensors', 'stage1_distill.safetensors'): (tmp_path / 'r' / f).write_bytes((d / f).read_bytes())
    (tmp_path / 'r' / 'state.json').write_text(json.dumps(state))
    rep2 = again.run_pipeline(syn, max_steps=6, save_dir=tmp_path / 'r', resume=True, progress=False)
    with safe_open(rep['compressed_file'], 'pt') as a, safe_open(rep2['compressed_file'], 'pt') as b:  # (safetensors orders header keys its own way)
        assert a.metadata() == b.metadata() and set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())

def test_planner_predicts_the_file_and_refuses_what_no_student_reaches(syn, teacher, tmp_path):
    pipe = CompressionPipeline(teacher, syn.vocab, target_compression=25, batch_size=16, calib_batches=4)
    before = copy.copy(pipe.__dict__)
    plan = pipe.choose_plan(syn)  # a value: the pipeline is unchanged until a run uses it
    assert isinstance(plan, Plan) and pipe.__dict__ == before and plan.tried[-1]['bytes'] == plan.predicted_bytes <= plan.budget
    # no dropout in the planned student (05_distill: dropout costs a distilled student quality and time)
    assert plan.student.dropout == 0.0 and teacher.cfg.dropout > 0 and make_student(teacher, **plan.student.to_dict()).cfg.dropout == 0.0
    rep = pipe.run_pipeline(syn, max_steps=3, save_dir=tmp_path / 'run', progress=False)
    assert pipe.planned == plan and (pipe.student, pipe.table) == (plan.student, plan.table) and rep['plan'] == plan.to_dict()
    assert pipe.planned.table is not None and rep['compression_ratio'] >= 25
    assert abs(rep['compressed_bytes'] / pipe.planned.predicted_bytes - 1) < 0.01
    hopeless = CompressionPipeline(teacher, syn.vocab, target_compression=10_000)
    with pytest.raises(PlanError, match=r'no student reaches 10000x .*the smallest the planner found is') as e:
        hopeless.run_pipeline(syn, save_dir=tmp_path / 'never', progress=False)
    small = e.value.smallest  # the frontier's end, for a program: the smallest plan written, and its ratio
    assert isinstance(e.value, PipelineError) and {'bytes', 'student', 'table'} <= set(small) and f"{small['bytes']:,} bytes" in str(e.value)
    assert e.value.ratio == pytest.approx(teacher_file_bytes(teacher, syn.vocab) / small['bytes']) and 1 < e.value.ratio < 10_000
    assert not (tmp_path / 'never').exists()  # refused before anything was written

def test_planner_writes_the_bytes_it_predicts_where_codes_and_biases_are_entropy_coded(tmp_path):
    "3,000 words: the codes of the table and of the 4-bit biases are rANS-coded, so their bytes depend on their histograms."
    syn = synthetic_corpus(vocab_size=3000, n_train=40_000, n_eval=2_000)
    teacher = train_small(syn, 20)
    for name, student in (('same width', {}), ('narrower', dict(d_model=16, n_layers=1))):
        pipe = CompressionPipeline(teacher, syn.vocab, batch_size=16, calib_batches=4, table=dict(n_dense=100, codebook_size=64),
                                   student=dict(tie_embeddings=True, num_experts=1, **student))
        predicted = predict_bytes(teacher, syn.vocab, syn, pipe.student, pipe.table, pipe.keep_experts)
        rep = pipe.run_pipeline(syn, max_steps=20, save_dir=tmp_path / name.replace(' ', '_'), progress=False)
        header = read_model_file(rep['compressed_file'])[0]
        assert {'tok_emb.codes', 'head.bias.codes'} <= set(json.loads(header['coded'])), (name, header['coded'])
        # the biases' histogram is the teacher's (bias_hist), the table's codes those of the run's own k-means
        assert rep['compressed_bytes'] == predicted, (name, rep['compressed_bytes'], predicted)

def test_table_settings_are_checked_before_a_run(syn, teacher):
    with pytest.raises(ValueError, match=r"unknown table settings \['n_dens'\]"):
        CompressionPipeline(teacher, syn.vocab, student=dict(tie_embeddings=True), table=dict(n_dens=10))
    with pytest.raises(ValueError, match='tie_embeddings=True'): CompressionPipeline(teacher, syn.vocab, student=dict(d_model=16), table=dict(n_dense=10))
    with pytest.raises(ValueError, match='n_codebooks must divide'):
        CompressionPipeline(teacher, syn.vocab, student=dict(tie_embeddings=True), table=dict(n_dense=10, n_codebooks=5))
    with pytest.raises(ValueError, match='bias_bits'): CompressionPipeline(teacher, syn.vocab, student=dict(tie_embeddings=True), table=dict(bias_bits=3))

def test_damaged_table_entries_are_refused_with_the_file_named(table_run, tmp_path):
    from safetensors.torch import save_file
    from resnet_bk_compress.files import ModelFileError
    _, rep, _ = table_run
    with safe_open(rep['compressed_file'], 'pt') as f: header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for bad in ('{"n_dense": 100', '{"n_dense": "x", "n_codebooks": 1, "codebook_size": 64}', '{"n_dense": 100}', '{"n_dense": 100000, "n_codebooks": 1, "codebook_size": 64}'):
        save_file(tensors, str(tmp_path / 'bad.safetensors'), metadata=sealed({**header, 'table': bad}, tensors))
        with pytest.raises(ModelFileError, match=r"bad\.safetensors.*table"): load_compressed(tmp_path / 'bad.safetensors')
    small = json.loads(header['small'])
    small[next(iter(small))][0][1] = [10 ** 6]  # a packed tensor that claims more values than there are
    save_file(tensors, str(tmp_path / 'bad2.safetensors'), metadata=sealed({**header, 'small': json.dumps(small)}, tensors))
    with pytest.raises(ModelFileError, match=r"bad2\.safetensors.*sparse or packed entry does not fit"): load_compressed(tmp_path / 'bad2.safetensors')

def test_student_and_distill_typos_are_refused_before_a_run(syn, teacher, tmp_path):
    with pytest.raises(ValueError, match=r"unknown student settings \['n_layer'\]: choose from .*n_layers"):
        CompressionPipeline(teacher, syn.vocab, student=dict(d_model=8, n_layer=1))
    with pytest.raises(ValueError, match=r"unknown distill settings \['temperature'\]: choose from .*'T'"):
        CompressionPipeline(teacher, syn.vocab, student=dict(d_model=8), distill=dict(temperature=2.))
