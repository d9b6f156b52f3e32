"""Write run directories with the library as it is checked out (PYTHONPATH decides which): a planned run with a time
budget, stopped after its distill stage (the prune stage raised), for tests/test_pipeline.py's resume test."""
import json, sys, shutil
from pathlib import Path
import torch
from resnet_bk_compress.data import synthetic_corpus
from resnet_bk_compress.model import ResNetBKConfig, ResNetBKLM
from resnet_bk_compress.files import save_model
from resnet_bk_compress.train import fit
from resnet_bk_compress.pipeline import CompressionPipeline
import resnet_bk_compress.pipeline as P
print(P.__file__)
out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
syn = synthetic_corpus(vocab_size=300, n_train=30_000, n_eval=3_000)
torch.manual_seed(0)
t = ResNetBKLM(ResNetBKConfig(vocab_size=len(syn.vocab), d_model=32, n_layers=2, n_seq=32, num_experts=4))
fit(t, syn, max_steps=40, batch_size=16, lr=5e-3, eval_split=None, progress=False)
t.eval()
save_model(t, out / 'teacher.safetensors', syn.vocab)
pipe = CompressionPipeline(t, syn.vocab, target_compression=float(sys.argv[2]), max_ppl_increase=1., batch_size=16, calib_batches=4)
def crash(self, *a, **kw): raise RuntimeError('stopped after distillation')
CompressionPipeline._stage_prune = crash
try:
    pipe.run_pipeline(syn, save_dir=out / 'run', progress=False, minutes=1, max_steps=4)
except RuntimeError as e:
    print(e)
print(json.dumps(json.loads((out / 'run' / 'state.json').read_text())['settings'], indent=None))
for p in sorted(out.rglob('*')): print(p, p.stat().st_size)
