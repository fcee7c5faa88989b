#!/usr/bin/env bash
# The API-speed check on a lent GPU machine (see docs/results/api-speed.md, "The API"): the demo run trained on CUDA, its
# explanation metrics, the report, and the API speed ratios of benchmarks/bench_api.py on the GPU.
# Wheels missing from the machine's image (plotly, the offline weights) travel in .whl/.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 INFODISENT_CACHE=/tmp/cache
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
time python3 -m infodisent.cli demo --out runs/demo --device cuda --num-workers 8 --quiet
python3 -m infodisent.cli evaluate runs/demo --explanations --device cuda --num-workers 8 --quiet > "$OUT/evaluation.json"
python3 -m infodisent.cli report runs/demo --device cuda --quiet
cp runs/demo/metrics.json runs/demo/report.html "$OUT/"
python3 benchmarks/bench_api.py runs/demo --device cuda --repeats 30 | tee "$OUT/bench_api_cuda.txt"
python3 benchmarks/bench_api.py runs/demo --device cpu --repeats 10 | tee "$OUT/bench_api_cpu_of_gpu_host.txt"
