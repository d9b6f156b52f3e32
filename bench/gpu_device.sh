#!/usr/bin/env bash
# The one command of a GPU session (after tools/device_prepare.sh, with .whl and .data carried): install the wheels over the image's
# PyTorch, run bench/gpu.py on the GPU, and leave under $OUT its JSON, its log and the numbered notebooks with their GPU outputs.
# bench/gpu.py runs each part in its own process under its own limit and an 8-minute budget (--budget), writing the JSON and the
# log line of each part as it ends; a slot of 15 minutes then holds the machine's start, the run and a rerun of what failed.
# Extra arguments go to bench/gpu.py (e.g. --only pipeline_wt2 for a rerun of one phase).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1 MPLBACKEND=Agg RBK_WIKITEXT2="$PWD/.data/wikitext-2"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
python3 bench/gpu.py --device cuda --out "$OUT/gpu.json" "$@" 2>&1 | tee -a "$OUT/gpu.log"
rc=${PIPESTATUS[0]}
tar czf "$OUT/notebooks.tgz" nbs/0[0-6]*.ipynb
exit "$rc"
