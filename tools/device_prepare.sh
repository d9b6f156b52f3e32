#!/usr/bin/env bash
# Prepare a GPU run of bench/gpu.py on a machine that reaches no package index (the workplace's device machines): wheels of the
# packages its image lacks go to .whl/, a copy of WikiText-2 to .data/wikitext-2, both kept out of git. Then run, with both carried:
#     bash bench/gpu_device.sh        (it installs the wheels, runs bench/gpu.py on the GPU and leaves the results in $OUT)
# The versions are the ones of this checkout's .venv, for the device's Python 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.data/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl .data
cp -r "${RBK_WIKITEXT2:-../shared/data/wikitext-2}" .data/
# what nbdev-test and the library need beyond the image's packages (torch, numpy, matplotlib, safetensors, tqdm, pyyaml... are there)
need="fastcore nbdev execnb fastgit fastspec fasttransport ghapi watchdog astunparse httpx2 httpcore2 truststore
      ipython ipython-pygments-lexers traitlets stack-data pure-eval asttokens executing prompt-toolkit wcwidth pexpect ptyprocess
      matplotlib-inline jedi parso tzdata"
for n in $need; do
  v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$n'))")
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$n==$v"
done
du -sh .whl .data
